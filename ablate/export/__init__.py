"""`ablate export`: a trained run's detector (encoder + head) as one self-describing file.

    from ablate.export import export_run, load_exported
    result = export_run("runs/r", "onnx", "detector.onnx")   # checked against the run
    model = load_exported("detector.onnx")                  # model.metadata, model(images)

Modules, one job each: `formats` (names, suffixes and the extra each needs; torch-free),
`metadata` (the JSON every file carries), `tracing` (what makes our encoders traceable),
`to_onnx` and `to_torchscript` (a classifier -> the bytes of a file), `load` (a file ->
`ExportedModel`), `parity` (the file against the PyTorch classifier), `run` (`export_run`),
`cli` (the command). This file stays import-light: the CLI loads it for every command.
"""

from __future__ import annotations

from typing import Any

from ablate.export.formats import FORMATS, SUFFIXES

__all__ = ["FORMATS", "SUFFIXES", "ExportResult", "ExportedModel", "export_run",
           "load_exported"]


def __getattr__(name: str) -> Any:
    if name in ("export_run", "ExportResult"):
        # lazy: loads torch only when used
        from ablate.export import run

        return getattr(run, name)
    if name in ("load_exported", "ExportedModel"):
        # lazy: loads torch only when used
        from ablate.export import load

        return getattr(load, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
