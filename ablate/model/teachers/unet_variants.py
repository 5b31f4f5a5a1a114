"""The UNet teachers' registry entries (slot `teacher`) and the models built in code.

    sd15 / sd21 / sdxl    real weights from a local diffusers folder or one .safetensors/.ckpt
                          file (nothing is downloaded), or `random_init=True` for the
                          full-size architecture with seeded random weights (speed/memory runs)
    tiny-sd15 / -sd21 / -sdxl   CPU-sized twins with the same block families, conditioning,
                          context width and VAE factor (8) as the real family; seeded random
                          weights, or `path=` a twin fitted on real faces (`ablate teachers fit`)
Every variant takes `lora=`: a LoRA adapter from `ablate teachers adapt`, checked against its
recorded base teacher and fused into the UNet (see `lora.load_lora`).

Which of these a call builds, and every message about a bad path, is `loading`'s one rule;
a family hands it `loader(family)`.
"""

from __future__ import annotations

from functools import partial

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from ablate.model.teachers import unet_families as arch
from ablate.model.teachers.base import Teacher, fill_random, on_meta
from ablate.model.teachers.loading import Loader, real_teacher, twin
from ablate.model.teachers.unet import UNetTeacher
from ablate.model.teachers.unet_file import load_file
from ablate.model.teachers.unet_folder import load_folder
from ablate.registry import TEACHERS


def loader(family: str) -> Loader:
    """How a UNet family builds itself, for `loading`'s rule."""
    return Loader(
        family,
        folder=partial(load_folder, family),
        file=partial(load_file, family),
        random=partial(random_teacher, family),
        tiny=partial(tiny_teacher, family),
    )


# --- registry entries ----------------------------------------------------------------------------


@TEACHERS.register("sd15", "Stable Diffusion 1.5 (paper): eps-prediction, 768-d CLIP context")
def sd15(
    path: str | None = None,
    random_init: bool = False,
    dtype: str = "float32",
    lora: str | None = None,
) -> Teacher:
    return real_teacher(loader("sd15"), path, random_init, dtype, lora)


@TEACHERS.register("sd21", "Stable Diffusion 2.1 (768-v): v-prediction, 1024-d OpenCLIP context")
def sd21(
    path: str | None = None,
    random_init: bool = False,
    dtype: str = "float32",
    lora: str | None = None,
) -> Teacher:
    return real_teacher(loader("sd21"), path, random_init, dtype, lora)


@TEACHERS.register("sdxl", "SDXL base: 2048-d context + pooled/time-id added conditioning")
def sdxl(
    path: str | None = None,
    random_init: bool = False,
    dtype: str = "float32",
    lora: str | None = None,
) -> Teacher:
    return real_teacher(loader("sdxl"), path, random_init, dtype, lora)


@TEACHERS.register("tiny-sd15", "CPU-sized SD 1.5 twin, random or fitted (path=), 768-d context")
def tiny_sd15(
    seed: int = 0, path: str | None = None, lora: str | None = None, dtype: str = "float32"
) -> Teacher:
    return twin(loader("sd15"), seed, path, lora, dtype)


@TEACHERS.register("tiny-sd21", "CPU-sized SD 2.1 twin, random or fitted (path=), v-prediction")
def tiny_sd21(
    seed: int = 0, path: str | None = None, lora: str | None = None, dtype: str = "float32"
) -> Teacher:
    return twin(loader("sd21"), seed, path, lora, dtype)


@TEACHERS.register("tiny-sdxl", "CPU-sized SDXL twin, random or fitted (path=), text_time cond.")
def tiny_sdxl(
    seed: int = 0, path: str | None = None, lora: str | None = None, dtype: str = "float32"
) -> Teacher:
    return twin(loader("sdxl"), seed, path, lora, dtype)


def build_teacher(family: str, path: str | None, random_init: bool, dtype: str) -> Teacher:
    """Real-family teacher from a folder, a single file, or full-size random weights (no LoRA)."""
    return real_teacher(loader(family), path, random_init, dtype, None)


def tiny_or_fitted(family: str, seed: int = 0, path: str | None = None) -> Teacher:
    """The seeded random twin, or (path set) a twin saved by `ablate teachers fit`; seed unused then."""
    return twin(loader(family), seed, path, None, "float32")


# --- built in code -------------------------------------------------------------------------------


def tiny_teacher(family: str, seed: int = 0) -> Teacher:
    """Seeded CPU-sized twin; the global RNG is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**arch._TINY_UNET_COMMON, **arch._TINY_UNET[family])
        vae = AutoencoderKL(**arch._TINY_VAE, scaling_factor=arch.LATENT_SCALE[family])
    context, pooled = arch.random_context(family, seed)
    return UNetTeacher(
        f"tiny-{family}", family, unet, vae, arch.scheduler(arch.PREDICTION[family]), context,
        pooled
    )


def random_teacher(family: str, dtype: torch.dtype) -> Teacher:
    """Full-size architecture with seeded random weights, built on meta then filled fast."""
    generator = torch.Generator().manual_seed(0)
    unet = fill_random(on_meta(UNet2DConditionModel, arch._UNET[family], dtype), generator)
    vae = fill_random(on_meta(AutoencoderKL, arch._VAE[family], arch.vae_dtype(family, dtype)),
                      generator)
    context, pooled = arch.random_context(family, 0)
    return UNetTeacher(family, family, unet, vae, arch.scheduler(arch.PREDICTION[family]),
                       context, pooled)
