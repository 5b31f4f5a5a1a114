"""UNet teachers (SD 1.5, SD 2.1, SDXL): UNet + VAE + DDPM schedule + an empty-prompt context.

The detector's guide injects ControlNet-style residuals into the teacher's UNet and is trained
so that the frozen teacher can rebuild the source / target latents (METHOD.md, sections 5-6).
The teacher itself never trains, is never saved inside a detector checkpoint, and its text
encoders are used once, at build time, to embed the empty prompt "".

Variants (registry slot `teacher`):
    sd15 / sd21 / sdxl    real weights from a local diffusers folder or one .safetensors/.ckpt
                          file (nothing is downloaded), or `random_init=True` for the
                          full-size architecture with seeded random weights (speed/memory runs)
    tiny-sd15 / -sd21 / -sdxl   CPU-sized twins with the same block families, conditioning,
                          context width and VAE factor (8) as the real family; seeded random
                          weights, or `path=` a twin fitted on real faces (`ablate teachers fit`)
Every variant takes `lora=`: a LoRA adapter from `ablate teachers adapt`, checked against its
recorded base teacher and fused into the UNet (see `lora.load_lora`).

Single-file loading has no tokenizer (its vocab is not in the file and nothing is fetched), so
it embeds the empty prompt from the known CLIP token ids: bos 49406, eos 49407, then padding
with 49407 (SD 1.x CLIP tokenizer, SDXL `tokenizer`) or 0 ("!", the OpenCLIP tokenizers of
SD 2.x and SDXL `tokenizer_2`).
"""

from __future__ import annotations

import json
import logging
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from torch import Tensor, nn

from ablate.core.errors import AblateError
from ablate.core.names import FITTED_META
from ablate.model.teachers.base import (
    Teacher,
    fill_random,
    load_part,
    load_weights,
    on_meta,
    parse_dtype,
    transformer_family,
)
from ablate.model.teachers.lora import in_dtype, read_json, stored_path, with_lora
from ablate.model.teachers.text import (
    BOS,
    EOS,
    PAD_ID,
    TEXT_LENGTH,
    clip_ids,
    tiny_clip,
    write_clip_tokenizer,
)
from ablate.registry import TEACHERS

log = logging.getLogger(__name__)

FAMILIES = ("sd15", "sd21", "sdxl")
CONTEXT_DIM = {"sd15": 768, "sd21": 1024, "sdxl": 2048}
POOLED_DIM = 1280  # SDXL pooled text embedding (text_encoder_2 projection)
PREDICTION = {"sd15": "epsilon", "sd21": "v_prediction", "sdxl": "epsilon"}
LATENT_SCALE = {"sd15": 0.18215, "sd21": 0.18215, "sdxl": 0.13025}

# --- architecture configs (diffusers names; they mirror the hub config.json files) -----------

_SD_DOWN = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
_SD_UP = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
_UNET: dict[str, dict[str, Any]] = {
    "sd15": dict(
        sample_size=64,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=_SD_DOWN,
        up_block_types=_SD_UP,
        layers_per_block=2,
        attention_head_dim=8,  # diffusers' name for the number of heads
        cross_attention_dim=768,
    ),
    "sd21": dict(
        sample_size=96,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=_SD_DOWN,
        up_block_types=_SD_UP,
        layers_per_block=2,
        attention_head_dim=(5, 10, 20, 20),
        cross_attention_dim=1024,
        use_linear_projection=True,
        upcast_attention=True,
    ),
    "sdxl": dict(
        sample_size=128,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=2,
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_embed_type_num_heads=64,
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=256 * 6 + POOLED_DIM,  # 2816
    ),
}
_TINY_UNET: dict[str, dict[str, Any]] = {
    "sd15": dict(
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=2,
        cross_attention_dim=768,
    ),
    "sd21": dict(
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=(2, 4),
        cross_attention_dim=1024,
        use_linear_projection=True,
        upcast_attention=True,
    ),
    "sdxl": dict(
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        attention_head_dim=(2, 4),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=8 * 6 + POOLED_DIM,
    ),
}
_TINY_UNET_COMMON = dict(
    sample_size=8, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8
)
_VAE_COMMON = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
)
_VAE: dict[str, dict[str, Any]] = {
    family: dict(
        _VAE_COMMON,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        sample_size=size,
        scaling_factor=LATENT_SCALE[family],
        force_upcast=family == "sdxl",  # the SDXL VAE overflows in fp16
    )
    for family, size in (("sd15", 512), ("sd21", 768), ("sdxl", 1024))
}
_TINY_VAE = dict(
    _VAE_COMMON, block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=8
)

