"""A classifier as a TorchScript archive: traced, with the metadata as an extra file."""

from __future__ import annotations

import io
import warnings
from typing import Any

import torch
from torch import nn

from ablate.core.errors import AblateError, first_line
from ablate.export.metadata import EXTRA_FILE, encode
from ablate.export.tracing import traceable

EXPORTER = "torch.jit.trace"


def torchscript_bytes(classifier: nn.Module, example: torch.Tensor,
                      meta: dict[str, Any]) -> tuple[bytes, str, list[str]]:
    """(archive bytes, exporter, notes). Traced rather than scripted: timm's encoders are
    not scriptable; the trace keeps the batch size dynamic (checked by the parity run)."""
    try:
        with traceable():
            module = torch.jit.trace(classifier, (example,), check_trace=False)
    except Exception as err:  # any tracer failure: one line naming the exporter
        raise AblateError(f"{EXPORTER} failed on this encoder ({first_line(err)}); "
                          "try --format onnx") from None
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 deprecates torch.jit
        torch.jit.save(module, buffer, _extra_files={EXTRA_FILE: encode(
            {**meta, "exporter": EXPORTER})})
    return buffer.getvalue(), EXPORTER, []
