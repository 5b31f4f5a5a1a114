"""Where a teacher's weights come from: one rule for every family (sd15, sd21, sdxl, sd3, flux
and their tiny-* twins). A family's registry entry only hands over a `Loader` (how it builds
itself from a folder, from one weights file, with random weights, from a seed); the order of
the choices, the messages for bad paths, the dtype and the LoRA step are written here, once.

Real teachers (`real_teacher`: sd15, sd21, sdxl, sd3, flux):

    1. teacher.path and random_init=true together     refused
    2. random_init=true                               the full-size architecture, seeded random
    3. no teacher.path                                refused: nothing is downloaded
    4. teacher.path a folder                          a diffusers-layout folder
    5. teacher.path a weights file                    one original-layout file (`WeightsFile`)
    6. anything else (missing, other suffix)          refused
    then the part-file settings (sd3 / flux vae_path, clip_l_path, ...) are refused unless the
    teacher came from a single file, which they complete; then `teacher.lora` is fused in.
    The denoiser is built in `teacher.dtype` (parsed first, so a bad name fails at once).

Twins (`twin`: tiny-sd15, tiny-sd21, tiny-sdxl, tiny-sd3, tiny-flux):

    1. no teacher.path                                built in code from `seed`
    2. teacher.path (a folder, or a folder's name     a twin `ablate teachers fit` wrote; its
       under results/teachers/)                       family is checked and `seed` is unused
    then `teacher.lora`, then `teacher.dtype`: twins are built and fused in fp32 first.

Pickles: a `.ckpt/.pt/.pth/.bin` file is read by `torch.load(weights_only=True)` for every
family and every part, never by pickle's own unpickler: torch's restricted one only rebuilds
tensors and plain containers, so a file that holds anything else (code, classes) is refused
before any of it runs. The original SD 1.x / 2.x releases are `.ckpt` files; SD3 and Flux ship
`.safetensors`, but a state dict saved with `torch.save` is the same tensors and is read the
same way. Before torch 2.6 the restricted unpickler could be made to run code
(CVE-2025-32434), so there pickles are refused, for every family alike.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ablate.core.errors import AblateError, first_line
from ablate.core.names import FITTED_META, WEIGHT_FILE_SUFFIXES, WEIGHT_FILES
from ablate.model.teachers.base import Teacher, parse_dtype, transformer_family
from ablate.model.teachers.lora import in_dtype, read_json, stored_path, with_lora
from ablate.model.teachers.unet_families import family_of

SAFE_UNPICKLER = (2, 6)  # torch's weights_only unpickler can be trusted from 2.6 (CVE-2025-32434)
SCALE_KEYS = ("scale_weight", "weight_scale", "scaled_fp8")  # ComfyUI's scaled fp8 files
UNET_KEY = "model.diffusion_model.input_blocks.0.0.weight"
DIFFUSION_PREFIX = "model.diffusion_model."
SD3_KEY = "joint_blocks.0.context_block.adaLN_modulation.1.bias"
FLUX_KEY = "double_blocks.0.img_attn.norm.key_norm.scale"
LDM_FAMILY = {"v1": "sd15", "v2": "sd21", "xl_base": "sdxl"}  # diffusers' model types


@dataclass(frozen=True)
class Loader:
    """What one family supplies, and nothing else: each callable builds a teacher whose
    denoiser is in the dtype given (twins: fp32). `parts` are the settings that name separate
    part files (sd3 / flux vae_path, ...): they only complete a single file."""

    family: str
    folder: Callable[[Path, torch.dtype], Teacher]  # a diffusers-layout folder
    file: Callable[[WeightsFile, torch.dtype], Teacher]  # one original-layout weights file
    random: Callable[[torch.dtype], Teacher]  # the full-size architecture, seeded random
    tiny: Callable[[int], Teacher]  # the CPU twin from a seed
    parts: Mapping[str, str | None] = field(default_factory=dict)


def real_teacher(loader: Loader, path: str | None, random_init: bool, dtype: str,
                 lora: str | None) -> Teacher:
    """A real-weights teacher by the decision order of this module's docstring."""
    family, torch_dtype = loader.family, parse_dtype(dtype)
    given = [f"teacher.{key}" for key, value in loader.parts.items() if value]
    if path and random_init:
        raise AblateError(f"teacher {family}: give teacher.path or random_init=true, not both")
    if random_init:
        if given:
            raise AblateError(f"teacher {family}: {', '.join(given)} only complete a single-file "
                              "teacher.path; drop it with random_init=true")
        return with_lora(loader.random(torch_dtype), lora)
    if not path:
        raise AblateError(f"teacher {family} needs teacher.path=/local/folder (diffusers layout) "
                          "or a .safetensors file; nothing is downloaded. Use "
                          f"teacher=tiny-{family} for CPU runs")
    source = Path(path).expanduser()
    if source.is_dir():
        if given:
            raise AblateError(f"teacher {family}: {', '.join(given)} only complete a single-file "
                              f"teacher.path; folder {source} has its own parts, so drop it")
        return with_lora(loader.folder(source, torch_dtype), lora)
    if not source.exists():
        raise AblateError(f"teacher.path {source} does not exist")
    if source.suffix not in WEIGHT_FILE_SUFFIXES:
        raise AblateError(f"teacher.path {source} is neither a diffusers-layout folder nor a "
                          f"{WEIGHT_FILES} file")
    return with_lora(loader.file(WeightsFile(source, "teacher.path"), torch_dtype), lora)


