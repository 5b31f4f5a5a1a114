"""What lets torch.jit.trace (TorchScript, and the TorchScript-based ONNX exporter) follow
our encoders: the dynamo exporter needs none of it."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from unittest import mock

import torch

from ablate.model import backbone


def _as_number_round(value: object, *digits: int) -> object:
    """round() of a traced size: a ViT's grid side, which depends on the image size alone."""
    if isinstance(value, torch.Tensor):
        value = float(value)
    return round(value, *digits)


@contextlib.contextmanager
def traceable() -> Iterator[None]:
    """Tracing sees tensor sizes as tensors, and TimmBackbone.features takes the ViT grid's
    side as `int(round(n ** 0.5))`, which a tensor refuses. The side follows from the fixed
    image size of an exported file, so reading it as a constant is exact (the batch stays
    dynamic); the parity check runs two batch sizes to prove it. No gradients, and tracer
    warnings about those constants (and torch.jit's deprecation) are silenced."""
    with (mock.patch.object(backbone, "round", _as_number_round, create=True),
          warnings.catch_warnings(), torch.no_grad()):
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 deprecates torch.jit
        yield
