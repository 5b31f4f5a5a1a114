"""Filters and weight modules on their own (shapes, flags, targets, errors)."""

import pytest
import torch

from ablate.core.errors import AblateError
from ablate.model.filter import FeatureFilter
from ablate.registry import build, registry

SIZES = dict(in_channels=16, out_channels=8, in_size=2, out_size=8)


@pytest.mark.parametrize("name", registry("filter").names())
def test_filter_maps_encoder_grid_to_latent_grid(name):
    f = build("filter", name, heads=4, **SIZES)
    out = f(torch.randn(3, 16, 2, 2))
    assert out.shape == (3, 8, 8, 8)
    out.sum().backward()
    assert all(p.grad is not None for p in f.parameters())


def test_filter_flags_remove_parts():
    assert build("filter", "conv_only", **SIZES).mhsa is None
    assert build("filter", "conv_only", **SIZES).channel_attn is None
    assert build("filter", "no_mhsa", **SIZES).channel_attn is not None
    assert build("filter", "no_spatial_attn", **SIZES).spatial_attn is None
    assert build("filter", "code", **SIZES).order == "code"


def test_code_order_upsamples_at_full_width_before_the_conv():
    f = build("filter", "code", width=4, heads=2, **SIZES)
    assert f.upsample.ups[0].in_channels == 16  # encoder width
    g = build("filter", "paper", width=4, heads=2, **SIZES)
    assert g.upsample.ups[0].in_channels == 4  # filter width


def test_non_power_of_two_grids_are_resized_exactly():
    f = FeatureFilter(16, 8, in_size=3, out_size=14, heads=2)
    assert f(torch.randn(1, 16, 3, 3)).shape == (1, 8, 14, 14)


def test_heads_must_divide_width():
    with pytest.raises(AblateError, match="heads=3 does not divide"):
        build("filter", "paper", heads=3, **SIZES)


def test_encoder_grid_finer_than_latent_is_refused():
    with pytest.raises(AblateError, match="finer than"):
        FeatureFilter(16, 8, in_size=16, out_size=8)


@pytest.mark.parametrize("name", ["code", "paper"])
def test_trainable_weights_are_in_unit_interval(name):
    w = build("weight", name, in_channels=16)
    out = w(torch.randn(5, 16, 2, 2) * 10)
    assert out.shape == (5,) and bool(((out > 0) & (out < 1)).all())
    assert w.has_loss


def test_paper_weight_has_five_linear_layers():
    w = build("weight", "paper", in_channels=16)
    assert sum(isinstance(m, torch.nn.Linear) for m in w.modules()) == 5


def test_code_weight_has_three_convs_and_two_fc():
    w = build("weight", "code", in_channels=16, widths=(8, 8, 4), hidden=4)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in w.modules()) == 3
    assert sum(isinstance(m, torch.nn.Linear) for m in w.modules()) == 2


def test_fixed_weights_have_no_loss():
    const = build("weight", "constant", in_channels=16, value=0.25)
    none = build("weight", "none", in_channels=16)
    x = torch.randn(2, 16, 2, 2)
    assert torch.equal(const(x), torch.full((2,), 0.25))
    assert torch.equal(none(x), torch.ones(2))
    assert not const.has_loss and not none.has_loss


def test_similarity_targets():
    cos = torch.tensor([-1.0, 0.0, 1.0])
    assert torch.equal(build("weight", "code", in_channels=4).target(cos), torch.tensor([0, 0.5, 1]))
    assert torch.equal(build("weight", "paper", in_channels=4, target="cos").target(cos), cos)
    with pytest.raises(AblateError):
        build("weight", "code", in_channels=4, target="l2")
