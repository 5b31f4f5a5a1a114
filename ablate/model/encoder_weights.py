"""Load a local pretrained weights file into a timm encoder built with `num_classes=0`.

Accepts timm's own layout (including the hub's `model.safetensors`) and the original
layouts timm converts (OpenAI/open_clip CLIP, DINOv2, DINOv3, Perception Encoder) through
the `checkpoint_filter_fn` of the model's module. A file that does not fit is refused with
one line naming the first tensor that differs, before anything in the model changes, so a
frozen base can never be silently half-loaded. User files are never unpickled.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from ablate.core.errors import AblateError, first_line
from ablate.model.hf_clip import hf_clip_to_timm, is_hf_clip

TORCH_SUFFIXES = (".pth", ".pt", ".bin")
CONTAINER_KEYS = ("state_dict", "model", "module")  # training scripts' wrappers
# heads an encoder built for ablate leaves out (PE's attention pool: the detector's head reads
# the class token or the grid, never it)
HEAD_PREFIXES = ("head.", "fc.", "attn_pool.")
# timm's converters resample position embeddings to the model's grid (another image size
# is a legitimate use of the same weights); every other same-named tensor must match as is.
RESAMPLED = ("pos_embed", "relative_position")
SHOWN = 3  # names quoted in a missing/unexpected message


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """safetensors or weights_only torch file; unwraps a {'state_dict': ...} / {'model': ...}
    / {'module': ...} container and a leading 'module.' prefix (DDP), so the usual ways of
    saving weights all read the same."""
    path = Path(path)
    if not path.is_file():
        raise AblateError(f"backbone.pretrained_path {path} does not exist; give a local weights file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            data: object = load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises its own error type on a bad header
            raise AblateError(
                f"backbone.pretrained_path {path} is not a readable safetensors file "
                f"({first_line(err)}); re-save it with safetensors.torch.save_file"
            ) from None
    elif suffix in TORCH_SUFFIXES:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle.UnpicklingError for objects, RuntimeError for a bad zip
            raise AblateError(
                f"backbone.pretrained_path {path} is not a weights-only torch file "
                f"({_load_reason(err)}); save model.state_dict() or convert it to .safetensors"
            ) from None
    else:
        raise AblateError(
            f"backbone.pretrained_path {path} has suffix {suffix or '(none)'!r}; give a "
            f".safetensors or {'/'.join(TORCH_SUFFIXES)} file"
        )
    return _flat_tensors(data, path)


def _load_reason(err: Exception) -> str:
    """What torch refused, without its advice to load the file unsafely."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
    if found:
        return f"it holds a Python object, {found.group(1)}, that is never unpickled here"
    return re.sub(r"\x1b\[[0-9;]*m", "", first_line(err))


def _flat_tensors(data: object, path: Path) -> dict[str, Tensor]:
    """The tensor dict inside `data`, container and 'module.' prefix removed."""
    while isinstance(data, Mapping):
        inner = next((data[k] for k in CONTAINER_KEYS if isinstance(data.get(k), Mapping)), None)
        if inner is None:
            break
        data = inner
    if not isinstance(data, Mapping) or not data:
        raise AblateError(
            f"backbone.pretrained_path {path} holds no tensors by name ({type(data).__name__}); "
            "save model.state_dict()"
        )
    odd = [k for k, v in data.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if odd:
        raise AblateError(
            f"backbone.pretrained_path {path} is not a flat dict of tensors ({len(odd)} other "
            f"entries, e.g. {odd[0]!r}); save model.state_dict() of the encoder alone"
        )
    out = dict(data)
    if all(k.startswith("module.") for k in out):
        out = {k[len("module.") :]: v for k, v in out.items()}
    return out


def _filter_fn(model: nn.Module) -> Callable | None:
    """timm's converter for the model's class, where its module defines one."""
    return getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)


def _model_name(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or type(model).__name__


def _drop_head(state: dict[str, Tensor], model: nn.Module, expected: Mapping) -> dict[str, Tensor]:
    """The file's classifier is not part of an encoder built with num_classes=0."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    prefixes = tuple(n + "." for n in names) + HEAD_PREFIXES

    def is_head(key: str) -> bool:
        return key not in expected and (key in names or key.startswith(prefixes))

    return {k: v for k, v in state.items() if not is_head(k)}


def _first_mismatch(state: Mapping, expected: Mapping, skip: tuple[str, ...] = ()) -> str | None:
    """The first tensor, in the model's order, whose shape in `state` differs."""
    for key, want in expected.items():
        if key in state and tuple(state[key].shape) != tuple(want.shape):
            if not any(s in key for s in skip):
                return key
    return None


def _names(keys: list[str]) -> str:
    more = f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else ""
    return ", ".join(keys[:SHOWN]) + more


def load_encoder_weights(model: nn.Module, path: Path, preset: str) -> None:
    """Converts (checkpoint_filter_fn where the model's module has one), drops the
    classifier head's keys, checks every shape and name against model.state_dict(), and
    only then loads with strict=True: a wrong file fails on one line, the model untouched."""
    path = Path(path)
    name = _model_name(model)
    which = preset if preset == name else f"{preset} ({name})"
    about = f"backbone.pretrained_path {path} does not fit backbone {which}"
    hint = ("is it the weights of another encoder? (the comment in the backbone's config file "
            "names the weights it expects)")
    expected = model.state_dict()

    def shape_error(key: str, found: Tensor) -> AblateError:
        return AblateError(
            f"{about}: {key} is {tuple(found.shape)} in the file but "
            f"{tuple(expected[key].shape)} in the model; {hint}"
        )

    raw = read_state_dict(path)
    if is_hf_clip(raw):  # transformers' layout: timm has no converter for it
        raw = hf_clip_to_timm(raw)
    # Before converting: timm's converter would silently resample another patch size (and
    # fails obscurely on another family's position embeddings), hiding the real cause.
    key = _first_mismatch(raw, expected, skip=RESAMPLED)
    if key is not None:
        raise shape_error(key, raw[key])

    state = raw
    convert = _filter_fn(model)
    if convert is not None:
        try:
            state = convert(dict(raw), model)  # a copy: some converters pop keys
        except Exception as err:  # KeyError/RuntimeError/... on another family's layout
            raise AblateError(
                f"backbone.pretrained_path {path} is not in a format the timm converter of "
                f"backbone {which} knows ({type(err).__name__}: {first_line(err)}); give it "
                "the weights its config file's comment names"
            ) from None
    state = _drop_head(dict(state), model, expected)

    key = _first_mismatch(state, expected)
    if key is not None:
        raise shape_error(key, state[key])
    missing = [k for k in expected if k not in state]
    if missing:
        raise AblateError(
            f"{about}: the file lacks {len(missing)} tensor(s) the model needs "
            f"({_names(missing)}); {hint}"
        )
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise AblateError(
            f"{about}: the file has {len(unexpected)} tensor(s) the model does not "
            f"({_names(unexpected)}); {hint}"
        )
    model.load_state_dict(state, strict=True)
