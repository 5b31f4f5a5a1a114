"""Feature filters: encoder grid -> guide input (channels and latent grid).

One `FeatureFilter` is composed from stages, each a choice of operation
(`ablate.model.filter_ops`):

- ``channel`` attention: ``se`` (SE-style, the original), ``eca`` (ECA-Net),
  ``cbam`` (CBAM's channel gate), ``none``;
- ``spatial`` attention: ``gate`` (3x3 conv gate, the original), ``cbam`` (CBAM's 7x7 gate
  on channel mean and max), ``none``;
- MHSA with ``heads`` heads (``filter=stages``: 0 = none);
- ``upsample``: ``transposed`` (stride-2 transposed convs, the original), ``bilinear``
  (bilinear x2 then 3x3 conv), ``pixelshuffle`` (3x3 conv to 4C then PixelShuffle(2));
  every one ends with the same exact resize for grids that are not a power of two apart;
- ``norm`` after the first conv, before the activation: ``none``, ``batch``, ``group``;
- ``activation`` ``relu`` / ``silu``; ``width``; ``gates_on``; ``upsample_bias``.

``filter=stages`` exposes every setting (defaults = ``paper``); the other registered names
are presets of it with their settings fixed. Two orders from METHOD.md:

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
on the pre-activation conv output, transposed convs with bias. The presets build exactly
the modules (parameter names, shapes, outputs) they built before the stages existed.

Both gates are computed from the same input (the conv output, or its activation) and
scale the conv output; they are not chained as in CBAM's own block.

``width=None`` is the backbone's full feature width, as in the paper and the released
code; a smaller width is an ablation (far fewer trainable params, much faster steps).
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from ablate.core.errors import AblateError
from ablate.model.filter_ops import (
    ACTIVATIONS,
    CHANNEL_OPS,
    GATES_ON,
    NORM_OPS,
    ORDERS,
    SPATIAL_OPS,
    UPSAMPLE_OPS,
    ChannelAttention,
    SpatialAttention,
    Upsampler,
    check_choice,
)
from ablate.registry import FILTERS

__all__ = ["ACTIVATIONS", "ChannelAttention", "FeatureFilter", "SpatialAttention", "Upsampler"]

FILTERS.notes["width"] = (
    "null = the backbone's full feature width, as in the paper and the released code; "
    "a number is a narrower filter, an ablation, not the method "
    "(far fewer trainable params, much faster steps)"
)


class FeatureFilter(nn.Module):
    """Picks out of the encoder's features what the teacher needs for one branch.

    `activation` acts on the (normalised) conv output (MHSA query, and gate input when
    `gates_on="activated"`); `gates_on` says whether the gates see the conv output
    ("conv") or its activation ("activated"); either way they scale the conv output.

    `channel_attn` / `spatial_attn` name an operation (`filter_ops.CHANNEL_OPS`,
    `SPATIAL_OPS`); True and False, as plugins written before the stages pass them,
    mean ``se`` / ``gate`` and ``none``.
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
        channel_attn: bool | str = True,
        spatial_attn: bool | str = True,
        mhsa: bool = True,
        activation: str = "relu",
        gates_on: str = "conv",
        upsample_bias: bool = True,
        upsample: str = "transposed",
        norm: str = "none",
    ) -> None:
        super().__init__()
        channel = _op_name(channel_attn, "se")
        spatial = _op_name(spatial_attn, "gate")
        for key, value, allowed in (
            ("order", order, ORDERS), ("channel", channel, CHANNEL_OPS),
            ("spatial", spatial, SPATIAL_OPS), ("upsample", upsample, UPSAMPLE_OPS),
            ("activation", activation, ACTIVATIONS), ("norm", norm, NORM_OPS),
            ("gates_on", gates_on, GATES_ON),
        ):
            check_choice(key, value, allowed)
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
        # construction order kept from the original filter: same initial weights per seed
        self.upsample = UPSAMPLE_OPS[upsample](up_channels, steps, out_size, bias=upsample_bias)
        self.conv_in = nn.Conv2d(in_channels, width, 3, padding=1)
        if norm != "none":  # only then a `norm` entry in the state_dict
            self.norm = NORM_OPS[norm](width)
        else:
            self.norm = None
        self.act = ACTIVATIONS[activation]()  # no parameters: state_dict keys unchanged
        channel_op, spatial_op = CHANNEL_OPS[channel], SPATIAL_OPS[spatial]
        self.channel_attn = channel_op(width) if channel_op is not None else None
        self.spatial_attn = spatial_op(width) if spatial_op is not None else None
        self.mhsa = nn.MultiheadAttention(width, heads, batch_first=True) if mhsa else None
        self.conv_out = nn.Conv2d(width, out_channels, 3, padding=1)

    def forward(self, feats: Tensor) -> Tensor:
        """[B, C_enc, h, w] -> [B, C_guide, H_lat, W_lat]."""
        if self.order == "code":
            feats = self.upsample(feats)  # [B, C_enc, H_lat, W_lat]
        y = self.conv_in(feats)  # [B, width, h', w'], pre-activation
        if self.norm is not None:
            y = self.norm(y)  # [B, width, h', w']
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


