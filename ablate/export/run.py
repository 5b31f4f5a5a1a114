"""`export_run`: a run folder's encoder + head to one file, checked against the run before it
is written, then written whole or not at all."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablate.checkpoint import load_classifier, resolve_run
from ablate.core.errors import AblateError
from ablate.core.files import write_atomic
from ablate.export.formats import DEFAULT_NAME, EXPORT_NEEDS, check_format, check_out, require
from ablate.export.load import open_exported
from ablate.export.metadata import run_metadata
from ablate.export.parity import Parity, check_parity, example, reference
from ablate.export.to_onnx import onnx_bytes
from ablate.export.to_torchscript import torchscript_bytes

WRITERS = {"onnx": onnx_bytes, "torchscript": torchscript_bytes}


@dataclass(frozen=True)
class ExportResult:
    path: Path
    format: str
    exporter: str  # "dynamo" / "torchscript-based" (ONNX), "torch.jit.trace"
    size_bytes: int
    parity: Parity
    metadata: dict[str, Any]  # as read back from the written bytes
    notes: tuple[str, ...]  # e.g. the ONNX exporter's fallback


def export_run(run: str | Path, fmt: str = "onnx", out: str | Path | None = None) -> ExportResult:
    """Export `run` (a run folder) as `fmt` to `out` (default <run>/model.onnx or model.pt).

    Every input is checked before the model loads. The classifier's logits on the parity
    images are taken before the exporter touches it; the file's bytes are read back by
    their runtime and must match them (`check_parity`) before anything is written, and are
    then written under a temporary name and renamed: a failed export leaves an existing file
    at `out` as it was."""
    fmt = check_format(fmt)
    folder = resolve_run(run)
    path = check_out(fmt, Path(out).expanduser() if out else folder / DEFAULT_NAME[fmt])
    require(EXPORT_NEEDS[fmt], f"ablate export --format {fmt}")
    classifier, cfg = load_classifier(folder)
    size = int(cfg.image_size)
    expected = reference(classifier, size)
    data, exporter, notes = WRITERS[fmt](classifier, example(size), run_metadata(folder, fmt))
    model = open_exported(data, fmt, str(path))
    parity = check_parity(model, expected)
    if not parity.ok:
        raise AblateError(f"{parity.line()}: the exported model does not reproduce run "
                          f"{folder.name}; nothing written to {path}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)
    except OSError as err:
        raise AblateError(f"cannot write {path} ({err.strerror or err})") from None
    return ExportResult(path, fmt, exporter, len(data), parity, model.metadata, tuple(notes))
