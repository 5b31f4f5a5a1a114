"""The export formats, the file suffixes that name them and the extra packages each needs;
torch-free, so the CLI and every error about them stay light."""

from __future__ import annotations

import importlib
from pathlib import Path

from ablate.core.errors import AblateError

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": (".onnx",), "torchscript": (".pt", ".ts", ".torchscript")}
DEFAULT_NAME = {"onnx": "model.onnx", "torchscript": "model.pt"}
# writing an ONNX file needs the exporter's packages and the runtime the parity check uses;
# reading one needs only the runtime; TorchScript is torch itself
EXPORT_NEEDS = {"onnx": ("onnx", "onnxruntime", "onnxscript"), "torchscript": ()}
LOAD_NEEDS = {"onnx": ("onnxruntime",), "torchscript": ()}
INSTALL = "pip install 'ablate[export]'"


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise AblateError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    return fmt


def format_of(path: Path) -> str:
    """The format a file's suffix names (`.onnx`; `.pt`, `.ts`, `.torchscript`)."""
    for fmt, suffixes in SUFFIXES.items():
        if path.suffix.lower() in suffixes:
            return fmt
    raise AblateError(f"{path}: not an exported model file (the suffix says the format: "
                      f"{_all_suffixes()})")


def check_out(fmt: str, out: Path) -> Path:
    """Where the file goes, refused when its suffix names another format (a reader picks
    the runtime by suffix) or when it is a folder."""
    if out.suffix.lower() not in SUFFIXES[fmt]:
        raise AblateError(f"--out {out}: {fmt} files end in {' or '.join(SUFFIXES[fmt])} "
                          f"(readers pick the runtime by suffix)")
    if out.is_dir():
        raise AblateError(f"--out {out} is a folder; give a file name such as "
                          f"{out / DEFAULT_NAME[fmt]}")
    return out


def require(modules: tuple[str, ...], doing: str) -> None:
    """One line naming the extra when a package `doing` needs is not installed."""
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise AblateError(f"{doing} needs {_join(modules)} (missing: {', '.join(missing)}): "
                          f"{INSTALL}")


def _join(names: tuple[str, ...]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _all_suffixes() -> str:
    return "; ".join(f"{' '.join(s)} {fmt}" for fmt, s in SUFFIXES.items())