def _op_name(flag: bool | str, on: str) -> str:
    """A stage's operation name from a flag: True -> `on`, False -> "none", a name as is."""
    if isinstance(flag, bool):
        return on if flag else "none"
    return flag


def _divisors(n: int, most: int = 16) -> list[int]:
    return [d for d in range(1, min(n, most) + 1) if n % d == 0]


MAX_HEADS = 8


def stages(
    in_channels: int,
    out_channels: int,
    in_size: int,
    out_size: int,
    order: str = "paper",
    width: int | None = None,
    heads: int = 4,
    channel: str = "se",
    spatial: str = "gate",
    upsample: str = "transposed",
    activation: str = "relu",
    norm: str = "none",
    gates_on: str = "conv",
    upsample_bias: bool = True,
) -> FeatureFilter:
    """A filter composed stage by stage; the defaults are the ``paper`` preset.

    `heads` is 0..8, 0 = no MHSA. Bad choices raise AblateError naming the key."""
    if isinstance(heads, bool) or not isinstance(heads, int) or not 0 <= heads <= MAX_HEADS:
        raise AblateError(
            f"filter.heads={heads!r} is not allowed; choose an integer 0..{MAX_HEADS} "
            "(0 = no MHSA)"
        )
    for key, value in (("channel", channel), ("spatial", spatial)):
        check_choice(key, value, CHANNEL_OPS if key == "channel" else SPATIAL_OPS)
    if heads and (width or in_channels) % heads:  # suggest only what `stages` takes
        raise AblateError(
            f"filter.heads={heads} does not divide the filter width {width or in_channels}; "
            f"choose heads from {[0, *_divisors(width or in_channels, MAX_HEADS)]} or set "
            "filter.width")
    return FeatureFilter(
        in_channels, out_channels, in_size, out_size, order, width, max(heads, 1),
        channel_attn=channel, spatial_attn=spatial, mhsa=heads > 0, activation=activation,
        gates_on=gates_on, upsample_bias=upsample_bias, upsample=upsample, norm=norm,
    )


FILTERS.register(
    "stages",
    "composed stage by stage: channel (se|eca|cbam|none), spatial (gate|cbam|none), "
    "heads (0..8), upsample (transposed|bilinear|pixelshuffle), norm, activation, order; "
    "defaults = paper",
)(stages)

# preset -> its fixed `stages` settings (heads and width stay the user's, as before)
PRESETS: dict[str, dict[str, object]] = {
    "paper": {},
    "code": {"order": "code", "activation": "silu", "gates_on": "activated",
             "upsample_bias": False},
    "no_mhsa": {"mhsa": False},
    "no_channel_attn": {"channel": "none"},
    "no_spatial_attn": {"spatial": "none"},
    "conv_only": {"mhsa": False, "channel": "none", "spatial": "none"},
}


def _preset(description: str, **settings: object):
    """A named preset of the stages (settings fixed, sizes, width, heads, order from the
    detector and the recipe); the factory's arguments are the preset's recipe keys."""

    def factory(
        in_channels: int,
        out_channels: int,
        in_size: int,
        out_size: int,
        order: str = str(settings.get("order", "paper")),
        width: int | None = None,
        heads: int = 4,
    ) -> FeatureFilter:
        fixed = {k: v for k, v in settings.items() if k not in ("order", "channel", "spatial")}
        return FeatureFilter(
            in_channels, out_channels, in_size, out_size, order, width, heads,
            channel_attn=settings.get("channel", "se"),
            spatial_attn=settings.get("spatial", "gate"), **fixed,
        )

    return factory


for _name, _desc in [
    ("paper", "conv -> channel+spatial attn -> MHSA, then upsample (paper order)"),
    ("code", "released code: upsample (no bias) first, conv -> attns on SiLU(conv) -> MHSA"),
    ("no_mhsa", "paper order without the self-attention"),
    ("no_channel_attn", "paper order without channel attention"),
    ("no_spatial_attn", "paper order without spatial attention"),
    ("conv_only", "conv -> upsample -> conv: no attention at all"),
]:
    FILTERS.register(_name, _desc)(_preset(_desc, **PRESETS[_name]))