def twin(loader: Loader, seed: int, path: str | None, lora: str | None, dtype: str) -> Teacher:
    """A tiny twin by the decision order of this module's docstring: seeded, or a fitted
    folder; then LoRA, then the compute dtype (built and fused in fp32 first)."""
    family, name = loader.family, f"tiny-{loader.family}"
    parse_dtype(dtype)  # a bad name fails before anything is built
    if not path:
        return in_dtype(with_lora(loader.tiny(seed), lora), dtype)
    folder = stored_path(path, "teacher.path")
    if not folder.is_dir():
        raise AblateError(f"teacher.path {folder} of {name} must be a folder written by "
                          "`ablate teachers fit` (diffusers layout), not a file")
    found = folder_family(folder)
    if found is not None and found != family:
        raise AblateError(f"teacher folder {folder} holds {found} weights, not {name}; "
                          f"use teacher=tiny-{found}")
    teacher = loader.folder(folder, torch.float32)
    teacher.name = name
    meta = folder / FITTED_META
    teacher.origin = {"path": str(folder),
                      "fit": read_json(meta).get("key") if meta.is_file() else None}
    return in_dtype(with_lora(teacher, lora), dtype)


# --- what a folder or a file holds ----------------------------------------------------------------


def folder_family(folder: Path) -> str | None:
    """The family of a diffusers-layout teacher folder (sd15, sd21, sdxl, sd3, flux), or None."""
    if (folder / "unet/config.json").is_file():
        return family_of(read_json(folder / "unet/config.json"))
    return transformer_family(folder)


