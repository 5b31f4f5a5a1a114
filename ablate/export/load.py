"""An exported file read back: its metadata, and a function from images to logits on the CPU.

Nothing is unpickled: an ONNX file is a protobuf, a TorchScript archive is read by
torch.jit.load (never torch.load)."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ablate.core.errors import AblateError, first_line
from ablate.export.formats import LOAD_NEEDS, format_of, require
from ablate.export.metadata import EXTRA_FILE, METADATA_KEY, decode


@dataclass(frozen=True)
class ExportedModel:
    """`model(images [N, 3, S, S] float in [-1, 1]) -> logits [N]` (float32, CPU);
    `metadata` is the dict `ablate export` wrote (ablate/export/metadata.py)."""

    name: str  # the file, for messages
    metadata: dict[str, Any]
    runtime: str  # "onnxruntime, CPU" or "torch.jit, CPU"
    _run: Callable[[torch.Tensor], torch.Tensor] = field(repr=False)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        size = int(self.metadata["image_size"])
        if not isinstance(images, torch.Tensor) or images.ndim != 4 \
                or tuple(images.shape[1:]) != (3, size, size):
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
            raise AblateError(f"{self.name} takes images [N, 3, {size}, {size}] in [-1, 1]; "
                              f"got {got}")
        images = images.detach().to("cpu", torch.float32).contiguous()
        if images.shape[0] == 0:
            return torch.zeros(0)
        return self._run(images).float().reshape(-1)


def load_exported(path: str | Path) -> ExportedModel:
    """The model in a file `ablate export` wrote; its suffix says the format (.onnx: ONNX
    through onnxruntime; .pt, .ts, .torchscript: TorchScript)."""
    file = Path(path).expanduser()
    fmt = format_of(file)
    if not file.is_file():
        raise AblateError(f"{path}: no such exported model file")
    return open_exported(file, fmt, str(path))


def open_exported(source: Path | bytes, fmt: str, name: str) -> ExportedModel:
    """A file, or the bytes about to be written as one (the parity check reads those)."""
    require(LOAD_NEEDS[fmt], f"reading a {fmt} model")
    return _onnx(source, name) if fmt == "onnx" else _torchscript(source, name)


def _onnx(source: Path | bytes, name: str) -> ExportedModel:
    import onnxruntime as ort  # lazy: an extra (ablate[export])

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    try:
        session = ort.InferenceSession(source if isinstance(source, bytes) else str(source),
                                       options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's own error types
        raise AblateError(f"{name} is not a readable ONNX model ({first_line(err)})") from None
    meta = decode(session.get_modelmeta().custom_metadata_map.get(METADATA_KEY), name)
    input_name = session.get_inputs()[0].name

    def run(images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {input_name: images.numpy()})[0])

    return ExportedModel(name, meta, "onnxruntime, CPU", run)


def _torchscript(source: Path | bytes, name: str) -> ExportedModel:
    extra = {EXTRA_FILE: ""}
    where = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 deprecates torch.jit
            module = torch.jit.load(where, map_location="cpu", _extra_files=extra)
    except Exception as err:  # not a TorchScript archive (e.g. a torch.save checkpoint)
        raise AblateError(f"{name} is not a TorchScript archive ({first_line(err)}); "
                          "export one with `ablate export --format torchscript`") from None
    meta = decode(extra[EXTRA_FILE], name)
    module.eval()

    def run(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(images)

    return ExportedModel(name, meta, "torch.jit, CPU", run)
