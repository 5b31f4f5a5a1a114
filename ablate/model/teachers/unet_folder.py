"""UNet teachers from diffusers-layout folders (`load_folder`: what `sd15/sd21/sdxl
(path=FOLDER)` and a fitted twin's `tiny-*(path=FOLDER)` take; `unet_save` writes them).

A folder carries its own configs, so nothing here assumes the family's architecture: the
family is read from the UNet config (context width + added conditioning) and checked first,
so another family's folder is one line naming the teacher that takes it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from ablate.core.errors import AblateError
from ablate.model.teachers import unet_families as arch
from ablate.model.teachers.base import load_part, load_weights, transformer_family
from ablate.model.teachers.text import clip_ids
from ablate.model.teachers.unet import UNetTeacher

log = logging.getLogger(__name__)


def check_folder(family: str, folder: Path) -> None:
    """Fail early, in one line, on a folder of another family or an incomplete folder."""
    unet_json = folder / "unet/config.json"
    if unet_json.is_file():  # the family first: another family's folder lacks other parts
        check_family(family, folder, json.loads(unet_json.read_text()))
    dit = transformer_family(folder)
    if dit and not unet_json.is_file():
        raise AblateError(f"teacher folder {folder} holds a {dit} transformer, not a {family} "
                          f"UNet; use teacher={dit}")
    needed = ["unet/config.json", "vae/config.json", "scheduler/scheduler_config.json"]
    needed += [f"{sub}/" for sub in arch.text_subfolders(family)]
    missing = [n for n in needed if not (folder / n).exists()]
    if missing:
        raise AblateError(
            f"teacher folder {folder} is incomplete: missing {', '.join(missing)}; point "
            "teacher.path at a diffusers-layout Stable Diffusion folder"
        )


def check_family(family: str, folder: Path, unet_config: dict[str, Any]) -> None:
    found = arch.family_of(unet_config)
    if found != family:
        what = f"an {found} model" if found else "an unsupported UNet"
        detail = (
            f"cross_attention_dim {unet_config.get('cross_attention_dim')}, "
            f"addition_embed_type {unet_config.get('addition_embed_type')}"
        )
        fix = f"use teacher={found}" if found else "supported teachers: sd15, sd21, sdxl"
        raise AblateError(f"teacher folder {folder} holds {what} ({detail}), not {family}; {fix}")


def load_folder(family: str, folder: Path, dtype: torch.dtype) -> UNetTeacher:
    """UNet, VAE and schedule from the folder; the empty prompt embedded once by its own text
    encoders and tokenizers (fp32), which are then dropped."""
    check_folder(family, folder)
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    unet = load_weights(folder, "unet", UNet2DConditionModel, torch_dtype=dtype)
    vae = load_weights(folder, "vae", AutoencoderKL, torch_dtype=arch.vae_dtype(family, dtype))
    scheduler_config = json.loads((folder / "scheduler/scheduler_config.json").read_text())
    scheduler = arch.scheduler(scheduler_config.get("prediction_type", "epsilon"),
                               scheduler_config)
    encoder_classes = [CLIPTextModel] + ([CLIPTextModelWithProjection] if family == "sdxl" else [])
    subs = arch.text_subfolders(family)
    encoders = [load_weights(folder, sub, cls, dtype=torch.float32)
                for sub, cls in zip(subs[::2], encoder_classes, strict=True)]
    ids = [clip_ids(load_part(folder, sub, CLIPTokenizer.from_pretrained))  # [1, 77] each
           for sub in subs[1::2]]
    context, pooled = arch.embed_empty_prompt(family, encoders, ids)
    return UNetTeacher(family, family, unet, vae, scheduler, context, pooled, text_source=folder)