def file_family(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """sd3 / flux / sd15 / sd21 / sdxl by a weights file's keys (diffusers' own test tells the
    UNet families apart, from shapes alone), None for anything else."""
    for prefix in (DIFFUSION_PREFIX, ""):
        if prefix + SD3_KEY in shapes:
            return "sd3"
        if prefix + FLUX_KEY in shapes:
            return "flux"
    if UNET_KEY in shapes:
        from diffusers.loaders.single_file_utils import infer_diffusers_model_type

        meta = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
        return LDM_FAMILY.get(infer_diffusers_model_type(meta))
    return None


# --- reading one weights file ---------------------------------------------------------------------


def check_file(file: Path, setting: str) -> None:
    """One line for a path that is not a weights file."""
    if not file.exists():
        raise AblateError(f"{setting} {file} does not exist")
    if file.is_dir():
        raise AblateError(f"{setting} {file} is a folder; it must be a {WEIGHT_FILES} file")
    if file.suffix not in WEIGHT_FILE_SUFFIXES:
        raise AblateError(f"{setting} {file} is not a {WEIGHT_FILES} file")


class WeightsFile:
    """One weights file, the only way a teacher reads one (`teacher.path` and every part
    file). Names and shapes are known at once; tensors are read per part (an SD3 file with T5
    inside is ~15 GB: only what is used is read). A .safetensors file is read through its
    header; a pickle through `torch.load(weights_only=True)`, memory-mapped when it is in
    torch's zip format, its `state_dict` entry when it has one (LDM checkpoints)."""

    def __init__(self, file: Path, setting: str) -> None:
        check_file(file, setting)
        self.file, self.where = file, f"{setting} {file}"
        self.step: int | None = None  # an LDM checkpoint's global_step (SD 2 base vs 768-v)
        if file.suffix == ".safetensors":
            self._tensors, self.shapes = self._open_safetensors()
        else:
            self._tensors, self.step = self._unpickle_tensors()
            self.shapes = {k: tuple(v.shape) for k, v in self._tensors.items()}
        scaled = next((k for k in self.shapes if k.endswith(SCALE_KEYS)), None)
        if scaled:  # the scales would be left out and the fp8 weights read unscaled
            raise AblateError(f"{self.where} is a scaled fp8 checkpoint ({scaled}), which is not "
                              "supported; use its fp16 / bf16 (or plain fp8) release")

    def _open_safetensors(self) -> tuple[object, dict[str, tuple[int, ...]]]:
        from safetensors import SafetensorError, safe_open

        try:
            handle = safe_open(str(self.file), framework="pt")
            return handle, {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
        except (SafetensorError, OSError) as err:
            raise AblateError(f"cannot read {self.where}: {first_line(err)}") from None

    def _unpickle_tensors(self) -> tuple[dict[str, Tensor], int | None]:
        if torch_version() < SAFE_UNPICKLER:
            raise AblateError(f"{self.where} is a pickle, which torch {torch.__version__} cannot "
                              "read as tensors only (CVE-2025-32434, fixed in torch 2.6); use "
                              "its .safetensors release, or torch >= 2.6")
        try:
            obj = torch.load(str(self.file), map_location="cpu", weights_only=True,
                             mmap=zipfile.is_zipfile(self.file))
        except pickle.UnpicklingError as err:
            found = re.search(r"Unsupported (global: GLOBAL \S+|operand \d+)", str(err))
            why = f" ({found.group(0)})" if found else ""
            raise AblateError(f"cannot read {self.where}: it holds more than tensors{why}, and "
                              "teachers read pickles as tensors only (unpickling objects can run "
                              "code); use the .safetensors release") from None
        except (RuntimeError, OSError, EOFError, ValueError) as err:
            raise AblateError(f"cannot read {self.where}: {first_line(err)}") from None
        step = obj.get("global_step") if isinstance(obj, dict) else None
        state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
        if not isinstance(state, dict):
            raise AblateError(f"cannot read {self.where}: it holds a {type(obj).__name__}, not a "
                              "state dict of tensors")
        tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, Tensor)}
        return tensors, step if isinstance(step, int) else None

    def _get(self, key: str) -> Tensor:
        tensors = self._tensors
        return tensors[key] if isinstance(tensors, dict) else tensors.get_tensor(key)

    def prefix(self, prefixes: tuple[str, ...]) -> str | None:
        """The first of `prefixes` some key starts with, else None."""
        return next((p for p in prefixes if any(k.startswith(p) for k in self.shapes)), None)

    def part(self, prefix: str, roots: tuple[str, ...] = ("",)) -> dict[str, Tensor]:
        """Tensors under `prefix` (cut off) whose rest starts with one of `roots`."""
        return {k[len(prefix):]: self._get(k) for k in self.shapes
                if k.startswith(prefix) and k[len(prefix):].startswith(roots)}

    def state(self) -> dict[str, Tensor]:
        """Every tensor, by its key in the file."""
        return self.part("")


def torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)
