"""Frozen diffusion teachers: one interface (`base.Teacher`), one rule for where weights come
from (`loading`), and per family only what differs.

    loading.py        where a teacher's weights come from, for every family: folder, single
                      file (pickles read as tensors only), random init, tiny or fitted twin, LoRA
    unet.py           the SD 1.5 / SD 2.1 / SDXL UNet teacher
    unet_families.py  their architectures, schedule and empty-prompt embedding
    unet_variants.py  their registry entries (sd15 ... tiny-sdxl) and models built in code
    unet_folder.py    their diffusers folders, read (unet_save.py writes them)
    unet_file.py      their original-layout (LDM) single files
    unet_text.py      their CLIP text encoders outside a folder (from a file, or tiny)
    sd3.py            SD3 / SD3.5 MMDiT transformers and tiny-sd3
    flux.py           Flux.1 transformers and tiny-flux
    flow.py           the flow-matching noise rule both transformer families train with
    flow_variants.py  their registry entries (sd3, tiny-sd3, flux, tiny-flux)
    single_file.py    SD3 / Flux from one original-layout file (+ part files)
    lora.py           LoRA adapters and fitted twins' files, tied to their base teacher
    text.py           empty-prompt text encoders and tokenizers (tiny ones for twins)

Importing this package registers every family in the `teacher` slot.
"""

from ablate.core.names import ADAPTER_META, ADAPTER_WEIGHTS, FITTED_META
from ablate.core.paths import TEACHERS_DIR
from ablate.model.teachers import flow_variants, flux, sd3, unet_families, unet_variants  # noqa: F401  (register all)
from ablate.model.teachers.base import Teacher, image_size_error, parse_dtype, scale_residuals
from ablate.model.teachers.loading import folder_family
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
from ablate.model.teachers.unet import UNetTeacher
from ablate.model.teachers.unet_families import family_of
from ablate.model.teachers.unet_variants import (
    build_teacher,
    sd15,
    sd21,
    sdxl,
    tiny_or_fitted,
    tiny_teacher,
)


def architecture(name: str) -> list[tuple[type, dict]] | None:
    """(class, config) of a built-in teacher's denoiser and VAE (counted on the meta device
    by `ablate teachers list`); None for a variant registered elsewhere."""
    tiny, family = name.startswith("tiny-"), name.removeprefix("tiny-")
    if family in unet_families.FAMILIES:
        return unet_families.architecture(family, tiny)
    module = {"sd3": sd3, "flux": flux}.get(family)
    return None if module is None else module.architecture(tiny)


__all__ = [
    "ADAPTER_META", "ADAPTER_NAME", "ADAPTER_WEIGHTS", "FITTED_META", "LORA_TARGETS",
    "TEACHERS_DIR", "Teacher", "UNetTeacher", "architecture", "base_override", "build_teacher",
    "denoiser_fingerprint", "family_of", "folder_family", "fingerprints_match", "image_size_error", "load_lora",
    "parse_dtype", "read_json", "scale_residuals", "sd15", "sd21", "sdxl", "tiny_or_fitted",
    "tiny_teacher", "unet_fingerprint",
]
