"""The registry entries of the transformer teachers (sd3, tiny-sd3, flux, tiny-flux) and how
each builds itself for `loading`'s rule: a folder (`sd3`, `flux`), a single file
(`single_file`), random init or a tiny twin. Apart from the family modules, so that
`single_file`, which builds their teachers, and the families need not import each other.
"""

from __future__ import annotations

import torch

from ablate.core.errors import AblateError
from ablate.model.teachers import flux as flux_family
from ablate.model.teachers import sd3 as sd3_family
from ablate.model.teachers.loading import Loader, WeightsFile, real_teacher, twin
from ablate.model.teachers.single_file import load_flux, load_sd3
from ablate.registry import TEACHERS

# ------------------------------------------------------------------------------------ SD3

@TEACHERS.register("sd3", "SD3 / SD3.5 MMDiT: flow matching, 16-ch VAE, CLIP-L + CLIP-G + T5")
def sd3(
    path: str | None = None,
    random_init: bool = False,
    dtype: str = "bfloat16",
    lora: str | None = None,
    t5: bool = True,
    timesteps: str = "logit_normal",
    shift: float | None = None,
    vae_path: str | None = None,
    clip_l_path: str | None = None,
    clip_g_path: str | None = None,
    t5_path: str | None = None,
) -> sd3_family.SD3Teacher:
    """`shift=None`: the folder's scheduler shift (3.0 for SD3 / SD3.5). `path` a single
    weights file: `*_path` name the parts it lacks (`single_file`). Which source is used:
    `loading.real_teacher`."""
    files = {"vae_path": vae_path, "clip_l_path": clip_l_path, "clip_g_path": clip_g_path,
             "t5_path": t5_path}
    if t5_path and not t5:
        raise AblateError("teacher.t5_path names a T5 file but teacher.t5=false skips T5; "
                          "drop one of them")
    return real_teacher(sd3_loader(t5, timesteps, shift, files), path, random_init, dtype, lora)


@TEACHERS.register("tiny-sd3", "CPU-sized SD3.5 twin (joint + dual-attention blocks, 16-ch VAE)")
def tiny_sd3(seed: int = 0, path: str | None = None, lora: str | None = None,
             dtype: str = "float32", timesteps: str = "logit_normal",
             shift: float | None = None) -> sd3_family.SD3Teacher:
    return twin(sd3_loader(True, timesteps, shift), seed, path, lora, dtype)


def sd3_loader(t5: bool, timesteps: str, shift: float | None,
           files: dict[str, str | None] | None = None) -> Loader:
    """How SD3 builds itself under these settings, for `loading`'s rule."""

    def load_file(weights: WeightsFile, dtype: torch.dtype) -> sd3_family.SD3Teacher:
        return load_sd3(weights, dtype, files or {}, t5, timesteps, shift)

    return Loader(
        sd3_family.FAMILY,
        folder=lambda folder, dtype: sd3_family.load_folder(folder, dtype, t5, timesteps, shift),
        file=load_file,
        random=lambda dtype: sd3_family._random_teacher(dtype, timesteps, shift),
        tiny=lambda seed: sd3_family.tiny_teacher(seed, timesteps, shift),
        parts=files or {},
    )


# ------------------------------------------------------------------------------------ Flux

@TEACHERS.register("flux", "Flux.1 dev/schnell: flow matching on packed latents, CLIP-L + T5")
def flux(
    path: str | None = None,
    random_init: bool = False,
    dtype: str = "bfloat16",
    lora: str | None = None,
    guidance: float = flux_family.GUIDANCE,
    timesteps: str = "uniform",
    shift: float | None = None,
    vae_path: str | None = None,
    clip_l_path: str | None = None,
    t5_path: str | None = None,
) -> flux_family.FluxTeacher:
    """`shift=None`: Flux's resolution-dependent time shift; a number: a fixed shift. `path`
    a single weights file: `*_path` name the parts it lacks (`single_file`). Which source is
    used: `loading.real_teacher`."""
    files = {"vae_path": vae_path, "clip_l_path": clip_l_path, "t5_path": t5_path}
    return real_teacher(flux_loader(guidance, timesteps, shift, files), path, random_init, dtype,
                        lora)


@TEACHERS.register("tiny-flux", "CPU-sized Flux.1 twin (double + single blocks, rotary ids, guidance)")
def tiny_flux(seed: int = 0, path: str | None = None, lora: str | None = None,
              dtype: str = "float32", guidance: float = flux_family.GUIDANCE, timesteps: str = "uniform",
              shift: float | None = None) -> flux_family.FluxTeacher:
    return twin(flux_loader(guidance, timesteps, shift), seed, path, lora, dtype)


def flux_loader(guidance: float, timesteps: str, shift: float | None,
           files: dict[str, str | None] | None = None) -> Loader:
    """How Flux builds itself under these settings, for `loading`'s rule."""

    def load_file(weights: WeightsFile, dtype: torch.dtype) -> flux_family.FluxTeacher:
        return load_flux(weights, dtype, files or {}, guidance, timesteps, shift)

    return Loader(
        flux_family.FAMILY,
        folder=lambda folder, dtype: flux_family.load_folder(folder, dtype, guidance, timesteps, shift),
        file=load_file,
        random=lambda dtype: flux_family._random_teacher(dtype, guidance, timesteps, shift),
        tiny=lambda seed: flux_family.tiny_teacher(seed, guidance, timesteps, shift),
        parts=files or {},
    )
