"""The UNet families' CLIP text encoders outside a diffusers folder: rebuilt from a single
original-layout file (diffusers' converters fill encoders built on meta from the embedded
configs), or tiny random ones for a twin. Used once, at build time or when a teacher is saved:
the teacher keeps only the empty prompt's context.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ablate.core.errors import AblateError
from ablate.model.teachers import unet_families as arch
from ablate.model.teachers.base import on_meta
from ablate.model.teachers.text import TEXT_LENGTH, tiny_clip

log = logging.getLogger(__name__)


def load_converted(model: nn.Module, state: dict[str, Tensor], file: Path, part: str) -> None:
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


def text_encoders(family: str, state: dict[str, Tensor], file: Path) -> list[nn.Module]:
    """The family's CLIP text encoders (fp32), built on meta from the embedded configs and
    filled from the file's LDM keys by diffusers' converters."""
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
        model = build(CLIPTextModel, arch._CLIP_L)
        load_converted(model, flat(model, convert_ldm_clip_checkpoint(state)), file, "text")
        return [model.eval()]
    if family == "sd21":
        model = build(CLIPTextModel, arch._OPEN_CLIP_H)
        converted = convert_open_clip_checkpoint(model, state, prefix="cond_stage_model.model.")
        load_converted(model, flat(model, converted), file, "text")
        return [model.eval()]
    first = build(CLIPTextModel, arch._CLIP_L)
    load_converted(first, flat(first, convert_ldm_clip_checkpoint(state)), file, "text")
    second = build(CLIPTextModelWithProjection, arch._OPEN_CLIP_BIGG)
    converted = convert_open_clip_checkpoint(second, state, prefix="conditioner.embedders.1.model.")
    load_converted(second, converted, file, "text_2")
    return [first.eval(), second.eval()]


def tiny_text_encoders(family: str, context_dim: int) -> list[nn.Module]:
    """Tiny random CLIP text encoders whose widths give `context_dim` (and SDXL's pooled 1280)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if family != "sdxl":
            return [tiny_clip(context_dim)]
        second = tiny_clip(arch.POOLED_DIM, projection_dim=arch.POOLED_DIM)
        return [tiny_clip(context_dim - arch.POOLED_DIM), second]  # 768 for the real width 2048
