"""`filter=code` is the released filter exactly; `filter=paper` keeps its earlier choices.

The reference forward below is written out with torch.nn.functional on the module's own
weights, so a change inside FeatureFilter cannot silently move both sides at once.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ablate.registry import build

C_IN, C_OUT, WIDTH, HEADS = 8, 6, 16, 4
SIZES = dict(in_channels=C_IN, out_channels=C_OUT, in_size=4, out_size=16, width=WIDTH, heads=HEADS)


def _filter(name: str) -> nn.Module:
    torch.manual_seed(0)
    return build("filter", name, **SIZES).double().eval()


def _attention(f: nn.Module, query: Tensor, kv: Tensor) -> Tensor:
    """Per-head softmax attention, [B, N, C] -> [B, N, C], on f.mhsa's packed weights."""
    b, n, c = query.shape
    d = c // HEADS
    wq, wk, wv = f.mhsa.in_proj_weight.chunk(3)
    bq, bk, bv = f.mhsa.in_proj_bias.chunk(3)

    def heads(t: Tensor) -> Tensor:  # [B, N, C] -> [B, heads, N, d]
        return t.reshape(b, n, HEADS, d).transpose(1, 2)

    q, k, v = heads(query @ wq.T + bq), heads(kv @ wk.T + bk), heads(kv @ wv.T + bv)
    weights = torch.softmax(q @ k.transpose(-1, -2) / d**0.5, dim=-1)  # [B, heads, N, N]
    out = (weights @ v).transpose(1, 2).reshape(b, n, c)  # [B, N, C]
    return out @ f.mhsa.out_proj.weight.T + f.mhsa.out_proj.bias


def _upsample(f: nn.Module, x: Tensor, bias: bool) -> Tensor:
    for up in f.upsample.ups:  # each [B, C, s, s] -> [B, C, 2s, 2s]
        x = F.conv_transpose2d(x, up.weight, up.bias if bias else None, stride=2, padding=1)
    return x


def reference(
    f: nn.Module,
    x: Tensor,
    order: str,
    act: Callable[[Tensor], Tensor],
    gates_on_activated: bool,
    query_activated: bool = True,
    kv_gated: bool = True,
    upsample_bias: bool = False,
) -> Tensor:
    """The filter by hand; the keyword switches exist to show the test sees each detail."""
    if order == "code":
        x = _upsample(f, x, upsample_bias)  # [B, C_in, 16, 16]
    y = F.conv2d(x, f.conv_in.weight, f.conv_in.bias, padding=1)  # pre-activation
    a = act(y)
    g_in = a if gates_on_activated else y
    se = f.channel_attn.gate
    pooled = g_in.mean(dim=(2, 3), keepdim=True)  # [B, W, 1, 1]
    channel = torch.sigmoid(F.conv2d(F.relu(F.conv2d(pooled, se[1].weight, se[1].bias)),
                                     se[3].weight, se[3].bias))  # [B, W, 1, 1]
    sconv = f.spatial_attn.conv
    spatial = torch.sigmoid(F.conv2d(g_in, sconv.weight, sconv.bias, padding=1))  # [B, 1, H, W]
    gated = y * channel * spatial  # applied to the pre-activation output
    b, c, h, w = y.shape
    tokens = (a if query_activated else y).flatten(2).transpose(1, 2)  # [B, HW, W]
    kv = (gated if kv_gated else y).flatten(2).transpose(1, 2)  # [B, HW, W]
    z = _attention(f, tokens, kv).transpose(1, 2).reshape(b, c, h, w)  # no residual, no norm
    if order == "paper":
        z = _upsample(f, z, upsample_bias)  # [B, W, 16, 16]
    return F.conv2d(z, f.conv_out.weight, f.conv_out.bias, padding=1)  # [B, C_out, 16, 16]


@pytest.fixture
def x() -> Tensor:
    return torch.randn(2, C_IN, 4, 4, generator=torch.Generator().manual_seed(1)).double()


def test_code_filter_matches_the_hand_written_released_forward(x):
    f = _filter("code")
    out = f(x)
    assert out.shape == (2, C_OUT, 16, 16)
    torch.testing.assert_close(out, reference(f, x, "code", F.silu, gates_on_activated=True))


@pytest.mark.parametrize(
    "wrong",
    [
        dict(act=F.relu),  # ReLU instead of SiLU
        dict(gates_on_activated=False),  # gates on the pre-activation output
        dict(query_activated=False),  # query = the raw conv output
        dict(kv_gated=False),  # key/value = ungated features
    ],
    ids=["relu", "gates_on_conv", "raw_query", "ungated_kv"],
)
def test_the_reference_tells_each_code_detail_apart(x, wrong):
    f = _filter("code")
    kwargs = dict(act=F.silu, gates_on_activated=True) | wrong
    assert not torch.allclose(f(x), reference(f, x, "code", **kwargs))


def test_code_filter_structure():
    f = _filter("code")
    assert isinstance(f.act, nn.SiLU)
    assert f.gates_on == "activated"
    assert len(f.upsample.ups) == 2
    assert all(up.bias is None for up in f.upsample.ups)


def test_paper_filter_is_unchanged(x):
    f = _filter("paper")
    assert isinstance(f.act, nn.ReLU) and f.gates_on == "conv"
    assert all(up.bias is not None for up in f.upsample.ups)
    expected = reference(f, x, "paper", F.relu, gates_on_activated=False, upsample_bias=True)
    torch.testing.assert_close(f(x), expected)


def test_state_dict_keys_stay_put():
    """Checkpoints of earlier runs still load; `code` only loses the transposed-conv biases."""
    common = {
        "conv_in.weight", "conv_in.bias", "conv_out.weight", "conv_out.bias",
        "channel_attn.gate.1.weight", "channel_attn.gate.1.bias",
        "channel_attn.gate.3.weight", "channel_attn.gate.3.bias",
        "spatial_attn.conv.weight", "spatial_attn.conv.bias",
        "mhsa.in_proj_weight", "mhsa.in_proj_bias", "mhsa.out_proj.weight", "mhsa.out_proj.bias",
    }
    ups = {f"upsample.ups.{i}.weight" for i in range(2)}
    biases = {f"upsample.ups.{i}.bias" for i in range(2)}
    assert set(_filter("paper").state_dict()) == common | ups | biases
    assert set(_filter("code").state_dict()) == common | ups
