"""SD3 / SD3.5 teachers: an MMDiT transformer trained by flow matching, a 16-channel VAE with
scaling and shift factors, and the empty prompt through three text encoders.

    sd3        SD3 Medium, SD3.5 Medium / Large from a local diffusers folder or one
               original-layout weights file (`single_file`; nothing is downloaded), or
               `random_init=true`: the SD3.5 Medium architecture with seeded random weights
               (speed / memory runs)
    tiny-sd3   a CPU-sized twin with the same block families (joint blocks, dual attention in
               the first block, RMS qk-norm as SD3.5, a context-pre-only last block) and the
               same conditioning paths (joint context, pooled projections, 16-channel VAE
               with shift and scale); seeded random weights or `path=` a fitted twin

The empty prompt (StableDiffusion3Pipeline.encode_prompt): CLIP-L and CLIP-G penultimate
hidden states, concatenated [1, 77, 2048] and zero-padded to T5's width, then T5's
[1, 256, 4096] after them -> context [1, 333, 4096]; pooled = CLIP-L and CLIP-G projections
[1, 2048]. `t5=false` skips T5 (SD3 was trained with it dropped at times): its part of the
context is zeros, as the pipeline gives without `text_encoder_3`, and its 4.7B parameters
are never loaded; expect slightly different guidance, most of all for text-heavy prompts
(here the prompt is empty).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
from torch import Tensor, nn

from ablate.core.errors import AblateError
from ablate.model.teachers.base import (
    fill_random,
    load_part,
    load_weights,
    missing_parts,
    on_meta,
)
from ablate.model.teachers.flow import FlowTeacher, TimestepLaw
from ablate.model.teachers.lora import read_json
from ablate.model.teachers.text import (
    TEXT_LENGTH,
    clip_ids,
    t5_ids,
    tiny_clip,
    tiny_t5,
    write_clip_tokenizer,
    write_t5_tokenizer,
)

FAMILY = "sd3"
T5_LENGTH = 256  # StableDiffusion3Pipeline's max_sequence_length
SHIFT = 3.0  # SD3's scheduler_config.json (SD3 Medium, SD3.5 Medium and Large alike)
# stabilityai/stable-diffusion-3-medium-diffusers transformer/config.json
SD3_MEDIUM: dict[str, Any] = dict(
    sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
    num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
    pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192,
)
# stabilityai/stable-diffusion-3.5-large transformer/config.json
SD35_LARGE: dict[str, Any] = dict(
    sample_size=128, patch_size=2, in_channels=16, num_layers=38, attention_head_dim=64,
    num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432,
    pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192, qk_norm="rms_norm",
)
# stabilityai/stable-diffusion-3.5-medium transformer/config.json
SD35_MEDIUM: dict[str, Any] = dict(
    sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
    num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
    pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384,
    dual_attention_layers=tuple(range(13)), qk_norm="rms_norm",
)
VAE: dict[str, Any] = dict(
    in_channels=3, out_channels=3, latent_channels=16,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=1024,
    scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False,
)
TINY: dict[str, Any] = dict(
    sample_size=32, patch_size=2, in_channels=16, num_layers=3, attention_head_dim=16,
    num_attention_heads=2, joint_attention_dim=64, caption_projection_dim=32,
    pooled_projection_dim=64, out_channels=16, pos_embed_max_size=32,
    dual_attention_layers=(0,), qk_norm="rms_norm",
)
TINY_VAE: dict[str, Any] = dict(
    VAE, block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=8,
    sample_size=64,
)
TINY_T5_LENGTH = 16
TINY_CLIP = (16, 32)  # widths of the tiny CLIP-L and CLIP-G (their projections: pooled / 2)
TEXT_PARTS = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
T5_PARTS = ("text_encoder_3", "tokenizer_3")


class SD3Teacher(FlowTeacher):
    """Frozen SD3 transformer + VAE; `predict` takes ([one residual per block],)."""

    @property
    def size_multiple(self) -> int:
        return self.vae_factor * self.patch

    def max_image_size(self) -> int:
        return int(self.transformer.config.pos_embed_max_size) * self.patch * self.vae_factor

    def check_image_size(self, image_size: int) -> None:
        super().check_image_size(image_size)
        if image_size > self.max_image_size():
            raise AblateError(
                f"image_size {image_size} is larger than teacher {self.name}'s position "
                f"embedding covers ({self.max_image_size()} px); use a smaller image_size")

    def conditioning(self, batch_size: int, image_size: int | tuple[int, int]) -> dict[str, Any]:
        return self.text_kwargs(batch_size)

    def predict(self, noisy_latents: Tensor, timesteps: Tensor,
                blocks: list[Tensor] | None = None) -> Tensor:
        """noisy [B, 16, h, w], timesteps = sigmas [B]; the transformer takes sigma * 1000."""
        dtype = self.dtype
        extra = {} if blocks is None else {
            "block_controlnet_hidden_states": [r.to(dtype) for r in blocks]}
        return self.transformer(noisy_latents.to(dtype), timestep=timesteps * 1000,
                                return_dict=False, **self.text_kwargs(len(noisy_latents)),
                                **extra)[0]  # [B, 16, h, w]

    def controlnet(self, layers: int | None = None) -> nn.Module:
        # lazy: that module imports this one
        from ablate.model.dit_guide import SD3ControlNet

        return SD3ControlNet.copy_of(self.transformer, layers)

    def adapter(self, width: int) -> nn.Module:
        # lazy: that module imports this one
        from ablate.model.dit_guide import TokenAdapter

        config = self.transformer.config
        dim = config.num_attention_heads * config.attention_head_dim
        # one residual per block, so SD3's block i takes residual i (the transformer spaces
        # residuals by num_layers / len); the context-only last block never adds its own
        return TokenAdapter(self.latent_channels, self.patch, dim, [config.num_layers], width)

    def save_pretrained(self, folder: str | Path) -> None:
        """A diffusers-layout SD3 folder `sd3(path=...)` / `tiny-sd3(path=...)` load back; text
        encoders are copied from the source folder, or tiny random ones are written."""
        folder = Path(folder).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        self.transformer.save_pretrained(folder / "transformer")
        self.vae.save_pretrained(folder / "vae")
        self.scheduler.save_pretrained(folder / "scheduler")
        copy_or_write_text(self, folder, TEXT_PARTS + T5_PARTS, _write_tiny_text)
        write_model_index(folder, "StableDiffusion3Pipeline", {
            "transformer": ["diffusers", "SD3Transformer2DModel"],
            "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "text_encoder_3": ["transformers", "T5EncoderModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "tokenizer_3": ["transformers", "PreTrainedTokenizerFast"],
        })


def copy_or_write_text(teacher: FlowTeacher, folder: Path, parts: tuple[str, ...],
                       write_tiny: Any) -> None:
    """Text encoders and tokenizers: copied from the folder the teacher came from, or (tiny
    twins, random_init) tiny random ones, which embed "" differently from the teacher's
    stand-in context."""
    import shutil

    source = teacher._text_source
    if source is not None and source.is_file():
        raise AblateError(f"teacher {teacher.name} was loaded from the single file {source}: it "
                          "has no diffusers text encoders or tokenizers to save; use the file "
                          "itself as teacher.path")
    if source is not None and source.is_dir():
        if source.resolve() == folder.resolve():
            return
        for part in parts:
            if (source / part).exists():
                shutil.rmtree(folder / part, ignore_errors=True)
                shutil.copytree(source / part, folder / part)
        return
    write_tiny(teacher, folder)


def write_model_index(folder: Path, pipeline: str, parts: dict[str, list[str]]) -> None:
    import diffusers

    index = {"_class_name": pipeline, "_diffusers_version": diffusers.__version__,
             "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
             "vae": ["diffusers", "AutoencoderKL"], **parts}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def _write_tiny_text(teacher: FlowTeacher, folder: Path) -> None:
    joint = int(teacher.transformer.config.joint_attention_dim)
    pooled = int(teacher.transformer.config.pooled_projection_dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        first, second = (tiny_clip(h, pooled // 2) for h in TINY_CLIP)
        t5 = tiny_t5(joint)
    for sub, encoder in (("text_encoder", first), ("text_encoder_2", second),
                         ("text_encoder_3", t5)):
        encoder.save_pretrained(folder / sub)
    write_clip_tokenizer(folder / "tokenizer", pad="clip")
    write_clip_tokenizer(folder / "tokenizer_2", pad="open_clip")
    write_t5_tokenizer(folder / "tokenizer_3")


def law(timesteps: str, shift: float | None, scheduler_shift: float) -> TimestepLaw:
    return TimestepLaw(density=timesteps, shift=scheduler_shift if shift is None else shift)


def architecture(tiny: bool) -> list[tuple[type, dict[str, Any]]]:
    """(class, config) of the transformer and the VAE, e.g. to count parameters on meta."""
    return [(SD3Transformer2DModel, TINY if tiny else SD35_MEDIUM), (AutoencoderKL, TINY_VAE if tiny else VAE)]


def tiny_teacher(seed: int = 0, timesteps: str = "logit_normal",
                 shift: float | None = None) -> SD3Teacher:
    """Seeded CPU-sized twin; the global RNG is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(**TINY)
        vae = AutoencoderKL(**TINY_VAE)
        context = torch.randn(1, TEXT_LENGTH + TINY_T5_LENGTH, TINY["joint_attention_dim"])
        pooled = torch.randn(1, TINY["pooled_projection_dim"])
    scheduler = FlowMatchEulerDiscreteScheduler(shift=SHIFT)
    return SD3Teacher("tiny-sd3", FAMILY, transformer, vae, scheduler, context, pooled,
                      law(timesteps, shift, SHIFT))