# Text encoders, only for single .safetensors/.ckpt files (folders carry their own config).
_CLIP_L = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_attention_heads=12,
    num_hidden_layers=12,
    projection_dim=768,
    hidden_act="quick_gelu",
)
# SD 2 reads the penultimate layer: its text encoder keeps 23 of OpenCLIP-H's 24 layers
_OPEN_CLIP_H = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_attention_heads=16,
    num_hidden_layers=23,
    projection_dim=512,
    hidden_act="gelu",
)
_OPEN_CLIP_BIGG = dict(
    hidden_size=1280,
    intermediate_size=5120,
    num_attention_heads=20,
    num_hidden_layers=32,
    projection_dim=1280,
    hidden_act="gelu",
)


class UNetTeacher(Teacher):
    """Frozen SD UNet + VAE + DDPM schedule; `predict` takes ControlNet residuals
    (down-block list, mid tensor)."""

    denoiser_name = "unet"

    def __init__(
        self,
        name: str,
        family: str,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        scheduler: DDPMScheduler,
        context: Tensor,
        pooled: Tensor | None = None,
        text_source: Path | None = None,
    ) -> None:
        super().__init__(name, family, unet, vae, text_source)
        self.scheduler = scheduler
        self.prediction_type: str = scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise AblateError(
                f"teacher {name}: prediction_type {self.prediction_type!r} is not supported; "
                "use an epsilon or v_prediction Stable Diffusion model"
            )
        self.context_dim = int(unet.config.cross_attention_dim)
        # Empty-prompt embedding, computed once; not persistent (rebuilt from the source).
        self.register_buffer("context", context.detach().to(unet.dtype), persistent=False)
        pooled = None if pooled is None else pooled.detach().to(unet.dtype)
        self.register_buffer("pooled", pooled, persistent=False)  # [1, 1280] (SDXL) or None
        self.freeze()

    @property
    def guide_channels(self) -> int:
        """conv_in's width: the ControlNet input is conv_in(z_noisy) + filtered features."""
        return int(self.unet.config.block_out_channels[0])

    def vae_dtype(self, dtype: torch.dtype) -> torch.dtype:
        return _vae_dtype(self.family, dtype)

    # --- diffusion -----------------------------------------------------------------------------

    def sample_timesteps(self, batch: int, generator: torch.Generator | None,
                         device: torch.device, latent_size: tuple[int, int] = (32, 32)) -> Tensor:
        """Uniform integer timesteps [batch] over the training schedule (t ~ U[0, 1000)),
        drawn where the generator lives, then moved."""
        where = generator.device if generator is not None else device
        steps = self.scheduler.config.num_train_timesteps
        return torch.randint(0, steps, (batch,), generator=generator, device=where).to(device)

    def conditioning(self, batch_size: int, image_size: int | tuple[int, int]) -> dict[str, Any]:
        """UNet keyword arguments for the empty prompt (and SDXL micro-conditioning)."""
        dtype = self.unet.dtype
        cond: dict[str, Any] = {
            "encoder_hidden_states": self.context.to(dtype).expand(batch_size, -1, -1)  # [B,L,D]
        }
        if self.pooled is not None:
            h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
            # original size, crop top-left, target size
            ids = torch.tensor([h, w, 0, 0, h, w], dtype=dtype, device=self.context.device)
            cond["added_cond_kwargs"] = {
                "text_embeds": self.pooled.to(dtype).expand(batch_size, -1),  # [B, 1280]
                "time_ids": ids.expand(batch_size, -1),  # [B, 6]
            }
        return cond

    def add_noise(self, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        return self.scheduler.add_noise(latents, noise, timesteps)

    def diffusion_target(self, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """What the UNet must predict: the noise, or the velocity for v-prediction teachers."""
        if self.prediction_type == "v_prediction":
            return self.scheduler.get_velocity(latents, noise, timesteps)
        return noise

    def predict(
        self,
        noisy_latents: Tensor,
        timesteps: Tensor,
        down_residuals: list[Tensor] | tuple[Tensor, ...] | None = None,
        mid_residual: Tensor | None = None,
    ) -> Tensor:
        """UNet prediction with ControlNet residuals; no `no_grad`, so the residuals get grads."""
        if (down_residuals is None) != (mid_residual is None):
            # diffusers treats down residuals alone as T2I-Adapter residuals: a different model
            raise ValueError("pass both down_residuals and mid_residual, or neither")
        dtype = self.unet.dtype
        b, _, h, w = noisy_latents.shape
        extra: dict[str, Any] = {}
        if down_residuals is not None and mid_residual is not None:
            extra["down_block_additional_residuals"] = [r.to(dtype) for r in down_residuals]
            extra["mid_block_additional_residual"] = mid_residual.to(dtype)
        cond = self.conditioning(b, (h * self.vae_factor, w * self.vae_factor))
        return self.unet(noisy_latents.to(dtype), timesteps, **cond, **extra).sample  # [B,C,h,w]

    # --- guides --------------------------------------------------------------------------------

    def controlnet(self, layers: int | None = None) -> nn.Module:
        from ablate.model.guide import UNetControlNet

        if layers is not None:
            raise AblateError(f"guide.layers={layers} is for transformer teachers (sd3, flux): "
                              f"the ControlNet of {self.name} copies its whole UNet encoder; "
                              "set guide.layers=null")
        return UNetControlNet.copy_of(self.unet)

    def adapter(self, width: int) -> nn.Module:
        from ablate.model.guide import ConvPyramid

        return ConvPyramid(self.unet, width)

    # --- saving --------------------------------------------------------------------------------

    def save_pretrained(self, folder: str | Path) -> None:
        """Write a diffusers-layout folder that `sd15/sd21/sdxl(path=folder)` loads back.

        Text encoders come from the source folder or file; a teacher without one (tiny twin,
        random_init) gets tiny random CLIP encoders, so the reloaded context differs.
        """
        folder = Path(folder).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(folder / "unet")
        self.vae.save_pretrained(folder / "vae")
        self.scheduler.save_pretrained(folder / "scheduler")
        subs = _text_subfolders(self.family)
        source = self._text_source
        if source is not None and source.is_dir():
            if source.resolve() == folder.resolve():
                subs = ()  # saving over the source folder: its text encoders are already there
            for sub in subs:
                shutil.rmtree(folder / sub, ignore_errors=True)
                shutil.copytree(source / sub, folder / sub)
        else:
            if source is not None:
                encoders = _single_file_text_encoders(
                    self.family, _read_checkpoint(source)[0], source
                )
                log.warning(
                    "teacher %s: the saved tokenizers only know the empty prompt's tokens "
                    "(a single file carries no vocabulary)",
                    self.name,
                )
            else:
                encoders = _tiny_text_encoders(self.family, self.context_dim)
            for sub, encoder in zip(subs[::2], encoders, strict=True):
                encoder.save_pretrained(folder / sub)
            for sub, pad in zip(subs[1::2], _pad_kinds(self.family), strict=True):
                write_clip_tokenizer(folder / sub, pad=pad, sparse_real_ids=source is not None)
        _write_model_index(folder, self.family)


# --- registry entries ----------------------------------------------------------------------------


@TEACHERS.register("sd15", "Stable Diffusion 1.5 (paper): eps-prediction, 768-d CLIP context")
def sd15(
    path: str | None = None,
    random_init: bool = False,
    dtype: str = "float32",
    lora: str | None = None,
) -> Teacher:
    return with_lora(build_teacher("sd15", path, random_init, dtype), lora)


@TEACHERS.register("sd21", "Stable Diffusion 2.1 (768-v): v-prediction, 1024-d OpenCLIP context")
def sd21(
    path: str | None = None,
    random_init: bool = False,
    dtype: str = "float32",
    lora: str | None = None,
) -> Teacher:
    return with_lora(build_teacher("sd21", path, random_init, dtype), lora)


@TEACHERS.register("sdxl", "SDXL base: 2048-d context + pooled/time-id added conditioning")
def sdxl(
    path: str | None = None,
    random_init: bool = False,
    dtype: str = "float32",
    lora: str | None = None,
) -> Teacher:
    return with_lora(build_teacher("sdxl", path, random_init, dtype), lora)


@TEACHERS.register("tiny-sd15", "CPU-sized SD 1.5 twin, random or fitted (path=), 768-d context")
def tiny_sd15(
    seed: int = 0, path: str | None = None, lora: str | None = None, dtype: str = "float32"
) -> Teacher:
    return in_dtype(with_lora(tiny_or_fitted("sd15", seed, path), lora), dtype)


@TEACHERS.register("tiny-sd21", "CPU-sized SD 2.1 twin, random or fitted (path=), v-prediction")
def tiny_sd21(
    seed: int = 0, path: str | None = None, lora: str | None = None, dtype: str = "float32"
) -> Teacher:
    return in_dtype(with_lora(tiny_or_fitted("sd21", seed, path), lora), dtype)


@TEACHERS.register("tiny-sdxl", "CPU-sized SDXL twin, random or fitted (path=), text_time cond.")
def tiny_sdxl(
    seed: int = 0, path: str | None = None, lora: str | None = None, dtype: str = "float32"
) -> Teacher:
    return in_dtype(with_lora(tiny_or_fitted("sdxl", seed, path), lora), dtype)


# --- builders ------------------------------------------------------------------------------------


def build_teacher(family: str, path: str | None, random_init: bool, dtype: str) -> Teacher:
    """Real-family teacher from a folder, a single file, or full-size random weights."""
    torch_dtype = parse_dtype(dtype)
    if path and random_init:
        raise AblateError(f"teacher {family}: give teacher.path or random_init=true, not both")
    if random_init:
        return _random_teacher(family, torch_dtype)
    if not path:
        raise AblateError(
            f"teacher {family} needs teacher.path=/local/folder (diffusers layout) or a "
            f".safetensors file; nothing is downloaded. Use teacher=tiny-{family} for CPU runs"
        )
    source = Path(path).expanduser()
    if source.is_dir():
        return _load_folder(family, source, torch_dtype)
    if not source.exists():
        raise AblateError(f"teacher.path {source} does not exist")
    if source.suffix not in (".safetensors", ".ckpt", ".pt", ".pth"):
        raise AblateError(
            f"teacher.path {source} is neither a diffusers-layout folder nor a "
            ".safetensors/.ckpt file"
        )
    return _load_single_file(family, source, torch_dtype)


def architecture(family: str, tiny: bool) -> list[tuple[type, dict[str, Any]]]:
    """(class, config) of the UNet and the VAE, e.g. to count parameters on the meta device."""
    if tiny:
        return [(UNet2DConditionModel, {**_TINY_UNET_COMMON, **_TINY_UNET[family]}),
                (AutoencoderKL, {**_TINY_VAE, "scaling_factor": LATENT_SCALE[family]})]
    return [(UNet2DConditionModel, _UNET[family]), (AutoencoderKL, _VAE[family])]


def tiny_teacher(family: str, seed: int = 0) -> Teacher:
    """Seeded CPU-sized twin; the global RNG is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**_TINY_UNET_COMMON, **_TINY_UNET[family])
        vae = AutoencoderKL(**_TINY_VAE, scaling_factor=LATENT_SCALE[family])
    context, pooled = _random_context(family, seed)
    return UNetTeacher(
        f"tiny-{family}", family, unet, vae, _scheduler(PREDICTION[family]), context, pooled
    )


def _random_teacher(family: str, dtype: torch.dtype) -> Teacher:
    """Full-size architecture with seeded random weights, built on meta then filled fast."""
    generator = torch.Generator().manual_seed(0)
    unet = fill_random(on_meta(UNet2DConditionModel, _UNET[family], dtype), generator)
    vae = fill_random(on_meta(AutoencoderKL, _VAE[family], _vae_dtype(family, dtype)), generator)
    context, pooled = _random_context(family, 0)
    return UNetTeacher(family, family, unet, vae, _scheduler(PREDICTION[family]), context, pooled)


def _random_context(family: str, seed: int) -> tuple[Tensor, Tensor | None]:
    """Fixed stand-in for the empty-prompt embedding when there is no text encoder."""
    g = torch.Generator().manual_seed(seed)
    context = torch.randn(1, TEXT_LENGTH, CONTEXT_DIM[family], generator=g)  # [1, 77, D]
    pooled = torch.randn(1, POOLED_DIM, generator=g) if family == "sdxl" else None  # [1, 1280]
    return context, pooled


def _scheduler(prediction_type: str, config: dict[str, Any] | None = None) -> DDPMScheduler:
    """SD training schedule; betas come from the folder's scheduler config when there is one."""
    config = config or {}
    return DDPMScheduler(
        num_train_timesteps=config.get("num_train_timesteps", 1000),
        beta_start=config.get("beta_start", 0.00085),
        beta_end=config.get("beta_end", 0.012),
        beta_schedule=config.get("beta_schedule", "scaled_linear"),
        prediction_type=prediction_type,
        clip_sample=False,
        steps_offset=config.get("steps_offset", 1),
    )


def _vae_dtype(family: str, dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if family == "sdxl" and dtype == torch.float16 else dtype


# --- diffusers folders ---------------------------------------------------------------------------


def _text_subfolders(family: str) -> tuple[str, ...]:
    """(encoder, tokenizer) subfolder pairs, flattened."""
    pairs = ("text_encoder", "tokenizer")
    return pairs + ("text_encoder_2", "tokenizer_2") if family == "sdxl" else pairs


def _pad_kinds(family: str) -> tuple[str, ...]:
    return {"sd15": ("clip",), "sd21": ("open_clip",), "sdxl": ("clip", "open_clip")}[family]


def family_of(unet_config: dict[str, Any]) -> str | None:
    """Which SD family a UNet config belongs to (context width + added conditioning)."""
    cross = unet_config.get("cross_attention_dim")
    if unet_config.get("addition_embed_type") == "text_time":
        return "sdxl" if cross == 2048 else None
    if unet_config.get("addition_embed_type") is None:
        return {768: "sd15", 1024: "sd21"}.get(cross)
    return None


def _check_folder(family: str, folder: Path) -> None:
    """Fail early, in one line, on a folder of another family or an incomplete folder."""
    unet_json = folder / "unet/config.json"
    if unet_json.is_file():  # the family first: another family's folder lacks other parts
        _check_family(family, folder, json.loads(unet_json.read_text()))
    dit = transformer_family(folder)
    if dit and not unet_json.is_file():
        raise AblateError(f"teacher folder {folder} holds a {dit} transformer, not a {family} "
                          f"UNet; use teacher={dit}")
    needed = ["unet/config.json", "vae/config.json", "scheduler/scheduler_config.json"]
    needed += [f"{sub}/" for sub in _text_subfolders(family)]
    missing = [n for n in needed if not (folder / n).exists()]
    if missing:
        raise AblateError(
            f"teacher folder {folder} is incomplete: missing {', '.join(missing)}; point "
            "teacher.path at a diffusers-layout Stable Diffusion folder"
        )


def _check_family(family: str, folder: Path, unet_config: dict[str, Any]) -> None:
    found = family_of(unet_config)
    if found != family:
        what = f"an {found} model" if found else "an unsupported UNet"
        detail = (
            f"cross_attention_dim {unet_config.get('cross_attention_dim')}, "
            f"addition_embed_type {unet_config.get('addition_embed_type')}"
        )
        fix = f"use teacher={found}" if found else "supported teachers: sd15, sd21, sdxl"
        raise AblateError(f"teacher folder {folder} holds {what} ({detail}), not {family}; {fix}")


def _load_folder(family: str, folder: Path, dtype: torch.dtype) -> Teacher:
    _check_folder(family, folder)
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    unet = load_weights(folder, "unet", UNet2DConditionModel, torch_dtype=dtype)
    vae = load_weights(folder, "vae", AutoencoderKL, torch_dtype=_vae_dtype(family, dtype))
    scheduler_config = json.loads((folder / "scheduler/scheduler_config.json").read_text())
    scheduler = _scheduler(scheduler_config.get("prediction_type", "epsilon"), scheduler_config)
    encoder_classes = [CLIPTextModel] + ([CLIPTextModelWithProjection] if family == "sdxl" else [])
    subs = _text_subfolders(family)
    encoders = [load_weights(folder, sub, cls, dtype=torch.float32)
                for sub, cls in zip(subs[::2], encoder_classes, strict=True)]
    ids = [clip_ids(load_part(folder, sub, CLIPTokenizer.from_pretrained))  # [1, 77] each
           for sub in subs[1::2]]
    context, pooled = _embed_empty_prompt(family, encoders, ids)
    return UNetTeacher(family, family, unet, vae, scheduler, context, pooled, text_source=folder)


@torch.no_grad()
def _embed_empty_prompt(
    family: str, encoders: list[nn.Module], ids: list[Tensor]
) -> tuple[Tensor, Tensor | None]:
    """Follow diffusers' encode_prompt: SD1/2 last hidden state; SDXL penultimate of both + pooled."""
    if family != "sdxl":
        return encoders[0](ids[0]).last_hidden_state, None  # [1, 77, D]
    hidden, pooled = [], None
    for encoder, token_ids in zip(encoders, ids, strict=True):
        out = encoder(token_ids, output_hidden_states=True)
        hidden.append(out.hidden_states[-2])  # [1, 77, 768] then [1, 77, 1280]
        if getattr(out, "text_embeds", None) is not None:
            pooled = out.text_embeds  # [1, 1280] from text_encoder_2's projection
    return torch.cat(hidden, dim=-1), pooled  # [1, 77, 2048]


def _write_model_index(folder: Path, family: str) -> None:
    import diffusers

    index: dict[str, Any] = {
        "_class_name": "StableDiffusionXLPipeline"
        if family == "sdxl"
        else "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    if family == "sdxl":
        index["text_encoder_2"] = ["transformers", "CLIPTextModelWithProjection"]
        index["tokenizer_2"] = ["transformers", "CLIPTokenizer"]
        index["force_zeros_for_empty_prompt"] = True
    else:
        index.update(safety_checker=[None, None], feature_extractor=[None, None])
        index["requires_safety_checker"] = False
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def _tiny_text_encoders(family: str, context_dim: int) -> list[nn.Module]:
    """Tiny random CLIP text encoders whose widths give `context_dim` (and SDXL's pooled 1280)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if family != "sdxl":
            return [tiny_clip(context_dim)]
        second = tiny_clip(POOLED_DIM, projection_dim=POOLED_DIM)
        return [tiny_clip(context_dim - POOLED_DIM), second]  # 768 for the real width 2048


# --- single .safetensors / .ckpt files (original LDM layout) ---------------------------------------

_LDM_FAMILY = {"v1": "sd15", "v2": "sd21", "xl_base": "sdxl"}


def _read_checkpoint(file: Path) -> tuple[dict[str, Tensor], int | None]:
    """State dict and global step of an original-layout checkpoint; never executes pickles."""
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file)), None
    try:
        obj = torch.load(str(file), map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as err:
        raise AblateError(f"cannot read teacher checkpoint {file}: {err}".splitlines()[0]) from None
    step = obj.get("global_step") if isinstance(obj, dict) else None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    return state, step if isinstance(step, int) else None


def _load_single_file(family: str, file: Path, dtype: torch.dtype) -> Teacher:
    """Original LDM checkpoint -> diffusers modules with the embedded architecture configs."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        infer_diffusers_model_type,
    )

    state, step = _read_checkpoint(file)
    found = _LDM_FAMILY.get(infer_diffusers_model_type(state))
    if "model.diffusion_model.input_blocks.0.0.weight" not in state:
        found = None
    if found != family:
        fix = f"use teacher={found}" if found else "supported: SD 1.x, SD 2.x, SDXL base"
        raise AblateError(f"teacher file {file} is not a {family} checkpoint; {fix}")
    unet = on_meta(UNet2DConditionModel, _UNET[family], dtype)
    _load_converted(unet, convert_ldm_unet_checkpoint(state, dict(_UNET[family])), file, "unet")
    vae = on_meta(AutoencoderKL, _VAE[family], _vae_dtype(family, dtype))
    _load_converted(vae, convert_ldm_vae_checkpoint(state, dict(_VAE[family])), file, "vae")
    # SD 2 "base" (512 px) checkpoints are eps; diffusers tells them apart by this global step.
    prediction = PREDICTION[family]
    if family == "sd21" and step == 875000:
        prediction = "epsilon"
    encoders = _single_file_text_encoders(family, state, file)
    ids = [
        torch.tensor([[BOS, EOS] + [PAD_ID[pad]] * (TEXT_LENGTH - 2)])  # [1, 77]
        for pad in _pad_kinds(family)
    ]
    context, pooled = _embed_empty_prompt(family, encoders, ids)
    del state, encoders
    return UNetTeacher(
        family,
        family,
        unet,
        vae,
        _scheduler(prediction),
        context,
        pooled,
        text_source=file,
    )


def _load_converted(model: nn.Module, state: dict[str, Tensor], file: Path, part: str) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing:
        raise AblateError(
            f"teacher file {file}: its {part} lacks {len(missing)} weights (e.g. {missing[0]}); "
            "is it a full Stable Diffusion checkpoint?"
        )
    if unexpected:
        log.debug("%s: ignored %d %s keys, e.g. %s", file, len(unexpected), part, unexpected[0])
    for module in model.modules():  # non-persistent buffers were never initialised
        ids = getattr(module, "position_ids", None)
        if isinstance(ids, Tensor):
            ids.copy_(torch.arange(ids.shape[-1]).expand_as(ids))


def _single_file_text_encoders(
    family: str, state: dict[str, Tensor], file: Path
) -> list[nn.Module]:
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_open_clip_checkpoint,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def build(cls: type, params: dict[str, Any]) -> Any:
        # ids as in the hub configs; eos 2 makes transformers pool at argmax(ids): the first 49407
        config = CLIPTextConfig(
            **params,
            vocab_size=49408,
            max_position_embeddings=TEXT_LENGTH,
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,
        )
        return on_meta(cls, {"config": config}, torch.float32)

    def flat(model: nn.Module, converted: dict[str, Tensor]) -> dict[str, Tensor]:
        # transformers >= 5.6 flattened CLIPTextModel (no `text_model.` prefix)
        if hasattr(model, "text_model"):
            return converted
        return {k.removeprefix("text_model."): v for k, v in converted.items()}

    if family == "sd15":
        model = build(CLIPTextModel, _CLIP_L)
        _load_converted(model, flat(model, convert_ldm_clip_checkpoint(state)), file, "text")
        return [model.eval()]
    if family == "sd21":
        model = build(CLIPTextModel, _OPEN_CLIP_H)
        converted = convert_open_clip_checkpoint(model, state, prefix="cond_stage_model.model.")
        _load_converted(model, flat(model, converted), file, "text")
        return [model.eval()]
    first = build(CLIPTextModel, _CLIP_L)
    _load_converted(first, flat(first, convert_ldm_clip_checkpoint(state)), file, "text")
    second = build(CLIPTextModelWithProjection, _OPEN_CLIP_BIGG)
    converted = convert_open_clip_checkpoint(second, state, prefix="conditioner.embedders.1.model.")
    _load_converted(second, converted, file, "text_2")
    return [first.eval(), second.eval()]




def tiny_or_fitted(family: str, seed: int = 0, path: str | None = None) -> Teacher:
    """The seeded random twin, or (path set) a twin saved by `ablate teachers fit`; seed unused then."""
    if not path:
        return tiny_teacher(family, seed)
    folder = stored_path(path, "teacher.path")
    if not folder.is_dir():
        raise AblateError(
            f"teacher.path {folder} of tiny-{family} must be a folder written by "
            "`ablate teachers fit` (diffusers layout), not a file"
        )
    unet_json = folder / "unet/config.json"
    if unet_json.is_file():
        found = family_of(json.loads(unet_json.read_text()))
        if found != family:
            fix = f"use teacher=tiny-{found}" if found else "supported: sd15, sd21, sdxl twins"
            raise AblateError(
                f"teacher folder {folder} holds {'an ' + found if found else 'an unsupported'} "
                f"model, not tiny-{family}; {fix}"
            )
    teacher = _load_folder(family, folder, torch.float32)
    teacher.name = f"tiny-{family}"
    meta = folder / FITTED_META
    teacher.origin = {
        "path": str(folder),
        "fit": read_json(meta).get("key") if meta.is_file() else None,
    }
    return teacher
