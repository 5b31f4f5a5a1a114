"""The frozen Stable Diffusion teacher: UNet + VAE + DDPM schedule + an empty-prompt context.

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
recorded base teacher and fused into the UNet (see `load_lora`).

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

from ablate.errors import AblateError, first_line
from ablate.registry import TEACHERS

log = logging.getLogger(__name__)

FAMILIES = ("sd15", "sd21", "sdxl")
CONTEXT_DIM = {"sd15": 768, "sd21": 1024, "sdxl": 2048}
POOLED_DIM = 1280  # SDXL pooled text embedding (text_encoder_2 projection)
PREDICTION = {"sd15": "epsilon", "sd21": "v_prediction", "sdxl": "epsilon"}
LATENT_SCALE = {"sd15": 0.18215, "sd21": 0.18215, "sdxl": 0.13025}
TEXT_LENGTH = 77
BOS, EOS = 49406, 49407
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}

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
_PAD_ID = {"clip": EOS, "open_clip": 0}


class Teacher(nn.Module):
    """Frozen SD UNet + VAE + DDPM schedule; `predict` takes the guide's residuals.

    Frozen means: no parameter requires grad and the module stays in eval mode (dropout
    off) even when a parent module calls `.train()`. Gradients still flow *through* it to
    the residuals, which is how the guide learns.
    """

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
        super().__init__()
        self.name = name
        self.family = family
        self.unet = unet
        self.vae = vae
        self.scheduler = scheduler
        self.prediction_type: str = scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise AblateError(
                f"teacher {name}: prediction_type {self.prediction_type!r} is not supported; "
                "use an epsilon or v_prediction Stable Diffusion model"
            )
        self.latent_scale = float(vae.config.scaling_factor)
        self.vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.latent_channels = int(vae.config.latent_channels)
        self.context_dim = int(unet.config.cross_attention_dim)
        # Empty-prompt embedding, computed once; not persistent (rebuilt from the source).
        self.register_buffer("context", context.detach().to(unet.dtype), persistent=False)
        pooled = None if pooled is None else pooled.detach().to(unet.dtype)
        self.register_buffer("pooled", pooled, persistent=False)  # [1, 1280] (SDXL) or None
        self._text_source = text_source  # a folder or file to copy text encoders from on save
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> Teacher:
        """Stay in eval mode whatever the parent asks: the teacher is frozen."""
        return super().train(False)

    # --- diffusion -----------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Images [B,3,H,W] in [-1,1] -> scaled latents sampled from the VAE posterior."""
        x = images.to(device=self.context.device, dtype=self.vae.dtype)
        latents = self.vae.encode(x).latent_dist.sample(generator=generator)  # [B, C, H/f, W/f]
        return (latents * self.latent_scale).to(self.unet.dtype)

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

    def check_image_size(self, image_size: int) -> None:
        message = image_size_error(self, image_size)
        if message:
            raise AblateError(message)

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
                _write_tokenizer(folder / sub, pad=pad, sparse_real_ids=source is not None)
        _write_model_index(folder, self.family)


