"""A classifier as an ONNX model: the dynamo exporter (torch.export), else the
TorchScript-based one; a dynamic batch axis and the metadata in `metadata_props`."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ablate.core.errors import AblateError, first_line
from ablate.export.metadata import INPUT_NAME, METADATA_KEY, OUTPUT_NAME, encode
from ablate.export.tracing import traceable

# What the dynamo exporter's op library targets natively (no version conversion), and what
# onnxruntime has run since 1.14
OPSET = 18
PROTOBUF_LIMIT = 2**31 - 1  # one .onnx file holds at most 2 GB (else external data files)
DYNAMO, LEGACY = "dynamo", "torchscript-based"


def onnx_bytes(classifier: nn.Module, example: torch.Tensor,
               meta: dict[str, Any]) -> tuple[bytes, str, list[str]]:
    """(model bytes, exporter, notes). The dynamo exporter first (torch's default, which
    handles every encoder we ship); the TorchScript-based one when it fails, said in a note."""
    notes: list[str] = []
    try:
        proto, exporter = _dynamo(classifier, example), DYNAMO
    except Exception as err:  # the exporter raises many types; the fallback decides
        reason = first_line(err)
        try:
            proto, exporter = _legacy(classifier, example), LEGACY
        except Exception as err2:
            raise AblateError(f"cannot export to ONNX: the dynamo exporter failed ({reason}), "
                              f"and the TorchScript-based one too ({first_line(err2)}); "
                              "try --format torchscript") from None
        notes.append(f"note: the dynamo ONNX exporter failed ({reason}); "
                     f"used the TorchScript-based exporter (opset {OPSET})")
    entry = proto.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = encode({**meta, "exporter": exporter, "opset": OPSET})
    if proto.ByteSize() > PROTOBUF_LIMIT:
        raise AblateError("the model is over 2 GB, more than one .onnx file holds; "
                          "use --format torchscript")
    return proto.SerializeToString(), exporter, notes


def _dynamo(classifier: nn.Module, example: torch.Tensor):  # noqa: ANN202 (onnx.ModelProto)
    batch = torch.export.Dim("batch")
    with _quiet():
        program = torch.onnx.export(
            classifier, (example,), None, dynamo=True, opset_version=OPSET,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], external_data=False,
            dynamic_shapes={"images": {0: batch}}, verbose=False)
    return program.model_proto


def _legacy(classifier: nn.Module, example: torch.Tensor):  # noqa: ANN202 (onnx.ModelProto)
    import onnx  # lazy: an extra (ablate[export])

    buffer = io.BytesIO()
    with _quiet(), traceable():
        torch.onnx.export(
            classifier, (example,), buffer, dynamo=False, opset_version=OPSET,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    return onnx.load_from_string(buffer.getvalue())


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters print progress and log optimiser remarks; the CLI prints its own lines."""
    loggers = [logging.getLogger(name) for name in ("onnxscript", "torch.onnx", "torch.export")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)
