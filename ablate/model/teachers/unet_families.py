"""What the SD UNet families are (SD 1.5, SD 2.1, SDXL and their tiny twins), shared by every
way of building one (`unet_variants`, `unet_folder`, `unet_file`): the architecture configs,
the DDPM schedule, where the text encoders sit and how the empty prompt is embedded.

The configs use diffusers' names and mirror the hub config.json files; the tiny twins keep
each family's block families, conditioning, context width and VAE factor (8) at CPU widths.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from torch import Tensor, nn

from ablate.model.teachers.text import TEXT_LENGTH

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


def architecture(family: str, tiny: bool) -> list[tuple[type, dict[str, Any]]]:
    """(class, config) of the UNet and the VAE, e.g. to count parameters on the meta device."""
    if tiny:
        return [(UNet2DConditionModel, {**_TINY_UNET_COMMON, **_TINY_UNET[family]}),
                (AutoencoderKL, {**_TINY_VAE, "scaling_factor": LATENT_SCALE[family]})]
    return [(UNet2DConditionModel, _UNET[family]), (AutoencoderKL, _VAE[family])]


def family_of(unet_config: dict[str, Any]) -> str | None:
    """Which SD family a UNet config belongs to (context width + added conditioning)."""
    cross = unet_config.get("cross_attention_dim")
    if unet_config.get("addition_embed_type") == "text_time":
        return "sdxl" if cross == 2048 else None
    if unet_config.get("addition_embed_type") is None:
        return {768: "sd15", 1024: "sd21"}.get(cross)
    return None


def scheduler(prediction_type: str, config: dict[str, Any] | None = None) -> DDPMScheduler:
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


def vae_dtype(family: str, dtype: torch.dtype) -> torch.dtype:
    """The SDXL VAE overflows in fp16, so it stays fp32 under an fp16 UNet."""
    return torch.float32 if family == "sdxl" and dtype == torch.float16 else dtype


# --- text encoders and the empty prompt ----------------------------------------------------------


def text_subfolders(family: str) -> tuple[str, ...]:
    """(encoder, tokenizer) subfolder pairs, flattened."""
    pairs = ("text_encoder", "tokenizer")
    return pairs + ("text_encoder_2", "tokenizer_2") if family == "sdxl" else pairs


def pad_kinds(family: str) -> tuple[str, ...]:
    """Each tokenizer's padding: CLIP's (49407) or OpenCLIP's (0, "!")."""
    return {"sd15": ("clip",), "sd21": ("open_clip",), "sdxl": ("clip", "open_clip")}[family]


@torch.no_grad()
def embed_empty_prompt(
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


def random_context(family: str, seed: int) -> tuple[Tensor, Tensor | None]:
    """Fixed stand-in for the empty-prompt embedding when there is no text encoder."""
    g = torch.Generator().manual_seed(seed)
    context = torch.randn(1, TEXT_LENGTH, CONTEXT_DIM[family], generator=g)  # [1, 77, D]
    pooled = torch.randn(1, POOLED_DIM, generator=g) if family == "sdxl" else None  # [1, 1280]
    return context, pooled