def _random_teacher(dtype: torch.dtype, timesteps: str, shift: float | None) -> SD3Teacher:
    """SD3.5 Medium with seeded random weights, built on meta then filled fast; the sincos
    position table (a buffer) is rebuilt, the context is a seeded stand-in."""
    generator = torch.Generator().manual_seed(0)
    transformer = fill_random(on_meta(SD3Transformer2DModel, SD35_MEDIUM, dtype), generator)
    restore_position_table(transformer)
    vae = fill_random(on_meta(AutoencoderKL, VAE, dtype), generator)
    context = torch.randn(1, TEXT_LENGTH + T5_LENGTH, SD35_MEDIUM["joint_attention_dim"],
                          generator=generator)
    pooled = torch.randn(1, SD35_MEDIUM["pooled_projection_dim"], generator=generator)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=SHIFT)
    return SD3Teacher(FAMILY, FAMILY, transformer, vae, scheduler, context, pooled,
                      law(timesteps, shift, SHIFT))


@torch.no_grad()
def restore_position_table(transformer: nn.Module) -> None:
    """PatchEmbed's sincos table is a buffer: construct it as diffusers does."""
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    embed = transformer.pos_embed
    size = int(embed.pos_embed_max_size or embed.height)
    table = get_2d_sincos_pos_embed(embed.pos_embed.shape[-1], size, base_size=embed.base_size,
                                    interpolation_scale=embed.interpolation_scale,
                                    output_type="pt")
    embed.pos_embed.copy_(table.float().unsqueeze(0))


