"""Fitted twins' and LoRA adapters' files, and the identity checks that tie an adapter to the
exact teacher it was trained on (`ablate teachers fit / adapt` write them; every family's
registry entry reads them through `with_lora`).

LoRA targets the attention projections of every block of the teacher's denoiser: a UNet's
transformer blocks, an SD3/Flux transformer's joint and single blocks alike.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ablate.core.errors import AblateError, first_line
from ablate.core.names import ADAPTER_META, ADAPTER_WEIGHTS
from ablate.core.paths import TEACHERS_DIR
from ablate.model.teachers.base import Teacher, parse_dtype

log = logging.getLogger(__name__)

ADAPTER_NAME = "ablate"
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # attention projections of every block
_PROBE_TENSORS, _PROBE_VALUES = 64, 4


def stored_path(value: str | Path, what: str) -> Path:
    """`value` as a path, else as a name under results/teachers/ (as `ablate teachers list` shows)."""
    path = Path(value).expanduser()
    if path.exists():
        return path
    if (TEACHERS_DIR / str(value)).exists():
        return TEACHERS_DIR / str(value)
    raise AblateError(
        f"{what} {value} does not exist, as a path or under {TEACHERS_DIR}/; "
        "see `ablate teachers list`"
    )


def in_dtype(teacher: Teacher, dtype: str) -> Teacher:
    """The twin in `dtype` (built and LoRA-fused in fp32 first): tests and CPU runs of the
    reduced-precision path that real teachers take with `teacher.dtype`."""
    torch_dtype = parse_dtype(dtype)
    if torch_dtype == torch.float32:
        return teacher
    nn.Module.to(teacher.denoiser, torch_dtype)
    nn.Module.to(teacher.vae, teacher.vae_dtype(torch_dtype))
    for name, buf in list(teacher.named_buffers(recurse=False)):  # the empty-prompt embedding
        if buf is not None and buf.is_floating_point():
            setattr(teacher, name, buf.to(torch_dtype))
    return teacher


def with_lora(teacher: Teacher, lora: str | None) -> Teacher:
    """Registry hook: the teacher with an adapter fused into its denoiser (plain, frozen modules)."""
    return load_lora(teacher, lora, fuse=True) if lora else teacher


def load_lora(
    teacher: Teacher, source: str | Path, fuse: bool = True, scale: float = 1.0
) -> Teacher:
    """Load an adapter (folder or .safetensors, diffusers/PEFT format) into `teacher.denoiser`.

    fuse=True merges it into the denoiser's weights and removes the PEFT wrappers, so the guide's
    ControlNet copy and the speed are those of a plain model. fuse=False keeps it
    as PEFT adapter "ablate" (`teacher.denoiser.disable_adapters()` then gives the base exactly).
    An `ablate_adapter.json` beside the weights names the base; a mismatch is an AblateError.
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    where = stored_path(source, "teacher.lora")
    file = where / ADAPTER_WEIGHTS if where.is_dir() else where
    if file.suffix != ".safetensors" or not file.is_file():
        raise AblateError(
            f"teacher.lora {where} is neither an adapter folder (with {ADAPTER_WEIGHTS}) nor a "
            ".safetensors file; create one with `ablate teachers adapt`"
        )
    meta_file = file.parent / ADAPTER_META
    if meta_file.is_file():
        check_adapter_base(teacher, read_json(meta_file), where)
    else:
        log.warning("adapter %s has no %s: its base teacher is not checked", file, ADAPTER_META)
    try:
        state = load_file(str(file))
        with safe_open(str(file), "pt") as handle:
            header = handle.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise AblateError(f"cannot read adapter {file}: {err}".splitlines()[0]) from None
    lora_config = (
        json.loads(header["lora_adapter_metadata"]) if "lora_adapter_metadata" in header else None
    )
    prefix = teacher.denoiser_name + "."  # pipeline layout: unet.<module>.lora_A.weight
    if any(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        lora_config = {k[len(prefix):]: v for k, v in (lora_config or {}).items()
                       if k.startswith(prefix)}
    if not any(".lora_A." in k for k in state):
        from diffusers.utils import convert_unet_state_dict_to_peft

        state = convert_unet_state_dict_to_peft(state)
    _check_lora_shapes(teacher, state, file)
    unet = teacher.denoiser
    try:
        unet.load_lora_adapter(
            state, prefix=None, adapter_name=ADAPTER_NAME, metadata=lora_config or None
        )
    except (ValueError, RuntimeError, KeyError, TypeError) as err:
        first = first_line(err)
        raise AblateError(
            f"cannot load adapter {file} into teacher {teacher.name}: {first}"
        ) from None
    if fuse:
        unet.fuse_lora(lora_scale=scale, adapter_names=[ADAPTER_NAME])
        unet.unload_lora()  # PEFT wrappers -> plain modules holding the merged weights
    elif scale != 1.0:
        unet.set_adapters(ADAPTER_NAME, scale)
    teacher.requires_grad_(False)  # the adapter is part of the frozen teacher
    meta = read_json(meta_file) if meta_file.is_file() else {}
    origin = dict(getattr(teacher, "origin", None) or {})
    teacher.origin = {**origin, "lora": str(file), "lora_key": meta.get("key"), "lora_fused": fuse}
    return teacher


def check_adapter_base(teacher: Teacher, meta: dict[str, Any], where: str | Path) -> None:
    """One-line AblateError unless `teacher` is the teacher the adapter was trained on."""
    base = meta.get("base") or {}
    label = base_label(base)
    unset = (
        " teacher.path=null" if not base.get("path") and getattr(teacher, "origin", None) else ""
    )
    use = f"use {base_override(base)}{unset} teacher.lora={where}"
    if base.get("family") != teacher.family:
        raise AblateError(
            f"adapter {where} was trained for {base.get('family')} teachers (base {label}), "
            f"not {teacher.family} (teacher {teacher.name}); {use}"
        )
    expected, found = base.get("unet") or {}, denoiser_fingerprint(teacher.denoiser)
    if expected.get("arch") != found["arch"]:
        raise AblateError(
            f"adapter {where} was trained on base {label}, whose {_net(teacher)} architecture "
            "differs from "
            f"teacher {teacher.name}'s; {use}"
        )
    if not fingerprints_match(expected, found):
        raise AblateError(
            f"adapter {where} was trained on other {_net(teacher)} weights (base {label}, fingerprint "
            f"{expected.get('weights')}) than teacher {teacher.name} has ({found['weights']}); {use}"
        )


def base_label(base: dict[str, Any]) -> str:
    """'tiny-sd15 seed 0', 'sd15 from /models/sd15', ... for messages and listings."""
    name = base.get("teacher", "?")
    if base.get("path"):
        return f"{name} from {base['path']}"
    if base.get("random_init"):
        return f"{name} random_init"
    return f"{name} seed {base.get('seed', 0)}" if str(name).startswith("tiny-") else str(name)


def base_override(base: dict[str, Any]) -> str:
    """Recipe overrides that rebuild an adapter's base teacher."""
    parts = [f"teacher={base.get('teacher', '?')}"]
    if base.get("path"):
        parts.append(f"teacher.path={base['path']}")
    elif base.get("random_init"):
        parts.append("teacher.random_init=true")
    elif str(base.get("teacher", "")).startswith("tiny-"):
        parts.append(f"teacher.seed={base.get('seed', 0)}")
    return " ".join(parts)


@torch.no_grad()
def denoiser_fingerprint(unet: nn.Module) -> dict[str, Any]:
    """Cheap identity of UNet weights: an architecture hash and a probe of sampled values.

    Sampling 256 values instead of hashing every byte keeps it instant for SDXL; the probe is
    compared with a tolerance (`fingerprints_match`), so fp16/bf16 copies of the same weights
    match. PEFT wrappers are seen through (`base_layer`), adapter tensors ignored.
    """
    import hashlib

    state = {
        k.replace(".base_layer.", "."): v for k, v in unet.state_dict().items() if "lora_" not in k
    }
    names = sorted(state)
    arch = "\n".join(f"{k}:{tuple(state[k].shape)}" for k in names)
    weights = [k for k in names if state[k].ndim >= 2]
    count = min(_PROBE_TENSORS, len(weights))
    picks = sorted({round(i * (len(weights) - 1) / max(count - 1, 1)) for i in range(count)})
    probe: list[float] = []
    for i in picks:
        flat = state[weights[i]].reshape(-1)
        n = flat.numel()
        index = torch.tensor([(n * (j + 1)) // (_PROBE_VALUES + 1) for j in range(_PROBE_VALUES)])
        probe += flat[index.clamp(max=n - 1)].float().tolist()
    blob = torch.tensor(probe, dtype=torch.float32).numpy().tobytes()
    return {
        "arch": hashlib.sha256(arch.encode()).hexdigest()[:16],
        "weights": hashlib.sha256(blob).hexdigest()[:16],
        "probe": probe,
    }


def fingerprints_match(expected: dict[str, Any], found: dict[str, Any]) -> bool:
    """Same architecture and the same sampled weights up to half-precision rounding."""
    if expected.get("arch") != found.get("arch"):
        return False
    if expected.get("weights") == found.get("weights"):
        return True
    a, b = expected.get("probe") or [], found.get("probe") or []
    return len(a) == len(b) > 0 and torch.allclose(
        torch.tensor(a), torch.tensor(b), rtol=1e-2, atol=1e-5
    )


def _check_lora_shapes(teacher: Teacher, state: dict[str, Tensor], file: Path) -> None:
    """Every lora_A/lora_B must sit on an existing layer of matching width (one-line error)."""
    modules = dict(teacher.denoiser.named_modules())
    for key, tensor in state.items():
        part = ".lora_A." if ".lora_A." in key else ".lora_B." if ".lora_B." in key else None
        if part is None:
            continue
        name = key.split(part)[0]
        weight = getattr(modules.get(name), "weight", None)
        if not isinstance(weight, Tensor):
            raise AblateError(
                f"adapter {file} does not fit teacher {teacher.name}: it adapts {name}, which "
                f"that {_net(teacher)} lacks (an adapter of another family or size?)"
            )
        ok = (
            tensor.shape[1] == weight.shape[1]
            if part == ".lora_A."
            else (tensor.shape[0] == weight.shape[0])
        )
        if not ok:
            raise AblateError(
                f"adapter {file} does not fit teacher {teacher.name}: {name} is "
                f"{tuple(weight.shape)} there, the adapter expects other widths"
            )


def _net(teacher: Teacher) -> str:
    return "UNet" if teacher.denoiser_name == "unet" else "transformer"


def read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise AblateError(f"cannot read {file}: {err}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise AblateError(f"{file} is not a JSON object")
    return data


unet_fingerprint = denoiser_fingerprint  # its earlier name (the JSON key stays "unet")
