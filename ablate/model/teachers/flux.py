"""Flux.1 teachers (dev, schnell): a transformer of double-stream and single-stream blocks
trained by flow matching on packed 2x2 latent patches, a 16-channel VAE with scaling and
shift factors, the empty prompt through CLIP-L (pooled) and T5 (context).

    flux        Flux.1 dev / schnell from a local diffusers folder or one original-layout
                weights file (`single_file`; nothing is downloaded), or
                `random_init=true`: the Flux.1-dev architecture with seeded random weights
    tiny-flux   a CPU-sized twin: the same double and single blocks, rotary position ids over
                (0, row, column), packing, guidance embedding and text paths

Guidance embedding: Flux.1 dev was distilled with a guidance-scale input; a teacher that has
one (`guidance_embeds` in its config) gets `teacher.guidance` (3.5, FluxPipeline's and the
diffusers Flux training scripts' default) as a constant for every sample. schnell has none
and ignores the setting.

Timesteps: sigmas u ~ U(0, 1) shifted as the folder's scheduler samples: dev's
resolution-dependent exponential time shift, schnell's fixed shift 1 (`ablate.model.teachers.flow`);
the transformer takes the sigma itself (it multiplies by 1000). T5 context: 512 tokens for
dev, 256 for schnell, as FluxPipeline's defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
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
from ablate.model.teachers.packing import image_ids, pack, text_ids, unpack
from ablate.model.teachers.sd3 import copy_or_write_text, embed_t5, write_model_index
from ablate.model.teachers.text import (
    clip_ids,
    t5_ids,
    tiny_clip,
    tiny_t5,
    write_clip_tokenizer,
    write_t5_tokenizer,
)

FAMILY = "flux"
T5_LENGTH = 512  # FluxPipeline's max_sequence_length (dev); schnell: 256
SCHNELL_T5_LENGTH = 256
GUIDANCE = 3.5
# black-forest-labs/FLUX.1-dev transformer/config.json
FLUX_DEV: dict[str, Any] = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
    guidance_embeds=True, axes_dims_rope=(16, 56, 56),
)
VAE: dict[str, Any] = dict(
    in_channels=3, out_channels=3, latent_channels=16,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=1024,
    scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
)
# black-forest-labs/FLUX.1-schnell transformer/config.json: dev's, without the guidance input
FLUX_SCHNELL: dict[str, Any] = dict(FLUX_DEV, guidance_embeds=False)
# FLUX.1-dev scheduler/scheduler_config.json
SCHEDULER: dict[str, Any] = dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                 max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
# FLUX.1-schnell scheduler/scheduler_config.json: a fixed shift of 1 (unshifted), no dynamic
# shifting; the base/max values are dev's and unused
SCHNELL_SCHEDULER: dict[str, Any] = dict(SCHEDULER, shift=1.0, use_dynamic_shifting=False)
TINY: dict[str, Any] = dict(
    patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=16,
    num_attention_heads=2, joint_attention_dim=64, pooled_projection_dim=32,
    guidance_embeds=True, axes_dims_rope=(4, 6, 6),
)
TINY_VAE: dict[str, Any] = dict(
    VAE, block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=8,
    sample_size=64,
)
TINY_T5_LENGTH = 16
TEXT_PARTS = ("text_encoder", "tokenizer")
T5_PARTS = ("text_encoder_2", "tokenizer_2")


class FluxTeacher(FlowTeacher):
    """Frozen Flux transformer + VAE; `predict` takes ([double-block], [single-block])
    residuals on packed tokens."""

    def __init__(self, *args: Any, guidance: float = GUIDANCE, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guidance = float(guidance) if self.transformer.config.guidance_embeds else None
        self.patch = 2  # 2x2 latent patches are packed into one token

    @property
    def size_multiple(self) -> int:
        return self.vae_factor * 2

    def conditioning(self, batch_size: int, image_size: int | tuple[int, int]) -> dict[str, Any]:
        """Text context, pooled CLIP and (dev) the guidance value, per sample [B]; the position
        ids are made from the latent's shape where it is packed."""
        cond = self.text_kwargs(batch_size)
        if self.guidance is not None:
            cond["guidance"] = torch.full((batch_size,), self.guidance, device=self.device,
                                          dtype=self.dtype)
        return cond

    def predict(self, noisy_latents: Tensor, timesteps: Tensor,
                blocks: list[Tensor] | None = None,
                single_blocks: list[Tensor] | None = None) -> Tensor:
        """noisy [B, 16, h, w], timesteps = sigmas [B] -> velocity [B, 16, h, w]."""
        dtype, (h, w) = self.dtype, noisy_latents.shape[-2:]
        extra: dict[str, Any] = {}
        if blocks:
            extra["controlnet_block_samples"] = [r.to(dtype) for r in blocks]
        if single_blocks:
            extra["controlnet_single_block_samples"] = [r.to(dtype) for r in single_blocks]
        cond = self.conditioning(len(noisy_latents), 0)
        tokens = self.transformer(
            pack(noisy_latents.to(dtype)), timestep=timesteps.to(dtype),
            img_ids=image_ids(h, w, noisy_latents.device, dtype),
            txt_ids=text_ids(self.context.shape[1], noisy_latents.device, dtype),
            return_dict=False, **cond, **extra)[0]  # [B, h*w/4, 64]
        return unpack(tokens, h, w)

    def controlnet(self, layers: int | None = None) -> nn.Module:
        # lazy: that module imports this one
        from ablate.model.dit_guide import FluxControlNet

        return FluxControlNet.copy_of(self.transformer, layers)

    def adapter(self, width: int) -> nn.Module:
        # lazy: that module imports this one
        from ablate.model.dit_guide import TokenAdapter

        config = self.transformer.config
        dim = config.num_attention_heads * config.attention_head_dim
        groups = [config.num_layers, config.num_single_layers]
        return TokenAdapter(self.latent_channels, 2, dim, groups, width)

    def save_pretrained(self, folder: str | Path) -> None:
        """A diffusers-layout Flux folder that `flux(path=...)` / `tiny-flux(path=...)` load."""
        folder = Path(folder).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        self.transformer.save_pretrained(folder / "transformer")
        self.vae.save_pretrained(folder / "vae")
        self.scheduler.save_pretrained(folder / "scheduler")
        copy_or_write_text(self, folder, TEXT_PARTS + T5_PARTS, _write_tiny_text)
        write_model_index(folder, "FluxPipeline", {
            "transformer": ["diffusers", "FluxTransformer2DModel"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "text_encoder_2": ["transformers", "T5EncoderModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "tokenizer_2": ["transformers", "PreTrainedTokenizerFast"],
        })


def _write_tiny_text(teacher: FlowTeacher, folder: Path) -> None:
    config = teacher.transformer.config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        clip = tiny_clip(int(config.pooled_projection_dim))
        t5 = tiny_t5(int(config.joint_attention_dim))
    clip.save_pretrained(folder / "text_encoder")
    t5.save_pretrained(folder / "text_encoder_2")
    write_clip_tokenizer(folder / "tokenizer", pad="clip")
    write_t5_tokenizer(folder / "tokenizer_2")


def law(timesteps: str, shift: float | None, scheduler: FlowMatchEulerDiscreteScheduler
        ) -> TimestepLaw:
    """`shift=None`: the folder's scheduler decides: dev's resolution-dependent shift
    (`use_dynamic_shifting`), or schnell's fixed `shift` (1.0: unshifted)."""
    c = scheduler.config
    if shift is None and not c.get("use_dynamic_shifting", False):
        shift = float(c.get("shift", 1.0))
    return TimestepLaw(density=timesteps, shift=shift, base_shift=c.get("base_shift", 0.5),
                       max_shift=c.get("max_shift", 1.15),
                       base_tokens=c.get("base_image_seq_len", 256),
                       max_tokens=c.get("max_image_seq_len", 4096))


def architecture(tiny: bool) -> list[tuple[type, dict[str, Any]]]:
    """(class, config) of the transformer and the VAE, e.g. to count parameters on meta."""
    return [(FluxTransformer2DModel, TINY if tiny else FLUX_DEV), (AutoencoderKL, TINY_VAE if tiny else VAE)]


def tiny_teacher(seed: int = 0, guidance: float = GUIDANCE, timesteps: str = "uniform",
                 shift: float | None = None) -> FluxTeacher:
    """Seeded CPU-sized twin; the global RNG is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(**TINY)
        vae = AutoencoderKL(**TINY_VAE)
        context = torch.randn(1, TINY_T5_LENGTH, TINY["joint_attention_dim"])
        pooled = torch.randn(1, TINY["pooled_projection_dim"])
    scheduler = FlowMatchEulerDiscreteScheduler(**SCHEDULER)
    return FluxTeacher("tiny-flux", FAMILY, transformer, vae, scheduler, context, pooled,
                       law(timesteps, shift, scheduler), guidance=guidance)


def _random_teacher(dtype: torch.dtype, guidance: float, timesteps: str,
                    shift: float | None) -> FluxTeacher:
    """Flux.1-dev with seeded random weights (24 GB in bf16), built on meta then filled."""
    generator = torch.Generator().manual_seed(0)
    transformer = fill_random(on_meta(FluxTransformer2DModel, FLUX_DEV, dtype), generator)
    vae = fill_random(on_meta(AutoencoderKL, VAE, dtype), generator)
    context = torch.randn(1, T5_LENGTH, FLUX_DEV["joint_attention_dim"], generator=generator)
    pooled = torch.randn(1, FLUX_DEV["pooled_projection_dim"], generator=generator)
    scheduler = FlowMatchEulerDiscreteScheduler(**SCHEDULER)
    return FluxTeacher(FAMILY, FAMILY, transformer, vae, scheduler, context, pooled,
                       law(timesteps, shift, scheduler), guidance=guidance)


# --- diffusers folders ---------------------------------------------------------------------------


def check_folder(folder: Path) -> None:
    config_file = folder / "transformer/config.json"
    if not config_file.is_file():
        what = "a UNet model (unet/)" if (folder / "unet").is_dir() else "no transformer/"
        raise AblateError(f"teacher folder {folder} is not a Flux layout: it holds {what}; "
                          "use teacher=sd15/sd21/sdxl for UNet folders, or point teacher.path "
                          "at a Flux.1 diffusers folder")
    found = read_json(config_file).get("_class_name")
    if found != "FluxTransformer2DModel":
        fix = "use teacher=sd3" if found == "SD3Transformer2DModel" else "use a Flux folder"
        raise AblateError(f"teacher folder {folder} holds a {found}, not Flux's "
                          f"FluxTransformer2DModel; {fix}")
    needed = ["vae/config.json", "scheduler/scheduler_config.json", *TEXT_PARTS, *T5_PARTS]
    missing = missing_parts(folder, needed)
    if missing:
        raise AblateError(f"teacher folder {folder} lacks {', '.join(missing)}: Flux needs "
                          "CLIP-L (text_encoder) for its pooled vector and T5 (text_encoder_2) "
                          "for its context, with their tokenizers")


def load_folder(folder: Path, dtype: torch.dtype, guidance: float, timesteps: str,
                shift: float | None) -> FluxTeacher:
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTokenizer, T5EncoderModel

    check_folder(folder)

    transformer = load_weights(folder, "transformer", FluxTransformer2DModel, torch_dtype=dtype)
    vae = load_weights(folder, "vae", AutoencoderKL, torch_dtype=dtype)
    scheduler = load_part(folder, "scheduler", FlowMatchEulerDiscreteScheduler.from_pretrained)
    clip = load_weights(folder, "text_encoder", CLIPTextModel, dtype=torch.float32)
    ids = clip_ids(load_part(folder, "tokenizer", CLIPTokenizer.from_pretrained))
    with torch.no_grad():
        pooled = clip(ids).pooler_output.float()  # [1, 768]
    encoder = load_weights(folder, "text_encoder_2", T5EncoderModel, dtype=torch.float32)
    tokenizer = load_part(folder, "tokenizer_2", AutoTokenizer.from_pretrained)
    tiny = transformer.config.joint_attention_dim == TINY["joint_attention_dim"]
    length = (TINY_T5_LENGTH if tiny else T5_LENGTH if transformer.config.guidance_embeds
              else SCHNELL_T5_LENGTH)
    context = embed_t5(encoder, t5_ids(tokenizer, length))
    return FluxTeacher(FAMILY, FAMILY, transformer, vae, scheduler, context, pooled,
                       law(timesteps, shift, scheduler), text_source=folder, guidance=guidance)
