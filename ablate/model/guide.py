"""Guides: turn (noisy latent, timestep, filtered features) into ControlNet-style
residuals for the frozen teacher's denoiser, in the layout its `predict` takes.

The teacher builds the per-family networks (`Teacher.controlnet`, `Teacher.adapter`):
for a UNet teacher, the ones below (one residual per down-block output and one for the
mid block, shaped exactly like the skip connections); for SD3 / Flux transformers,
`ablate.model.dit_guide`. The registry entries and the `Guide` wrapper are the same for
every family, so a recipe's `guide=` never depends on its `teacher=`.

Both branches travel as one batch [2B] (source half first, target half second);
a *separate* guide splits it and runs one network per half.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import ControlNetModel
from torch import Tensor, nn

from ablate.registry import GUIDES

Residuals = tuple  # the teacher's layout: UNet (downs, mid), SD3 (blocks,), Flux (blocks, singles)


class Guide(nn.Module):
    """Base: one network shared by both branches, or one per branch. Always fp32 weights."""

    def __init__(self, nets: list[nn.Module]) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)

    @property
    def shared(self) -> bool:
        return len(self.nets) == 1

    @property
    def dtype(self) -> torch.dtype:
        """The guide's weights' dtype: fp32 always (it trains; autocast sets the compute)."""
        return next(self.parameters()).dtype

    def forward(
        self, noisy: Tensor, timesteps: Tensor, cond: Tensor, unet_kwargs: dict[str, Any]
    ) -> Residuals:
        """noisy [2B, 4, h, w], timesteps [2B], cond [2B, C0, h, w] -> residuals.

        Inputs arrive in the teacher's dtype (maybe bf16); they are cast to the guide's own."""
        noisy, cond, unet_kwargs = _cast((noisy, cond, unet_kwargs), self.dtype)
        if self.shared:
            return self._run(self.nets[0], noisy, timesteps, cond, unet_kwargs)
        halves = [
            self._run(net, *(t.chunk(2)[i] for t in (noisy, timesteps, cond)), _half(unet_kwargs, i))
            for i, net in enumerate(self.nets)
        ]
        return _cat_halves(*halves)

    def branch(
        self, index: int, noisy: Tensor, timesteps: Tensor, cond: Tensor,
        unet_kwargs: dict[str, Any],
    ) -> Residuals:
        """One branch alone (0 = source, 1 = target): noisy [B, 4, h, w] -> its residuals.
        What `forward` computes for that half, without batching the two."""
        net = self.nets[0 if self.shared else index]
        noisy, cond, unet_kwargs = _cast((noisy, cond, unet_kwargs), self.dtype)
        return self._run(net, noisy, timesteps, cond, unet_kwargs)

    def _run(self, net, noisy, timesteps, cond, unet_kwargs) -> Residuals:  # noqa: ANN001
        raise NotImplementedError


def _cat_halves(first: Any, second: Any) -> Any:
    """Source-half and target-half residuals (same layout) -> one [2B] layout."""
    if isinstance(first, Tensor):
        return torch.cat([first, second])
    return type(first)(_cat_halves(a, b) for a, b in zip(first, second, strict=True))


def _cast(value: Any, dtype: torch.dtype) -> Any:
    """Floating tensors inside tuples/dicts -> `dtype` (timesteps and other ints untouched)."""
    if isinstance(value, Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: _cast(v, dtype) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(_cast(v, dtype) for v in value)
    return value


def _half(kwargs: dict[str, Any], index: int) -> dict[str, Any]:
    """The source (0) or target (1) half of batched UNet keyword arguments."""
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if isinstance(value, dict):
            out[key] = _half(value, index)
        elif isinstance(value, Tensor):
            out[key] = value.chunk(2)[index]
        else:
            out[key] = value
    return out


class UNetControlNet(ControlNetModel):
    """A trainable copy of the teacher UNet's encoder (diffusers' ControlNetModel,
    initialised from the teacher), zero-initialised 1x1 convs on every down-block
    output and on the mid output. Its input is conv_in(z_noisy) + filtered features:
    the pixel-space conditioning embedding of a usual ControlNet is not used."""

    @classmethod
    def copy_of(cls, unet: nn.Module) -> UNetControlNet:
        net = cls.from_unet(unet, load_weights_from_unet=True)
        net.controlnet_cond_embedding = nn.Identity()  # features are already latent-sized
        return net

    def residuals(self, noisy: Tensor, timesteps: Tensor, cond: Tensor,
                  unet_kwargs: dict[str, Any]) -> Residuals:
        """noisy [N, 4, h, w], cond [N, C0, h, w] -> ([down residuals], mid residual)."""
        down, mid = self(noisy, timesteps, controlnet_cond=cond, return_dict=False, **unet_kwargs)
        return list(down), mid


class ControlNetGuide(Guide):
    """The teacher's own ControlNet-style copy (`Teacher.controlnet`: a module with
    `residuals(noisy, t, cond, conditioning)`), shared by both branches or one per branch."""

    def __init__(self, teacher: nn.Module, shared: bool = True, **args: Any) -> None:
        nets = []
        for _ in range(1 if shared else 2):
            net = teacher.controlnet(**args)
            # fp32 master weights even under a bf16/fp16 teacher: at lr 1e-5 most bf16
            # weights could not move at all (reduced precision is for compute: autocast)
            nn.Module.to(net, torch.float32).requires_grad_(True)  # plain cast, no diffusers warning
            nets.append(net)
        super().__init__(nets)

    def _run(self, net, noisy, timesteps, cond, unet_kwargs) -> Residuals:  # noqa: ANN001
        return net.residuals(noisy, timesteps, cond, unet_kwargs)


def residual_shapes(unet: nn.Module) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """(channels, downsampling level) of each down residual and of the mid residual,
    read off the UNet's modules: conv_in, then per block its resnets and downsampler."""
    downs = [(unet.conv_in.out_channels, 0)]
    level = 0
    for block in unet.down_blocks:
        channels = block.resnets[-1].out_channels
        downs += [(channels, level)] * len(block.resnets)
        if getattr(block, "downsamplers", None):
            level += 1
            downs.append((channels, level))
    mid_channels = unet.mid_block.resnets[-1].out_channels
    return downs, (mid_channels, level)


