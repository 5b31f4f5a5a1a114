"""The weight module's pooling, a structure-search axis: mean (both sources) keeps today's
module and recipe hash; max pools the grid by its maximum, checked by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ablate.core.errors import AblateError
from ablate.recipe import compose, recipe_hash
from ablate.registry import build


def hand_mlp(module: torch.nn.Module, pooled: torch.Tensor) -> torch.Tensor:
    """The paper MLP written out: Linear -> ReLU ... -> Linear -> sigmoid, [B]."""
    linears = [m for m in module.mlp if isinstance(m, torch.nn.Linear)]
    x = pooled
    for i, lin in enumerate(linears):
        x = F.linear(x, lin.weight, lin.bias)
        if i < len(linears) - 1:
            x = F.relu(x)
    return x.squeeze(1).sigmoid()


@pytest.mark.parametrize("pool,reduce", [("mean", lambda f: f.mean(dim=(2, 3))),
                                         ("max", lambda f: f.flatten(2).max(dim=2).values)])
def test_paper_weight_pools_the_grid_as_asked(pool, reduce):
    torch.manual_seed(0)
    module = build("weight", "paper", in_channels=12, widths=(8, 4), pool=pool)
    feats = torch.randn(3, 12, 5, 4)  # [B, C, h, w]
    assert torch.allclose(module(feats), hand_mlp(module, reduce(feats)), atol=1e-7)


def test_code_weight_max_pool_by_hand():
    torch.manual_seed(0)
    module = build("weight", "code", in_channels=6, widths=(5, 3), hidden=4, pool="max")
    feats = torch.randn(2, 6, 4, 4)
    conv = module.convs(feats)  # [B, 3, 4, 4]
    pooled = conv.flatten(2).max(dim=2).values  # [B, 3]
    fc1, fc2 = module.fc
    expected = F.linear(F.linear(pooled, fc1.weight, fc1.bias), fc2.weight, fc2.bias)
    assert torch.allclose(module(feats), expected.squeeze(1).sigmoid(), atol=1e-7)


def test_the_default_keeps_the_module_and_the_hash():
    torch.manual_seed(0)
    plain = build("weight", "paper", in_channels=12)
    torch.manual_seed(0)
    spelled = build("weight", "paper", in_channels=12, pool="mean")
    assert plain.state_dict().keys() == spelled.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(),
                                                 spelled.state_dict().values(), strict=True))
    assert recipe_hash(compose(["weight.pool=mean"])) == recipe_hash(compose([]))
    assert recipe_hash(compose(["weight.pool=max"])) != recipe_hash(compose([]))


def test_a_bad_pool_is_one_line():
    with pytest.raises(AblateError, match="weight.pool must be one of mean, max, not 'sum'"):
        compose(["weight.pool=sum"])
    with pytest.raises(AblateError, match="weight.pool must be one of mean, max"):
        build("weight", "paper", in_channels=4, pool="sum")
