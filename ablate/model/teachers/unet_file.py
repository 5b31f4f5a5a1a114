"""UNet teachers from one original-layout (LDM) file: the Stability AI releases of SD 1.x,
SD 2.x and SDXL base, .safetensors or .ckpt, read by `loading.WeightsFile` (pickles as
tensors only). The architecture is the family's embedded config (`unet_families`); keys are
converted by diffusers' own single-file converters.

Single-file loading has no tokenizer (its vocab is not in the file and nothing is fetched), so
it embeds the empty prompt from the known CLIP token ids: bos 49406, eos 49407, then padding
with 49407 (SD 1.x CLIP tokenizer, SDXL `tokenizer`) or 0 ("!", the OpenCLIP tokenizers of
SD 2.x and SDXL `tokenizer_2`).
"""

from __future__ import annotations

import logging

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from ablate.core.errors import AblateError
from ablate.model.teachers import unet_families as arch
from ablate.model.teachers.base import on_meta
from ablate.model.teachers.loading import WeightsFile, file_family
from ablate.model.teachers.text import BOS, EOS, PAD_ID, TEXT_LENGTH
from ablate.model.teachers.unet import UNetTeacher
from ablate.model.teachers.unet_text import load_converted, text_encoders

log = logging.getLogger(__name__)

SD2_BASE_STEP = 875000  # SD 2 "base" (512 px) checkpoints are eps; diffusers tells them apart so


def load_file(family: str, weights: WeightsFile, dtype: torch.dtype) -> UNetTeacher:
    """Original LDM checkpoint -> diffusers modules with the embedded architecture configs."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    file = weights.file
    found = file_family(weights.shapes)
    if found != family:
        fix = f"use teacher={found}" if found else "supported: SD 1.x, SD 2.x, SDXL base"
        raise AblateError(f"teacher file {file} is not a {family} checkpoint; {fix}")
    state = weights.state()
    unet = on_meta(UNet2DConditionModel, arch._UNET[family], dtype)
    load_converted(unet, convert_ldm_unet_checkpoint(state, dict(arch._UNET[family])), file,
                    "unet")
    vae = on_meta(AutoencoderKL, arch._VAE[family], arch.vae_dtype(family, dtype))
    load_converted(vae, convert_ldm_vae_checkpoint(state, dict(arch._VAE[family])), file, "vae")
    prediction = arch.PREDICTION[family]
    if family == "sd21" and weights.step == SD2_BASE_STEP:
        prediction = "epsilon"
    encoders = text_encoders(family, state, file)
    ids = [
        torch.tensor([[BOS, EOS] + [PAD_ID[pad]] * (TEXT_LENGTH - 2)])  # [1, 77]
        for pad in arch.pad_kinds(family)
    ]
    context, pooled = arch.embed_empty_prompt(family, encoders, ids)
    del state, encoders
    return UNetTeacher(
        family,
        family,
        unet,
        vae,
        arch.scheduler(prediction),
        context,
        pooled,
        text_source=file,
    )
