"""Writing a UNet teacher as a diffusers-layout folder (`UNetTeacher.save_pretrained`, what
`ablate teachers fit` writes), which `sd15/sd21/sdxl(path=FOLDER)` and a fitted twin's
`tiny-*(path=FOLDER)` read back.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from ablate.model.teachers import unet_families as arch
from ablate.model.teachers.base import Teacher
from ablate.model.teachers.loading import WeightsFile
from ablate.model.teachers.text import write_clip_tokenizer
from ablate.model.teachers.unet_text import text_encoders, tiny_text_encoders

log = logging.getLogger(__name__)


def save_folder(teacher: Teacher, folder: Path) -> None:  # a UNetTeacher
    """`UNetTeacher.save_pretrained`: UNet, VAE, schedule, model_index.json and text encoders
    with tokenizers, copied from the source folder, rebuilt from the source single file, or
    (tiny twin, random_init) tiny random ones."""
    folder.mkdir(parents=True, exist_ok=True)
    teacher.unet.save_pretrained(folder / "unet")
    teacher.vae.save_pretrained(folder / "vae")
    teacher.scheduler.save_pretrained(folder / "scheduler")
    family = teacher.family
    subs = arch.text_subfolders(family)
    source = teacher._text_source
    if source is not None and source.is_dir():
        if source.resolve() == folder.resolve():
            subs = ()  # saving over the source folder: its text encoders are already there
        for sub in subs:
            shutil.rmtree(folder / sub, ignore_errors=True)
            shutil.copytree(source / sub, folder / sub)
    else:
        if source is not None:
            encoders = text_encoders(family, WeightsFile(source, "teacher.path").state(), source)
            log.warning(
                "teacher %s: the saved tokenizers only know the empty prompt's tokens "
                "(a single file carries no vocabulary)",
                teacher.name,
            )
        else:
            encoders = tiny_text_encoders(family, teacher.context_dim)
        for sub, encoder in zip(subs[::2], encoders, strict=True):
            encoder.save_pretrained(folder / sub)
        for sub, pad in zip(subs[1::2], arch.pad_kinds(family), strict=True):
            write_clip_tokenizer(folder / sub, pad=pad, sparse_real_ids=source is not None)
    write_model_index(folder, family)


def write_model_index(folder: Path, family: str) -> None:
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