def image_size_error(teacher: Teacher, image_size: int) -> str | None:
    """Why `image_size` does not fit the teacher's VAE (or None): it must divide into latents."""
    f = teacher.vae_factor
    if image_size > 0 and image_size % f == 0:
        return None
    lower = max(f, image_size // f * f)
    options = sorted({lower, lower + f} - {image_size})
    return (
        f"image_size {image_size} does not fit teacher {teacher.name}: it must be a multiple of "
        f"its VAE factor {f}; nearest sizes that work: {' or '.join(map(str, options))}"
    )


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


def tiny_teacher(family: str, seed: int = 0) -> Teacher:
    """Seeded CPU-sized twin; the global RNG is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**_TINY_UNET_COMMON, **_TINY_UNET[family])
        vae = AutoencoderKL(**_TINY_VAE, scaling_factor=LATENT_SCALE[family])
    context, pooled = _random_context(family, seed)
    return Teacher(
        f"tiny-{family}", family, unet, vae, _scheduler(PREDICTION[family]), context, pooled
    )


def _random_teacher(family: str, dtype: torch.dtype) -> Teacher:
    """Full-size architecture with seeded random weights, built on meta then filled fast."""
    generator = torch.Generator().manual_seed(0)
    unet = _fill_random(_on_meta(UNet2DConditionModel, _UNET[family], dtype), generator)
    vae = _fill_random(_on_meta(AutoencoderKL, _VAE[family], _vae_dtype(family, dtype)), generator)
    context, pooled = _random_context(family, 0)
    return Teacher(family, family, unet, vae, _scheduler(PREDICTION[family]), context, pooled)


def _on_meta(cls: type, config: dict[str, Any], dtype: torch.dtype) -> Any:
    """Construct without initialising (meta), then allocate uninitialised CPU storage."""
    with torch.device("meta"):
        model = cls(**config)
    nn.Module.to(model, dtype)  # plain cast: diffusers' `to` warns about fp32-kept modules
    return model.to_empty(device="cpu")


_POOL_SIZE = 1_000_003  # prime, so tiled rows do not line up


@torch.no_grad()
def _fill_random(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Seeded weights ~ N(0, 1/fan_in), biases 0, norm scales 1.

    One normal pool is tiled (with a random shift) over each weight: a 2.6B-parameter SDXL UNet
    fills in seconds instead of the ~25 s of per-tensor `normal_` on two cores.
    """
    pool = torch.randn(_POOL_SIZE, generator=generator)
    for name, p in module.named_parameters():
        if p.ndim < 2:
            p.fill_(0.0 if name.endswith("bias") else 1.0)
            continue
        shift = int(torch.randint(_POOL_SIZE, (1,), generator=generator))
        n, std = p.numel(), p[0].numel() ** -0.5
        src = (pool.roll(shift)[: min(n, _POOL_SIZE)] * std).to(p.dtype)
        flat = p.view(-1)
        full = n // _POOL_SIZE * _POOL_SIZE
        if full:
            flat[:full].view(-1, _POOL_SIZE).copy_(src.expand(full // _POOL_SIZE, -1))
        flat[full:].copy_(src[: n - full])
    for buf in module.buffers():  # none in SD UNets/VAEs today; keep them finite anyway
        buf.zero_()
    return module.eval()


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


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise AblateError(f"teacher.dtype {name!r} is unknown; valid: {', '.join(DTYPES)}")
    return DTYPES[name]


def _vae_dtype(family: str, dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if family == "sdxl" and dtype == torch.float16 else dtype


# --- diffusers folders ---------------------------------------------------------------------------


def _text_subfolders(family: str) -> tuple[str, ...]:
    """(encoder, tokenizer) subfolder pairs, flattened."""
    pairs = ("text_encoder", "tokenizer")
    return pairs + ("text_encoder_2", "tokenizer_2") if family == "sdxl" else pairs


def _pad_kinds(family: str) -> tuple[str, ...]:
    return {"sd15": ("clip",), "sd21": ("open_clip",), "sdxl": ("clip", "open_clip")}[family]


def _family_of(unet_config: dict[str, Any]) -> str | None:
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
    needed = ["unet/config.json", "vae/config.json", "scheduler/scheduler_config.json"]
    needed += [f"{sub}/" for sub in _text_subfolders(family)]
    missing = [n for n in needed if not (folder / n).exists()]
    if missing:
        raise AblateError(
            f"teacher folder {folder} is incomplete: missing {', '.join(missing)}; point "
            "teacher.path at a diffusers-layout Stable Diffusion folder"
        )


def _check_family(family: str, folder: Path, unet_config: dict[str, Any]) -> None:
    found = _family_of(unet_config)
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

    def load(loader: Any, sub: str, **kwargs: Any) -> Any:
        try:
            return loader(str(folder / sub), local_files_only=True, **kwargs)
        except (OSError, ValueError) as err:
            first = first_line(err)
            raise AblateError(f"teacher folder {folder}: cannot load {sub}/: {first}") from None

    unet = load(
        UNet2DConditionModel.from_pretrained,
        "unet",
        torch_dtype=dtype,
        variant=_variant(folder / "unet"),
    )
    vae_dtype = _vae_dtype(family, dtype)
    vae = load(
        AutoencoderKL.from_pretrained,
        "vae",
        torch_dtype=vae_dtype,
        variant=_variant(folder / "vae"),
    )
    scheduler_config = json.loads((folder / "scheduler/scheduler_config.json").read_text())
    scheduler = _scheduler(scheduler_config.get("prediction_type", "epsilon"), scheduler_config)
    encoder_classes = [CLIPTextModel] + ([CLIPTextModelWithProjection] if family == "sdxl" else [])
    subs = _text_subfolders(family)
    encoders, ids = [], []
    for sub_encoder, sub_tokenizer, cls in zip(subs[::2], subs[1::2], encoder_classes, strict=True):
        variant = _variant(folder / sub_encoder)
        encoders.append(
            load(cls.from_pretrained, sub_encoder, dtype=torch.float32, variant=variant)
        )
        tokenizer = load(CLIPTokenizer.from_pretrained, sub_tokenizer)
        length = tokenizer.model_max_length
        tokens = tokenizer("", padding="max_length", max_length=length, return_tensors="pt")
        ids.append(tokens.input_ids)  # [1, 77]
    context, pooled = _embed_empty_prompt(family, encoders, ids)
    return Teacher(family, family, unet, vae, scheduler, context, pooled, text_source=folder)


def _variant(folder: Path) -> str | None:
    """ "fp16" when a component folder only holds fp16-variant weight files."""
    weights = [p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin")]
    return "fp16" if weights and all(".fp16" in name for name in weights) else None


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


# Minimal byte-level BPE vocab: enough for "" and a few lowercase words.
_TINY_VOCAB = [
    "!",
    "<|startoftext|>",
    "<|endoftext|>",
    "a</w>",
    "e</w>",
    "f",
    "a",
    "c",
    "e",
    "fa",
    "ce</w>",
]
_TINY_MERGES = ["f a", "c e</w>"]


def _write_tokenizer(folder: Path, pad: str, sparse_real_ids: bool = False) -> None:
    """A CLIPTokenizer from a handwritten vocab.json/merges.txt (bos/eos/pad are all "" needs).

    `sparse_real_ids` keeps the real CLIP ids (bos 49406, eos 49407, "!" 0) so that a real text
    encoder from a single file embeds "" exactly as with its full tokenizer.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if sparse_real_ids:
        vocab = {"!": 0, "<|startoftext|>": BOS, "<|endoftext|>": EOS}
        merges: list[str] = []
    else:
        vocab = {token: i for i, token in enumerate(_TINY_VOCAB)}
        merges = _TINY_MERGES
    pad_token = "<|endoftext|>" if pad == "clip" else "!"
    specials = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad_token,
    }
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges))
    (folder / "special_tokens_map.json").write_text(json.dumps(specials))
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": TEXT_LENGTH, **specials}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def _tiny_text_encoders(family: str, context_dim: int) -> list[nn.Module]:
    """Tiny random CLIP text encoders whose widths give `context_dim` (and SDXL's pooled 1280)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def config(hidden: int, **extra: Any) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=len(_TINY_VOCAB),
            hidden_size=hidden,
            intermediate_size=64,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=TEXT_LENGTH,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=2,
            **extra,
        )

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if family != "sdxl":
            return [CLIPTextModel(config(context_dim))]
        first = context_dim - POOLED_DIM  # 768 for the real width 2048
        second = CLIPTextModelWithProjection(config(POOLED_DIM, projection_dim=POOLED_DIM))
        return [CLIPTextModel(config(first)), second]


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
    unet = _on_meta(UNet2DConditionModel, _UNET[family], dtype)
    _load_converted(unet, convert_ldm_unet_checkpoint(state, dict(_UNET[family])), file, "unet")
    vae = _on_meta(AutoencoderKL, _VAE[family], _vae_dtype(family, dtype))
    _load_converted(vae, convert_ldm_vae_checkpoint(state, dict(_VAE[family])), file, "vae")
    # SD 2 "base" (512 px) checkpoints are eps; diffusers tells them apart by this global step.
    prediction = PREDICTION[family]
    if family == "sd21" and step == 875000:
        prediction = "epsilon"
    encoders = _single_file_text_encoders(family, state, file)
    ids = [
        torch.tensor([[BOS, EOS] + [_PAD_ID[pad]] * (TEXT_LENGTH - 2)])  # [1, 77]
        for pad in _pad_kinds(family)
    ]
    context, pooled = _embed_empty_prompt(family, encoders, ids)
    del state, encoders
    return Teacher(
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
        return _on_meta(cls, {"config": config}, torch.float32)

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


# --- fitted twins and LoRA adapters (`ablate teachers fit / adapt` write them) ----------------------

TEACHERS_DIR = Path("results/teachers")  # default home of fitted twins and adapters
FITTED_META = "ablate_teacher.json"  # next to a fitted twin's unet/ vae/ ...: what it was fit on
ADAPTER_META = "ablate_adapter.json"  # next to the adapter weights: its base teacher
ADAPTER_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' LoRA file name
ADAPTER_NAME = "ablate"
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # attention projections of every block
_PROBE_TENSORS, _PROBE_VALUES = 64, 4


def stored_path(value: str | Path, what: str) -> Path:
    """`value` as a path, else as a name under results/teachers/ (as `ablate teachers list` shows)."""
    path = Path(value).expanduser()
    if path.exists():
        return path
    if (TEACHERS_DIR / str(value)).exists():
        return TEACHERS_DIR / str(value)
    raise AblateError(
        f"{what} {value} does not exist, as a path or under {TEACHERS_DIR}/; "
        "see `ablate teachers list`"
    )


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
        found = _family_of(json.loads(unet_json.read_text()))
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


def in_dtype(teacher: Teacher, dtype: str) -> Teacher:
    """The twin in `dtype` (built and LoRA-fused in fp32 first): tests and CPU runs of the
    reduced-precision path that real teachers take with `teacher.dtype`."""
    torch_dtype = parse_dtype(dtype)
    if torch_dtype == torch.float32:
        return teacher
    nn.Module.to(teacher.unet, torch_dtype)
    nn.Module.to(teacher.vae, _vae_dtype(teacher.family, torch_dtype))
    teacher.context = teacher.context.to(torch_dtype)
    if teacher.pooled is not None:
        teacher.pooled = teacher.pooled.to(torch_dtype)
    return teacher


def with_lora(teacher: Teacher, lora: str | None) -> Teacher:
    """Registry hook: the teacher with an adapter fused into its UNet (plain, frozen modules)."""
    return load_lora(teacher, lora, fuse=True) if lora else teacher


def load_lora(
    teacher: Teacher, source: str | Path, fuse: bool = True, scale: float = 1.0
) -> Teacher:
    """Load an adapter (folder or .safetensors, diffusers/PEFT format) into `teacher.unet`.

    fuse=True merges it into the UNet weights and removes the PEFT wrappers, so the guide's
    `ControlNetModel.from_unet` copy and the speed are those of a plain UNet. fuse=False keeps it
    as PEFT adapter "ablate" (`teacher.unet.disable_adapters()` then gives the base exactly).
    An `ablate_adapter.json` beside the weights names the base; a mismatch is an AblateError.
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    where = stored_path(source, "teacher.lora")
    file = where / ADAPTER_WEIGHTS if where.is_dir() else where
    if file.suffix != ".safetensors" or not file.is_file():
        raise AblateError(
            f"teacher.lora {where} is neither an adapter folder (with {ADAPTER_WEIGHTS}) nor a "
            ".safetensors file; create one with `ablate teachers adapt`"
        )
    meta_file = file.parent / ADAPTER_META
    if meta_file.is_file():
        check_adapter_base(teacher, read_json(meta_file), where)
    else:
        log.warning("adapter %s has no %s: its base teacher is not checked", file, ADAPTER_META)
    try:
        state = load_file(str(file))
        with safe_open(str(file), "pt") as handle:
            header = handle.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise AblateError(f"cannot read adapter {file}: {err}".splitlines()[0]) from None
    lora_config = (
        json.loads(header["lora_adapter_metadata"]) if "lora_adapter_metadata" in header else None
    )
    if any(k.startswith("unet.") for k in state):  # pipeline layout: unet.<module>.lora_A.weight
        state = {k[5:]: v for k, v in state.items() if k.startswith("unet.")}
        lora_config = {k[5:]: v for k, v in (lora_config or {}).items() if k.startswith("unet.")}
    if not any(".lora_A." in k for k in state):
        from diffusers.utils import convert_unet_state_dict_to_peft

        state = convert_unet_state_dict_to_peft(state)
    _check_lora_shapes(teacher, state, file)
    unet = teacher.unet
    try:
        unet.load_lora_adapter(
            state, prefix=None, adapter_name=ADAPTER_NAME, metadata=lora_config or None
        )
    except (ValueError, RuntimeError, KeyError, TypeError) as err:
        first = first_line(err)
        raise AblateError(
            f"cannot load adapter {file} into teacher {teacher.name}: {first}"
        ) from None
    if fuse:
        unet.fuse_lora(lora_scale=scale, adapter_names=[ADAPTER_NAME])
        unet.unload_lora()  # PEFT wrappers -> plain modules holding the merged weights
    elif scale != 1.0:
        unet.set_adapters(ADAPTER_NAME, scale)
    teacher.requires_grad_(False)  # the adapter is part of the frozen teacher
    meta = read_json(meta_file) if meta_file.is_file() else {}
    origin = dict(getattr(teacher, "origin", None) or {})
    teacher.origin = {**origin, "lora": str(file), "lora_key": meta.get("key"), "lora_fused": fuse}
    return teacher


def check_adapter_base(teacher: Teacher, meta: dict[str, Any], where: str | Path) -> None:
    """One-line AblateError unless `teacher` is the teacher the adapter was trained on."""
    base = meta.get("base") or {}
    label = base_label(base)
    unset = (
        " teacher.path=null" if not base.get("path") and getattr(teacher, "origin", None) else ""
    )
    use = f"use {base_override(base)}{unset} teacher.lora={where}"
    if base.get("family") != teacher.family:
        raise AblateError(
            f"adapter {where} was trained for {base.get('family')} teachers (base {label}), "
            f"not {teacher.family} (teacher {teacher.name}); {use}"
        )
    expected, found = base.get("unet") or {}, unet_fingerprint(teacher.unet)
    if expected.get("arch") != found["arch"]:
        raise AblateError(
            f"adapter {where} was trained on base {label}, whose UNet architecture differs from "
            f"teacher {teacher.name}'s; {use}"
        )
    if not fingerprints_match(expected, found):
        raise AblateError(
            f"adapter {where} was trained on other UNet weights (base {label}, fingerprint "
            f"{expected.get('weights')}) than teacher {teacher.name} has ({found['weights']}); {use}"
        )


def base_label(base: dict[str, Any]) -> str:
    """'tiny-sd15 seed 0', 'sd15 from /models/sd15', ... for messages and listings."""
    name = base.get("teacher", "?")
    if base.get("path"):
        return f"{name} from {base['path']}"
    if base.get("random_init"):
        return f"{name} random_init"
    return f"{name} seed {base.get('seed', 0)}" if str(name).startswith("tiny-") else str(name)


def base_override(base: dict[str, Any]) -> str:
    """Recipe overrides that rebuild an adapter's base teacher."""
    parts = [f"teacher={base.get('teacher', '?')}"]
    if base.get("path"):
        parts.append(f"teacher.path={base['path']}")
    elif base.get("random_init"):
        parts.append("teacher.random_init=true")
    elif str(base.get("teacher", "")).startswith("tiny-"):
        parts.append(f"teacher.seed={base.get('seed', 0)}")
    return " ".join(parts)


@torch.no_grad()
def unet_fingerprint(unet: nn.Module) -> dict[str, Any]:
    """Cheap identity of UNet weights: an architecture hash and a probe of sampled values.

    Sampling 256 values instead of hashing every byte keeps it instant for SDXL; the probe is
    compared with a tolerance (`fingerprints_match`), so fp16/bf16 copies of the same weights
    match. PEFT wrappers are seen through (`base_layer`), adapter tensors ignored.
    """
    import hashlib

    state = {
        k.replace(".base_layer.", "."): v for k, v in unet.state_dict().items() if "lora_" not in k
    }
    names = sorted(state)
    arch = "\n".join(f"{k}:{tuple(state[k].shape)}" for k in names)
    weights = [k for k in names if state[k].ndim >= 2]
    count = min(_PROBE_TENSORS, len(weights))
    picks = sorted({round(i * (len(weights) - 1) / max(count - 1, 1)) for i in range(count)})
    probe: list[float] = []
    for i in picks:
        flat = state[weights[i]].reshape(-1)
        n = flat.numel()
        index = torch.tensor([(n * (j + 1)) // (_PROBE_VALUES + 1) for j in range(_PROBE_VALUES)])
        probe += flat[index.clamp(max=n - 1)].float().tolist()
    blob = torch.tensor(probe, dtype=torch.float32).numpy().tobytes()
    return {
        "arch": hashlib.sha256(arch.encode()).hexdigest()[:16],
        "weights": hashlib.sha256(blob).hexdigest()[:16],
        "probe": probe,
    }


def fingerprints_match(expected: dict[str, Any], found: dict[str, Any]) -> bool:
    """Same architecture and the same sampled weights up to half-precision rounding."""
    if expected.get("arch") != found.get("arch"):
        return False
    if expected.get("weights") == found.get("weights"):
        return True
    a, b = expected.get("probe") or [], found.get("probe") or []
    return len(a) == len(b) > 0 and torch.allclose(
        torch.tensor(a), torch.tensor(b), rtol=1e-2, atol=1e-5
    )


def _check_lora_shapes(teacher: Teacher, state: dict[str, Tensor], file: Path) -> None:
    """Every lora_A/lora_B must sit on an existing layer of matching width (one-line error)."""
    modules = dict(teacher.unet.named_modules())
    for key, tensor in state.items():
        part = ".lora_A." if ".lora_A." in key else ".lora_B." if ".lora_B." in key else None
        if part is None:
            continue
        name = key.split(part)[0]
        weight = getattr(modules.get(name), "weight", None)
        if not isinstance(weight, Tensor):
            raise AblateError(
                f"adapter {file} does not fit teacher {teacher.name}: it adapts {name}, which "
                "that UNet lacks (an adapter of another family or size?)"
            )
        ok = (
            tensor.shape[1] == weight.shape[1]
            if part == ".lora_A."
            else (tensor.shape[0] == weight.shape[0])
        )
        if not ok:
            raise AblateError(
                f"adapter {file} does not fit teacher {teacher.name}: {name} is "
                f"{tuple(weight.shape)} there, the adapter expects other widths"
            )


def read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise AblateError(f"cannot read {file}: {err}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise AblateError(f"{file} is not a JSON object")
    return data
