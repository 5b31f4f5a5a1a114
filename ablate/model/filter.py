"""Feature filters: encoder grid -> guide input (channels and latent grid).

One `FeatureFilter` covers every variant through flags; the registered names are
presets. Two orders from METHOD.md:

- ``paper``: conv3x3 -> channel/spatial attention -> MHSA at the encoder grid,
  then upsample to the latent grid, then conv3x3 to the guide's width. (The
  paper also mentions a pooling step it does not specify; it is left out.)
- ``code``: upsample first (stride-2 transposed convs at full width, no bias), then
  conv3x3 -> attentions -> MHSA -> conv3x3; no pooling, residual or norm. As released:
  the activation is SiLU, both gates are computed on SiLU(conv) and applied to the
  pre-activation conv output, MHSA query = SiLU(conv), key/value = the gated features.

The paper does not specify the activation, what the gates are computed on, or the
transposed convs' bias, so ``paper`` and its ablations (``no_mhsa``, ``no_channel_attn``,
``no_spatial_attn``, ``conv_only``) keep this toolkit's earlier choices: ReLU query, gates
on the pre-activation conv output, transposed convs with bias.

``width=None`` is the backbone's full feature width, as in the paper and the released
code; a smaller width is an ablation (far fewer trainable params, much faster steps).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from ablate.core.errors import AblateError
from ablate.registry import FILTERS


class ChannelAttention(nn.Module):
    """SE-style gate: GAP -> 1x1 to C/4 -> ReLU -> 1x1 to C -> sigmoid, [B, C, 1, 1]."""

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


class SpatialAttention(nn.Module):
    """3x3 conv to one channel -> sigmoid, [B, 1, H, W]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x).sigmoid()


class Upsampler(nn.Module):
    """`steps` stride-2 transposed convs (8 -> 16 -> 32), then an exact resize if needed."""

    def __init__(self, channels: int, steps: int, out_size: int, bias: bool = True) -> None:
        super().__init__()
        self.out_size = out_size
        self.ups = nn.Sequential(
            *[
                nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1, bias=bias)
                for _ in range(steps)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.ups(x)  # [B, C, h * 2**steps, w * 2**steps]
        if x.shape[-1] != self.out_size:  # grids that are not a power-of-two apart
            x = F.interpolate(x, size=(self.out_size, self.out_size), mode="bilinear")
        return x


ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "silu": nn.SiLU}

FILTERS.notes["width"] = (
    "null = the backbone's full feature width, as in the paper and the released code; "
    "a number is a narrower filter, an ablation, not the method "
    "(far fewer trainable params, much faster steps)"
)


class FeatureFilter(nn.Module):
    """Picks out of the encoder's features what the teacher needs for one branch.

    `activation` acts on the conv output (MHSA query, and gate input when
    `gates_on="activated"`); `gates_on` says whether the gates see the conv output
    ("conv") or its activation ("activated"); either way they scale the conv output.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        in_size: int,
        out_size: int,
        order: str = "paper",
        width: int | None = None,
        heads: int = 4,
        channel_attn: bool = True,
        spatial_attn: bool = True,
        mhsa: bool = True,
        activation: str = "relu",
        gates_on: str = "conv",
        upsample_bias: bool = True,
    ) -> None:
        super().__init__()
        if order not in ("paper", "code"):
            raise AblateError(f"filter.order must be 'paper' or 'code', not {order!r}")
        if activation not in ACTIVATIONS:
            raise AblateError(f"filter activation must be one of {sorted(ACTIVATIONS)}")
        if gates_on not in ("conv", "activated"):
            raise AblateError(f"filter gates_on must be 'conv' or 'activated', not {gates_on!r}")
        width = width or in_channels
        if mhsa and (heads < 1 or width % heads):
            raise AblateError(
                f"filter.heads={heads} does not divide the filter width {width} "
                f"(feature width of the backbone unless filter.width is set); "
                f"choose heads from {_divisors(width)} or set filter.width"
            )
        if out_size < in_size:
            raise AblateError(
                f"encoder grid {in_size} is finer than the teacher's latent grid {out_size}; "
                "use a larger image_size or a backbone with a coarser stride"
            )
        self.order = order
        self.gates_on = gates_on
        steps = int(math.log2(out_size / in_size))
        up_channels = in_channels if order == "code" else width
        self.upsample = Upsampler(up_channels, steps, out_size, bias=upsample_bias)
        self.conv_in = nn.Conv2d(in_channels, width, 3, padding=1)
        self.act = ACTIVATIONS[activation]()  # no parameters: state_dict keys unchanged
        self.channel_attn = ChannelAttention(width) if channel_attn else None
        self.spatial_attn = SpatialAttention(width) if spatial_attn else None
        self.mhsa = nn.MultiheadAttention(width, heads, batch_first=True) if mhsa else None
        self.conv_out = nn.Conv2d(width, out_channels, 3, padding=1)

    def forward(self, feats: Tensor) -> Tensor:
        """[B, C_enc, h, w] -> [B, C_guide, H_lat, W_lat]."""
        if self.order == "code":
            feats = self.upsample(feats)  # [B, C_enc, H_lat, W_lat]
        y = self.conv_in(feats)  # [B, width, h', w'], pre-activation
        activated = self.act(y)  # [B, width, h', w']
        gate_in = activated if self.gates_on == "activated" else y
        weighted = y  # gates scale the pre-activation output in both variants
        if self.channel_attn is not None:
            weighted = weighted * self.channel_attn(gate_in)  # gate [B, width, 1, 1]
        if self.spatial_attn is not None:
            weighted = weighted * self.spatial_attn(gate_in)  # gate [B, 1, h', w']
        if self.mhsa is not None:
            b, c, h, w = y.shape
            query = activated.flatten(2).transpose(1, 2)  # [B, h'*w', width]
            kv = weighted.flatten(2).transpose(1, 2)  # [B, h'*w', width]
            attended, _ = self.mhsa(query, kv, kv, need_weights=False)
            weighted = attended.transpose(1, 2).reshape(b, c, h, w)
        if self.order == "paper":
            weighted = self.upsample(weighted)  # [B, width, H_lat, W_lat]
        return self.conv_out(weighted)  # [B, C_guide, H_lat, W_lat]


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, min(n, 16) + 1) if n % d == 0]


def _preset(description: str, **flags: object):
    """Register a named FeatureFilter preset (flags fixed, sizes from the detector)."""

    def factory(
        in_channels: int,
        out_channels: int,
        in_size: int,
        out_size: int,
        order: str = str(flags.get("order", "paper")),
        width: int | None = None,
        heads: int = 4,
    ) -> FeatureFilter:
        fixed = {k: v for k, v in flags.items() if k != "order"}
        return FeatureFilter(
            in_channels, out_channels, in_size, out_size, order, width, heads, **fixed
        )

    return factory


for _name, _desc, _flags in [
    ("paper", "conv -> channel+spatial attn -> MHSA, then upsample (paper order)", {}),
    ("code", "released code: upsample (no bias) first, conv -> attns on SiLU(conv) -> MHSA",
     {"order": "code", "activation": "silu", "gates_on": "activated", "upsample_bias": False}),
    ("no_mhsa", "paper order without the self-attention", {"mhsa": False}),
    ("no_channel_attn", "paper order without channel attention", {"channel_attn": False}),
    ("no_spatial_attn", "paper order without spatial attention", {"spatial_attn": False}),
    ("conv_only", "conv -> upsample -> conv: no attention at all",
     {"mhsa": False, "channel_attn": False, "spatial_attn": False}),
]:
    FILTERS.register(_name, _desc)(_preset(_desc, **_flags))
