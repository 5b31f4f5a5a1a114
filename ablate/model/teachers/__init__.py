"""Frozen diffusion teachers: one file per family behind one interface (`base.Teacher`).

    unet.py   SD 1.5 / SD 2.1 / SDXL UNets and their tiny twins
    sd3.py    SD3 / SD3.5 MMDiT transformers and tiny-sd3
    flux.py   Flux.1 transformers and tiny-flux
    flow.py   the flow-matching noise rule both transformer families train with
    single_file.py   SD3 / Flux from one original-layout .safetensors file
    lora.py   LoRA adapters and fitted twins' files, tied to their base teacher
    text.py   empty-prompt text encoders and tokenizers (tiny ones for twins)

Importing this package registers every family in the `teacher` slot.
"""

from pathlib import Path

from ablate.core.names import ADAPTER_META, ADAPTER_WEIGHTS, FITTED_META
from ablate.core.paths import TEACHERS_DIR
from ablate.model.teachers import flux, sd3, single_file, unet  # noqa: F401  (register all)
from ablate.model.teachers.base import (
    Teacher,
    image_size_error,
    parse_dtype,
    scale_residuals,
    transformer_family,
)
from ablate.model.teachers.lora import (
    ADAPTER_NAME,
    LORA_TARGETS,
    base_override,
    denoiser_fingerprint,
    fingerprints_match,
    load_lora,
    read_json,
    unet_fingerprint,
)
from ablate.model.teachers.unet import (
    UNetTeacher,
    build_teacher,
    family_of,
    sd15,
    sd21,
    sdxl,
    tiny_or_fitted,
    tiny_teacher,
)


def folder_family(folder: Path) -> str | None:
    """The family of a diffusers-layout teacher folder (sd15, sd21, sdxl, sd3, flux), or None."""
    if (folder / "unet/config.json").is_file():
        return family_of(read_json(folder / "unet/config.json"))
    return transformer_family(folder)


def architecture(name: str) -> list[tuple[type, dict]] | None:
    """(class, config) of a built-in teacher's denoiser and VAE (counted on the meta device
    by `ablate teachers list`); None for a variant registered elsewhere."""
    tiny, family = name.startswith("tiny-"), name.removeprefix("tiny-")
    if family in unet.FAMILIES:
        return unet.architecture(family, tiny)
    module = {"sd3": sd3, "flux": flux}.get(family)
    return None if module is None else module.architecture(tiny)


__all__ = [
    "ADAPTER_META", "ADAPTER_NAME", "ADAPTER_WEIGHTS", "FITTED_META", "LORA_TARGETS",
    "TEACHERS_DIR", "Teacher", "UNetTeacher", "architecture", "base_override", "build_teacher",
    "denoiser_fingerprint", "family_of", "folder_family", "fingerprints_match", "image_size_error", "load_lora",
    "parse_dtype", "read_json", "scale_residuals", "sd15", "sd21", "sdxl", "tiny_or_fitted",
    "tiny_teacher", "unet_fingerprint",
]
