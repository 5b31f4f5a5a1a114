"""The operations a feature filter is composed of (`ablate.model.filter`).

Each stage has a table name -> factory; ``none`` (no module) is handled by the filter.
The operations that the six presets use (``se``, ``gate``, ``transposed``) keep their
original classes and parameter names, so earlier checkpoints load and outputs are
unchanged; the others add parameter names of their own, only when selected.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ablate.core.errors import AblateError

# ----------------------------------------------------------------- channel attention


class ChannelAttention(nn.Module):
    """SE-style gate: GAP -> 1x1 to C/4 -> ReLU -> 1x1 to C -> sigmoid, [B, C, 1, 1].

    ``channel=se``: the filter's original channel attention (paper, code)."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.gate(x)


def eca_kernel_size(channels: int, gamma: int = 2, b: int = 1) -> int:
    """ECA-Net's adaptive kernel: |log2(C)/gamma + b/gamma| to the nearest odd number
    (ties, at even values, go up: ECA's released code), e.g. 64 -> 3, 1024 -> 5."""
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


class ECAChannelAttention(nn.Module):
    """ECA-Net: GAP -> 1-D conv across channels (k adaptive, no bias) -> sigmoid.

    ``channel=eca``: a channel gate with k weights instead of SE's 2C^2/4, so a full-width
    filter (C=1792) gets channel attention almost for free; no dimensionality reduction."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.kernel_size = eca_kernel_size(channels)
        self.conv = nn.Conv1d(1, 1, self.kernel_size, padding=self.kernel_size // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pooled = x.mean(dim=(2, 3))  # [B, C]
        gate = self.conv(pooled.unsqueeze(1))  # [B, 1, C]: neighbouring channels mixed
        return gate.sigmoid().transpose(1, 2).unsqueeze(-1)  # [B, C, 1, 1]


class CBAMChannelAttention(nn.Module):
    """CBAM's channel gate: one shared MLP (1x1 C -> C/r -> C) on the average- and the
    max-pooled vectors, summed, sigmoid, [B, C, 1, 1].

    ``channel=cbam``: max pooling keeps the strongest response per channel, which SE's
    average alone dilutes (r=16, as in the CBAM paper)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        avg = self.mlp(F.adaptive_avg_pool2d(x, 1))  # [B, C, 1, 1]
        peak = self.mlp(F.adaptive_max_pool2d(x, 1))  # [B, C, 1, 1]
        return (avg + peak).sigmoid()


CHANNEL_OPS: dict[str, type[nn.Module] | None] = {
    "se": ChannelAttention,
    "eca": ECAChannelAttention,
    "cbam": CBAMChannelAttention,
    "none": None,
}

# ----------------------------------------------------------------- spatial attention


class SpatialAttention(nn.Module):
    """3x3 conv to one channel -> sigmoid, [B, 1, H, W].

    ``spatial=gate``: the filter's original spatial attention (paper, code)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x).sigmoid()


class CBAMSpatialAttention(nn.Module):
    """CBAM's spatial gate: [channel mean, channel max] -> 7x7 conv (no bias) to one
    channel -> sigmoid, [B, 1, H, W].

    ``spatial=cbam``: 98 weights whatever the width, and a wider receptive field than
    the 3x3 gate; it sees channel statistics, not the channels themselves."""

    def __init__(self, channels: int) -> None:  # `channels` unused: same signature as `gate`
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        stats = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return self.conv(stats).sigmoid()  # stats [B, 2, H, W] -> gate [B, 1, H, W]


SPATIAL_OPS: dict[str, type[nn.Module] | None] = {
    "gate": SpatialAttention,
    "cbam": CBAMSpatialAttention,
    "none": None,
}

# ----------------------------------------------------------------- upsampling


class Upsampler(nn.Module):
    """`steps` stride-2 transposed convs (8 -> 16 -> 32), then an exact resize if needed.

    ``upsample=transposed``: the original upsampler (paper, and the released code with
    ``bias=False``). Subclasses change the steps; the final resize is shared."""

    def __init__(self, channels: int, steps: int, out_size: int, bias: bool = True) -> None:
        super().__init__()
        self.out_size = out_size
        self.ups = nn.Sequential(*[self.step(channels, bias) for _ in range(steps)])

    def step(self, channels: int, bias: bool) -> nn.Module:
        """One x2 step, [B, C, s, s] -> [B, C, 2s, 2s]."""
        return nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.ups(x)  # [B, C, h * 2**steps, w * 2**steps]
        if x.shape[-1] != self.out_size:  # grids that are not a power-of-two apart
            x = F.interpolate(x, size=(self.out_size, self.out_size), mode="bilinear")
        return x


class BilinearUpsampler(Upsampler):
    """``upsample=bilinear``: per step, bilinear x2 then a 3x3 conv.

    Resize-then-conv has no checkerboard artefacts, which transposed convs can print
    into the guide's input."""

    def step(self, channels: int, bias: bool) -> nn.Module:
        return nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear"),  # [B, C, 2s, 2s]
            nn.Conv2d(channels, channels, 3, padding=1, bias=bias),  # [B, C, 2s, 2s]
        )


class PixelShuffleUpsampler(Upsampler):
    """``upsample=pixelshuffle``: per step, a 3x3 conv to 4C then PixelShuffle(2).

    Sub-pixel convolution: learnt like a transposed conv, but every output pixel gets
    its own weights, so no overlap and no checkerboard."""

    def step(self, channels: int, bias: bool) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(channels, 4 * channels, 3, padding=1, bias=bias),  # [B, 4C, s, s]
            nn.PixelShuffle(2),  # [B, C, 2s, 2s]
        )


UPSAMPLE_OPS: dict[str, type[Upsampler]] = {
    "transposed": Upsampler,
    "bilinear": BilinearUpsampler,
    "pixelshuffle": PixelShuffleUpsampler,
}

# ----------------------------------------------------------------- norm, activation


def group_count(channels: int, most: int = 32) -> int:
    """The largest group count <= `most` that divides `channels` (48 -> 24, 64 -> 32)."""
    return next(g for g in range(min(most, channels), 0, -1) if channels % g == 0)


NORM_OPS: dict[str, object] = {
    "none": None,
    "batch": nn.BatchNorm2d,
    "group": lambda channels: nn.GroupNorm(group_count(channels), channels),
}

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "silu": nn.SiLU}

ORDERS = ("paper", "code")
GATES_ON = ("conv", "activated")


def check_choice(key: str, value: object, allowed: object) -> None:
    """Refuse a setting outside `allowed`, naming the key, the value and the choices."""
    choices = list(allowed)
    if not isinstance(value, str) or value not in choices:
        raise AblateError(
            f"filter.{key}={value!r} is not allowed; choose one of: {', '.join(choices)}"
        )