# --- diffusers folders ---------------------------------------------------------------------------


def check_folder(folder: Path, t5: bool) -> None:
    """One line for a folder of another family, or one missing what the config needs."""
    config_file = folder / "transformer/config.json"
    if not config_file.is_file():
        what = "a UNet model (unet/)" if (folder / "unet").is_dir() else "no transformer/"
        raise AblateError(f"teacher folder {folder} is not an SD3 layout: it holds {what}; "
                          "use teacher=sd15/sd21/sdxl for UNet folders, or point teacher.path "
                          "at an SD3 / SD3.5 diffusers folder")
    found = read_json(config_file).get("_class_name")
    if found != "SD3Transformer2DModel":
        fix = "use teacher=flux" if found == "FluxTransformer2DModel" else "use an SD3 folder"
        raise AblateError(f"teacher folder {folder} holds a {found}, not SD3's "
                          f"SD3Transformer2DModel; {fix}")
    needed = ["vae/config.json", "scheduler/scheduler_config.json", *TEXT_PARTS]
    missing = missing_parts(folder, needed)
    if missing:
        raise AblateError(f"teacher folder {folder} lacks {', '.join(missing)}: SD3 needs "
                          "CLIP-L and CLIP-G (text_encoder, text_encoder_2) and their tokenizers")
    if t5 and missing_parts(folder, list(T5_PARTS)):
        raise AblateError(f"teacher folder {folder} has no T5 (text_encoder_3/, tokenizer_3/); "
                          "add it, or set teacher.t5=false to embed without T5 (zeros in its "
                          "place, as SD3 supports)")


