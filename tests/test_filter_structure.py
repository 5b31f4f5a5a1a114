"""The composable filter (`filter=stages`) and its operations.

- each of the six presets equals `stages` with the same settings, and equals the filter
  as the code built it before the operations were split out (`_ReleasedFeatureFilter`,
  below): same state_dict keys and shapes, same outputs on the same weights;
- each new operation (ECA, CBAM channel/spatial, bilinear and pixel-shuffle upsampling,
  norm) against a reference written out here with torch.nn.functional;
- bad settings are refused with a message naming the key; a recipe with `filter=stages`
  builds and runs.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ablate.core.errors import AblateError
from ablate.registry import build

# ---------------------------------------------------------------------------------------
# FROZEN REFERENCE: the filter exactly as ablate/model/filter.py built it before the
# operations were split out (copied verbatim, names prefixed with _Released). Do not edit
# it to follow the new code: it is what the presets must keep matching.
# ---------------------------------------------------------------------------------------


class _ReleasedChannelAttention(nn.Module):
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


class _ReleasedSpatialAttention(nn.Module):
    """3x3 conv to one channel -> sigmoid, [B, 1, H, W]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x).sigmoid()


class _ReleasedUpsampler(nn.Module):
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


_RELEASED_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "silu": nn.SiLU}

class _ReleasedFeatureFilter(nn.Module):
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
        if activation not in _RELEASED_ACTIVATIONS:
            raise AblateError(f"filter activation must be one of {sorted(_RELEASED_ACTIVATIONS)}")
        if gates_on not in ("conv", "activated"):
            raise AblateError(f"filter gates_on must be 'conv' or 'activated', not {gates_on!r}")
        width = width or in_channels
        if mhsa and (heads < 1 or width % heads):
            raise AblateError(
                f"filter.heads={heads} does not divide the filter width {width} "
                f"(feature width of the backbone unless filter.width is set); "
                f"choose heads from {_released_divisors(width)} or set filter.width"
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
        self.upsample = _ReleasedUpsampler(up_channels, steps, out_size, bias=upsample_bias)
        self.conv_in = nn.Conv2d(in_channels, width, 3, padding=1)
        self.act = _RELEASED_ACTIVATIONS[activation]()  # no parameters: state_dict keys unchanged
        self.channel_attn = _ReleasedChannelAttention(width) if channel_attn else None
        self.spatial_attn = _ReleasedSpatialAttention(width) if spatial_attn else None
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


def _released_divisors(n: int) -> list[int]:
    return [d for d in range(1, min(n, 16) + 1) if n % d == 0]


# the six presets' fixed flags, as the released code registered them
_RELEASED_PRESETS: dict[str, dict] = {
    "paper": {},
    "code": {"order": "code", "activation": "silu", "gates_on": "activated",
             "upsample_bias": False},
    "no_mhsa": {"mhsa": False},
    "no_channel_attn": {"channel_attn": False},
    "no_spatial_attn": {"spatial_attn": False},
    "conv_only": {"mhsa": False, "channel_attn": False, "spatial_attn": False},
}
# END OF FROZEN REFERENCE


# ---------------------------------------------------------------------------------------
# presets == stages == the released filter
# ---------------------------------------------------------------------------------------

C_IN, C_OUT, WIDTH, HEADS = 8, 6, 16, 4
SIZES = dict(in_channels=C_IN, out_channels=C_OUT, in_size=4, out_size=16)

# each preset as `stages` settings
AS_STAGES: dict[str, dict] = {
    "paper": {},
    "code": {"order": "code", "activation": "silu", "gates_on": "activated",
             "upsample_bias": False},
    "no_mhsa": {"heads": 0},
    "no_channel_attn": {"channel": "none"},
    "no_spatial_attn": {"spatial": "none"},
    "conv_only": {"heads": 0, "channel": "none", "spatial": "none"},
}
PRESETS = list(AS_STAGES)


def _x(channels: int = C_IN, size: int = 4, seed: int = 1) -> Tensor:
    return torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(seed))


