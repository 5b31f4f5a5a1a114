"""What each slot's module must return, checked once at build time with a dummy input.

A plugin variant with the wrong output shape would otherwise fail mid-training with a
raw tensor error (`The size of tensor a (8) must match the size of tensor b (2)`) that
names neither the plugin nor the shape it owes. Each check runs one forward pass on
zeros, in eval mode and without gradients, so it changes no weight, no BatchNorm
statistic and no random stream: a recipe trains exactly as it would without it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from ablate.core.errors import AblateError
from ablate.plugins import LOOSE_FILE_PREFIX

BATCH = 2  # a batch of one would hide a module that drops or mixes up the batch axis


def _where(slot: str, name: str, module: nn.Module) -> str:
    """`filter variant 'x' (mypkg.variants.X)`; a loose-file plugin by its file name."""
    cls = type(module)
    origin = cls.__module__
    if origin.startswith(LOOSE_FILE_PREFIX):
        path = getattr(sys.modules.get(origin), "__file__", None)
        origin = Path(path).stem if path else origin
    return f"{slot} variant {name!r} ({origin}.{cls.__qualname__})"


def _dummy_forward(slot: str, name: str, module: nn.Module, shape: tuple[int, ...],
                   call: Callable[[Tensor], Tensor] | None = None) -> Tensor | None:
    """The module's output for zeros of `shape`, on its own device and dtype (None for a
    module sized on the meta device: it has nothing to run)."""
    param = next(module.parameters(), None)
    if param is not None and param.device.type == "meta":
        return None
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            x = torch.zeros(shape, device=device, dtype=dtype)
            return (call or module)(x)
    except Exception as err:  # noqa: BLE001  (a plugin can raise anything: name it, once)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AblateError(f"{_where(slot, name, module)} fails on a dummy input of shape "
                          f"{list(shape)}: {first}") from None
    finally:
        module.train(was_training)


def _expect(slot: str, name: str, module: nn.Module, found: Tensor | None,
            wanted: tuple[int, ...] | list[tuple[int, ...]], given: tuple[int, ...],
            what: str) -> None:
    if found is None:
        return
    options = wanted if isinstance(wanted, list) else [wanted]
    if not isinstance(found, Tensor) or tuple(found.shape) not in options:
        shape = list(found.shape) if isinstance(found, Tensor) else type(found).__name__
        expected = " or ".join(str(list(o)) for o in options)
        raise AblateError(f"{_where(slot, name, module)} returns {shape} for an input of "
                          f"shape {list(given)}; expected {expected} ({what})")


def check_backbone(name: str, backbone: nn.Module, image_size: int) -> None:
    """Images [B, 3, S, S] -> features [B, num_features, g, g], g = grid_size(S)."""
    shape = (BATCH, 3, image_size, image_size)
    out = _dummy_forward("backbone", name, backbone, shape)
    grid = backbone.grid_size(image_size)
    _expect("backbone", name, backbone, out, (BATCH, backbone.num_features, grid, grid), shape,
            f"num_features channels on a square grid_size({image_size}) = {grid} grid")


def check_filter(name: str, module: nn.Module, in_channels: int, in_size: int,
                 out_channels: int, out_size: int) -> None:
    """Encoder features [B, C_enc, g, g] -> a guide input on the latent grid."""
    shape = (BATCH, in_channels, in_size, in_size)
    out = _dummy_forward("filter", name, module, shape)
    _expect("filter", name, module, out, (BATCH, out_channels, out_size, out_size), shape,
            f"the guide's {out_channels} input channels on the {out_size}x{out_size} "
            "latent grid")


def check_weight(name: str, module: nn.Module, in_channels: int, grid: int) -> None:
    """Encoder features [B, C_enc, g, g] -> one weight per sample, [B] (or [B, 1])."""
    shape = (BATCH, in_channels, grid, grid)
    out = _dummy_forward("weight", name, module, shape)
    _expect("weight", name, module, out, [(BATCH,), (BATCH, 1)], shape,
            "one weight per sample")