def zero_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class ConvPyramid(nn.Module):
    """A light stack of stride-2 convs over the filtered features (no copy of the
    UNet, no timestep): one zero-initialised 1x1 conv per residual."""

    def __init__(self, unet: nn.Module, width: int = 64) -> None:
        super().__init__()
        downs, (mid_channels, mid_level) = residual_shapes(unet)
        in_channels = unet.conv_in.out_channels
        levels = mid_level + 1
        self.stages = nn.ModuleList()
        for level in range(levels):
            stride = 1 if level == 0 else 2
            self.stages.append(
                nn.Sequential(
                    nn.Conv2d(in_channels if level == 0 else width, width, 3, stride, 1),
                    nn.SiLU(),
                )
            )
        self.levels = [lvl for _, lvl in downs]
        self.down_convs = nn.ModuleList(zero_conv(width, c) for c, _ in downs)
        self.mid_conv = zero_conv(width, mid_channels)
        self.mid_level = mid_level

    def forward(self, cond: Tensor) -> Residuals:
        feats = []
        x = cond  # [N, C0, h, w]
        for stage in self.stages:
            x = stage(x)  # [N, width, h / 2**level, w / 2**level]
            feats.append(x)
        downs = [conv(feats[lvl]) for conv, lvl in zip(self.down_convs, self.levels, strict=True)]
        return downs, self.mid_conv(feats[self.mid_level])


class AdapterGuide(Guide):
    """The cheap alternative to a copy of the denoiser: residuals from features alone
    (`Teacher.adapter`: a conv pyramid for UNets, patch tokens for transformers)."""

    def __init__(self, teacher: nn.Module, shared: bool = True, width: int = 64) -> None:
        super().__init__([teacher.adapter(width) for _ in range(1 if shared else 2)])

    def _run(self, net, noisy, timesteps, cond, unet_kwargs) -> Residuals:  # noqa: ANN001
        return net(cond)


@GUIDES.register("controlnet", "trainable copy of the teacher's first blocks + zero projections")
def controlnet_guide(teacher: nn.Module, shared: bool = True,
                     layers: int | None = None) -> ControlNetGuide:
    """`layers`: transformer blocks copied (None: the family's default, see
    `ablate.model.dit_guide`); a UNet's copy is always its whole encoder."""
    return ControlNetGuide(teacher, shared, layers=layers)


@GUIDES.register("none", "no guidance: the plain encoder + head trained with CE only (baseline)")
def no_guide() -> None:
    """The baseline: `build_detector` builds no teacher, guide, filter or weight module."""
    return None


@GUIDES.register("adapter", "light conv pyramid to the same residual shapes, zero-initialised")
def adapter_guide(teacher: nn.Module, shared: bool = True, width: int = 64) -> AdapterGuide:
    return AdapterGuide(teacher, shared, width)