def _shapes(m: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


def _built(name: str, width: int | None) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(preset, stages, released) at the same sizes, each built from seed 0."""
    torch.manual_seed(0)
    preset = build("filter", name, **SIZES, width=width, heads=HEADS).eval()
    torch.manual_seed(0)
    stages = build("filter", "stages", **SIZES, width=width,
                   **({"heads": HEADS} | AS_STAGES[name])).eval()
    torch.manual_seed(0)
    released = _ReleasedFeatureFilter(**SIZES, width=width, heads=HEADS,
                                      **_RELEASED_PRESETS[name]).eval()
    return preset, stages, released


@pytest.mark.parametrize("width", [WIDTH, None], ids=["width16", "full_width"])
@pytest.mark.parametrize("name", PRESETS)
def test_preset_equals_stages_and_the_released_filter(name, width):
    preset, stages, released = _built(name, width)
    assert list(preset.state_dict()) == list(released.state_dict())  # names, in order
    assert _shapes(preset) == _shapes(released)
    assert _shapes(stages) == _shapes(preset)
    # the same construction order: the same initial weights from the same seed
    for key, value in released.state_dict().items():
        assert torch.equal(preset.state_dict()[key], value), key
    # the preset's weights loaded into the others (strict: no missing or extra keys)
    trained = {k: torch.randn_like(v) * 0.3 for k, v in preset.state_dict().items()}
    for m in (preset, stages, released):
        m.load_state_dict(trained, strict=True)
    x = _x()
    with torch.no_grad():
        out = preset(x)
        assert out.shape == (2, C_OUT, 16, 16)
        assert torch.equal(stages(x), out)
        assert torch.equal(released(x), out)


def test_each_preset_has_the_released_parts():
    """The flags still mean what they meant: a part a preset leaves out is None."""
    for name in PRESETS:
        preset, _, released = _built(name, WIDTH)
        for part in ("channel_attn", "spatial_attn", "mhsa"):
            assert (getattr(preset, part) is None) == (getattr(released, part) is None), \
                (name, part)
            if getattr(released, part) is not None:
                assert type(getattr(preset, part)).__name__ == \
                    type(getattr(released, part)).__name__.replace("_Released", "")
        assert preset.norm is None and preset.order == released.order
        assert preset.gates_on == released.gates_on
        assert type(preset.act) is type(released.act)


def test_stages_defaults_are_the_paper_preset_and_its_config_lists_them():
    import inspect
    from pathlib import Path

    import yaml

    from ablate.registry import registry

    params = inspect.signature(registry("filter").get("stages").factory).parameters
    defaults = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    assert defaults == dict(order="paper", width=None, heads=4, channel="se", spatial="gate",
                            upsample="transposed", activation="relu", norm="none",
                            gates_on="conv", upsample_bias=True)
    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "filter"
                             / "stages.yaml").read_text())
    assert config == {"name": "stages", **defaults}


# ---------------------------------------------------------------------------------------
# the new operations against references written out here
# ---------------------------------------------------------------------------------------


def _stages(**settings) -> nn.Module:
    torch.manual_seed(0)
    sizes = SIZES | {k: settings.pop(k) for k in ("in_size", "out_size") if k in settings}
    return build("filter", "stages", **sizes, **({"width": WIDTH} | settings)).eval()


def test_eca_kernel_size_by_hand():
    from ablate.model.filter_ops import ECAChannelAttention, eca_kernel_size

    # |log2(C)/2 + 1/2|: C=64 -> 3.5 -> nearest odd 3; C=1024 -> 5.5 -> nearest odd 5
    assert eca_kernel_size(64) == 3
    assert eca_kernel_size(1024) == 5
    assert ECAChannelAttention(64).conv.weight.shape == (1, 1, 3)
    assert ECAChannelAttention(1024).conv.weight.shape == (1, 1, 5)
    assert ECAChannelAttention(1024).conv.bias is None


def test_eca_gate_against_functional_reference():
    f = _stages(channel="eca")
    eca = f.channel_attn
    assert set(f.state_dict()) >= {"channel_attn.conv.weight"}
    assert not any(k.startswith("channel_attn.gate") for k in f.state_dict())
    with torch.no_grad():
        eca.conv.weight.copy_(torch.randn_like(eca.conv.weight))  # not symmetric
        x = _x(WIDTH, 5)
        k = eca.conv.weight.shape[-1]
        pooled = x.mean(dim=(2, 3))  # [B, C]
        gate = torch.sigmoid(F.conv1d(pooled[:, None, :], eca.conv.weight, padding=k // 2))
        expected = gate[:, 0, :, None, None]  # [B, C, 1, 1]
        assert torch.equal(eca(x), expected)


def test_cbam_channel_gate_against_functional_reference():
    f = _stages(channel="cbam")
    mlp = f.channel_attn.mlp
    x = _x(WIDTH, 5) + 0.5  # avg and max differ
    with torch.no_grad():
        def shared(v: Tensor) -> Tensor:  # C -> C/r -> C
            hidden = F.relu(F.conv2d(v, mlp[0].weight, mlp[0].bias))
            return F.conv2d(hidden, mlp[2].weight, mlp[2].bias)

        expected = torch.sigmoid(shared(F.adaptive_avg_pool2d(x, 1))
                                 + shared(F.adaptive_max_pool2d(x, 1)))
        torch.testing.assert_close(f.channel_attn(x), expected, atol=0, rtol=0)
        only_avg = torch.sigmoid(2 * shared(F.adaptive_avg_pool2d(x, 1)))
        assert not torch.allclose(expected, only_avg)  # the reference sees the max pool
    assert mlp[0].weight.shape == (WIDTH // 16, WIDTH, 1, 1)


def test_cbam_spatial_gate_against_functional_reference():
    f = _stages(spatial="cbam")
    conv = f.spatial_attn.conv
    assert conv.weight.shape == (1, 2, 7, 7) and conv.bias is None
    x = _x(WIDTH, 9)
    with torch.no_grad():
        stats = torch.cat([x.mean(dim=1, keepdim=True), x.max(dim=1, keepdim=True).values], 1)
        expected = torch.sigmoid(F.conv2d(stats, conv.weight, None, padding=3))  # [B, 1, H, W]
        torch.testing.assert_close(f.spatial_attn(x), expected, atol=0, rtol=0)
        assert expected.shape == (2, 1, 9, 9)


@pytest.mark.parametrize("upsample", ["pixelshuffle", "bilinear", "transposed"])
@pytest.mark.parametrize("in_size,out_size", [(8, 32), (7, 28), (7, 32)])
def test_upsampling_shapes(upsample, in_size, out_size):
    f = _stages(upsample=upsample, in_size=in_size, out_size=out_size)
    with torch.no_grad():
        assert f.upsample(_x(WIDTH, in_size)).shape == (2, WIDTH, out_size, out_size)
        assert f(_x(C_IN, in_size)).shape == (2, C_OUT, out_size, out_size)
    assert len(f.upsample.ups) == 2


def _steps_by_hand(f: nn.Module, x: Tensor, how: str) -> Tensor:
    for step in f.upsample.ups:
        if how == "pixelshuffle":
            conv = step[0]  # 3x3 conv to 4C, then PixelShuffle(2)
            x = F.pixel_shuffle(F.conv2d(x, conv.weight, conv.bias, padding=1), 2)
        else:
            conv = step[1]  # bilinear x2, then 3x3 conv
            x = F.conv2d(F.interpolate(x, scale_factor=2, mode="bilinear"),
                         conv.weight, conv.bias, padding=1)
    return x


@pytest.mark.parametrize("how", ["pixelshuffle", "bilinear"])
@pytest.mark.parametrize("in_size,out_size", [(8, 32), (7, 32)])
def test_upsampling_against_functional_reference(how, in_size, out_size):
    f = _stages(upsample=how, in_size=in_size, out_size=out_size)
    first = f.upsample.ups[0][0 if how == "pixelshuffle" else 1]
    assert first.weight.shape == ((4 * WIDTH if how == "pixelshuffle" else WIDTH), WIDTH, 3, 3)
    x = _x(WIDTH, in_size)
    with torch.no_grad():
        expected = _steps_by_hand(f, x, how)  # [B, C, 4 * in_size, 4 * in_size]
        if expected.shape[-1] != out_size:  # the same exact resize as the original upsampler
            expected = F.interpolate(expected, size=(out_size, out_size), mode="bilinear")
        assert torch.equal(f.upsample(x), expected)


def test_upsample_bias_reaches_the_new_upsamplers():
    assert _stages(upsample="pixelshuffle", upsample_bias=False).upsample.ups[0][0].bias is None
    assert _stages(upsample="bilinear", upsample_bias=False).upsample.ups[0][1].bias is None


def test_heads_zero_builds_no_mhsa():
    f = _stages(heads=0)
    assert f.mhsa is None
    assert not any(k.startswith("mhsa") for k in f.state_dict())
    assert _stages(heads=8).mhsa.num_heads == 8


@pytest.mark.parametrize("width,groups", [(48, 24), (64, 32), (20, 20), (36, 18)])
def test_group_norm_takes_the_largest_group_count_up_to_32(width, groups):
    from ablate.model.filter_ops import group_count

    assert group_count(width) == groups
    assert group_count(1792) == 32 and group_count(1280) == 32 and group_count(7) == 7
    f = _stages(norm="group", width=width, heads=0)
    assert isinstance(f.norm, nn.GroupNorm) and f.norm.num_groups == groups


def test_norm_sits_after_conv_in_and_is_absent_when_none():
    assert isinstance(_stages(norm="batch").norm, nn.BatchNorm2d)
    assert not any(k.startswith("norm") for k in _stages().state_dict())
    f = _stages(norm="group", heads=0, channel="none", spatial="none")
    with torch.no_grad():
        f.norm.weight.copy_(torch.rand_like(f.norm.weight) + 0.5)
        f.norm.bias.copy_(torch.randn_like(f.norm.bias))
        x = _x()
        y = F.conv2d(x, f.conv_in.weight, f.conv_in.bias, padding=1)
        y = F.group_norm(y, f.norm.num_groups, f.norm.weight, f.norm.bias)
        for up in f.upsample.ups:
            y = F.conv_transpose2d(y, up.weight, up.bias, stride=2, padding=1)
        expected = F.conv2d(y, f.conv_out.weight, f.conv_out.bias, padding=1)
        torch.testing.assert_close(f(x), expected)


# ---------------------------------------------------------------------------------------
# bad settings
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("key,bad,allowed", [
    ("channel", "sk", "se, eca, cbam, none"),
    ("spatial", "se", "gate, cbam, none"),
    ("upsample", "nearest", "transposed, bilinear, pixelshuffle"),
    ("norm", "layer", "none, batch, group"),
    ("order", "both", "paper, code"),
    ("activation", "gelu", "relu, silu"),
    ("gates_on", "input", "conv, activated"),
    ("heads", 9, "0..8"),
    ("heads", -1, "0..8"),
])
def test_bad_settings_name_the_key_value_and_choices(key, bad, allowed):
    with pytest.raises(AblateError) as err:
        _stages(**{key: bad})
    message = str(err.value)
    assert f"filter.{key}={bad!r}" in message
    assert allowed in message
    assert "\n" not in message


# ---------------------------------------------------------------------------------------
# a recipe with filter=stages, end to end
# ---------------------------------------------------------------------------------------


def test_a_stages_recipe_builds_a_detector_whose_filters_run(tiny_teachers):
    from ablate.model.build import build_detector
    from ablate.model.filter_ops import ECAChannelAttention, PixelShuffleUpsampler
    from ablate.recipe import compose

    cfg = compose(["filter=stages", "filter.channel=eca", "filter.upsample=pixelshuffle",
                   "train.device=cpu"])
    assert cfg.filter.name == "stages" and cfg.filter.spatial == "gate"
    teacher = tiny_teachers[cfg.teacher.name]
    det = build_detector(cfg, teacher=teacher)
    channels = det.classifier.backbone.num_features
    grid = det.classifier.backbone.grid_size(cfg.image_size)
    latent = cfg.image_size // teacher.vae_factor
    feats = torch.randn(2, channels, grid, grid)
    for f in (det.filter_source, det.filter_target):
        assert isinstance(f.channel_attn, ECAChannelAttention)
        assert isinstance(f.upsample, PixelShuffleUpsampler)
        with torch.no_grad():
            assert f(feats).shape == (2, teacher.guide_channels, latent, latent)


def test_stages_suggests_only_heads_it_takes():
    # width 48: divisors up to 16 would include 12 and 16, which `stages` refuses (max 8)
    with pytest.raises(AblateError, match=r"filter.heads=5 does not divide the filter width 48; "
                                          r"choose heads from \[0, 1, 2, 3, 4, 6, 8\]"):
        build("filter", "stages", in_channels=48, out_channels=4, in_size=8, out_size=16,
              heads=5)