def load_folder(folder: Path, dtype: torch.dtype, t5: bool, timesteps: str,
                shift: float | None) -> SD3Teacher:
    from transformers import (
        AutoTokenizer,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        T5EncoderModel,
    )

    check_folder(folder, t5)

    transformer = load_weights(folder, "transformer", SD3Transformer2DModel, torch_dtype=dtype)
    vae = load_weights(folder, "vae", AutoencoderKL, torch_dtype=dtype)
    scheduler = load_part(folder, "scheduler", FlowMatchEulerDiscreteScheduler.from_pretrained)
    clips = [load_weights(folder, sub, CLIPTextModelWithProjection, dtype=torch.float32)
             for sub in ("text_encoder", "text_encoder_2")]
    ids = [clip_ids(load_part(folder, sub, CLIPTokenizer.from_pretrained))
           for sub in ("tokenizer", "tokenizer_2")]
    joint = int(transformer.config.joint_attention_dim)
    if t5:
        encoder = load_weights(folder, "text_encoder_3", T5EncoderModel, dtype=torch.float32)
        tokenizer = load_part(folder, "tokenizer_3", AutoTokenizer.from_pretrained)
        t5_context = embed_t5(encoder, t5_ids(tokenizer, _t5_length(transformer)))
        del encoder
    else:
        t5_context = torch.zeros(1, _t5_length(transformer), joint)
    context, pooled = embed_empty_prompt(clips, ids, t5_context)
    name = FAMILY
    scheduler_shift = float(scheduler.config.get("shift", SHIFT))
    return SD3Teacher(name, FAMILY, transformer, vae, scheduler, context, pooled,
                      law(timesteps, shift, scheduler_shift), text_source=folder)


def _t5_length(transformer: nn.Module) -> int:
    """Tiny twins (joint width 64) use a short T5 context; real models the pipeline's 256."""
    return TINY_T5_LENGTH if transformer.config.joint_attention_dim == TINY["joint_attention_dim"] \
        else T5_LENGTH


@torch.no_grad()
def embed_t5(encoder: nn.Module, ids: Tensor) -> Tensor:
    return encoder(ids)[0].float()  # [1, L, 4096]


@torch.no_grad()
def embed_empty_prompt(clips: list[nn.Module], ids: list[Tensor],
                       t5_context: Tensor) -> tuple[Tensor, Tensor]:
    """StableDiffusion3Pipeline.encode_prompt for "": (context [1, 77 + L, D], pooled [1, P])."""
    hidden, pooled = [], []
    for encoder, token_ids in zip(clips, ids, strict=True):
        out = encoder(token_ids, output_hidden_states=True)
        hidden.append(out.hidden_states[-2].float())  # penultimate layer [1, 77, 768 | 1280]
        pooled.append(out.text_embeds.float())  # [1, 768 | 1280]
    clip = torch.cat(hidden, dim=-1)  # [1, 77, 2048]
    clip = F.pad(clip, (0, t5_context.shape[-1] - clip.shape[-1]))  # zero-pad to T5's width
    return torch.cat([clip, t5_context], dim=-2), torch.cat(pooled, dim=-1)
