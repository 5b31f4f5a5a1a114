"""The guide's structure as a search axis (`guide.blocks`, `guide.inject`, `guide.zero_init`,
`guide.depth`): the defaults build exactly today's modules, every other point is what its
keys say, and a key the teacher cannot take is one line at build time."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import ControlNetModel
from safetensors.torch import load_file
from torch import nn

from ablate.core.errors import AblateError
from ablate.model.build import build_detector
from ablate.model.guide import (
    ConvPyramid,
    UNetControlNet,
    adapter_guide,
    controlnet_guide,
    residual_shapes,
)
from ablate.recipe import compose, recipe_hash
from tests.conftest import TINY_RUN

SIZE = (6, 5)  # latent h, w: odd on purpose (a stride-2 conv rounds up)


def _inputs(teacher, n: int = 2):
    g = torch.Generator().manual_seed(3)
    noisy = torch.randn(n, teacher.latent_channels, *SIZE, generator=g)
    steps = torch.tensor([10, 900][:n])
    cond = torch.randn(n, teacher.guide_channels, *SIZE, generator=g)
    kwargs = teacher.conditioning(n, (SIZE[0] * 8, SIZE[1] * 8))
    return noisy, steps, cond, kwargs


@torch.no_grad()
def _randomise_projections(net: nn.Module) -> nn.Module:
    """Projections to random values: a zero-initialised one would make every check 0 == 0."""
    g = torch.Generator().manual_seed(7)
    for name, p in net.named_parameters():
        if name.startswith(("controlnet_down_blocks", "controlnet_mid_block")):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return net


def _full(unet) -> nn.Module:
    """Today's copy, built the way it was before the structure keys (diffusers alone)."""
    net = ControlNetModel.from_unet(unet, load_weights_from_unet=True)
    net.controlnet_cond_embedding = nn.Identity()
    return _randomise_projections(net)


def _same_weights(net: nn.Module, full: nn.Module) -> nn.Module:
    """`net` (a part of the copy) with `full`'s weights: every key of `net` is one of full's."""
    missing, _ = net.load_state_dict(full.state_dict(), strict=False)
    assert not missing, missing
    return net


@torch.no_grad()
def _run(net, teacher):
    noisy, steps, cond, kwargs = _inputs(teacher)
    if isinstance(net, UNetControlNet):
        return net.residuals(noisy, steps, cond, kwargs)
    down, mid = net(noisy, steps, controlnet_cond=cond, return_dict=False, **kwargs)
    return list(down), mid


def _expected_shapes(teacher):
    """What the teacher's UNet takes: its own encoder's skip connections on the input."""
    noisy, steps, _, kwargs = _inputs(teacher)
    unet = teacher.unet
    with torch.no_grad():
        emb = unet.time_embedding(unet.time_proj(steps).to(noisy.dtype))
        if unet.config.addition_embed_type == "text_time":
            add = kwargs["added_cond_kwargs"]
            time = unet.add_time_proj(add["time_ids"].flatten()).reshape(len(steps), -1)
            emb = emb + unet.add_embedding(torch.cat([add["text_embeds"], time], -1))
        x = unet.conv_in(noisy)
        shapes = [x.shape]
        for block in unet.down_blocks:
            if getattr(block, "has_cross_attention", False):
                x, res = block(x, emb, encoder_hidden_states=kwargs["encoder_hidden_states"])
            else:
                x, res = block(x, emb)
            shapes += [r.shape for r in res]
    return shapes, x.shape


def _trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# --- the default point is today's build -------------------------------------------------------


@pytest.mark.parametrize("teacher", ["tiny-sd15", "tiny-sdxl"])
def test_default_build_is_todays_copy(teacher, tiny_teachers):
    t = tiny_teachers[teacher]
    full = _full(t.unet)
    guide = controlnet_guide(t)  # the registry's factory at every default
    net = guide.nets[0]
    assert {k: v.shape for k, v in net.state_dict().items()} == {
        k: v.shape for k, v in full.state_dict().items()}
    for a, b in zip(net.controlnet_down_blocks, full.controlnet_down_blocks, strict=True):
        assert torch.count_nonzero(a.weight) == 0 and torch.count_nonzero(a.bias) == 0
        assert a.weight.shape == b.weight.shape
    assert torch.count_nonzero(net.controlnet_mid_block.weight) == 0
    net.load_state_dict(full.state_dict())  # strict: exactly the same keys
    (downs, mid), (ref_downs, ref_mid) = _run(net, t), _run(full, t)
    assert len(downs) == len(ref_downs)
    for a, b in zip(downs, ref_downs, strict=True):
        assert torch.count_nonzero(b) > 0
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(mid, ref_mid, rtol=0, atol=0)


# --- guide.blocks: a truncated copy -----------------------------------------------------------


@pytest.mark.parametrize("teacher", ["tiny-sd15", "tiny-sdxl"])
@pytest.mark.parametrize("blocks", [1, 2])
def test_truncated_copy_gives_the_full_copys_first_residuals(blocks, teacher, tiny_teachers):
    t = tiny_teachers[teacher]
    full = _full(t.unet)
    net = _same_weights(UNetControlNet.copy_of(t.unet, blocks=blocks), full)
    assert len(net.down_blocks) == blocks and net.mid_block is None
    (downs, mid), (ref_downs, ref_mid) = _run(net, t), _run(full, t)
    down_shapes, mid_shape = _expected_shapes(t)
    assert [d.shape for d in downs] == down_shapes == [r.shape for r in ref_downs]
    assert mid.shape == mid_shape == ref_mid.shape
    held = 1 + sum(len(b.resnets) + bool(b.downsamplers) for b in t.unet.down_blocks[:blocks])
    for i, (a, b) in enumerate(zip(downs, ref_downs, strict=True)):
        if i < held:
            assert torch.count_nonzero(b) > 0
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        else:
            assert torch.count_nonzero(a) == 0, i
    assert torch.count_nonzero(mid) == 0
    assert sum(p.numel() for p in net.parameters()) < sum(p.numel() for p in full.parameters())
    # its residuals go into the teacher as they are
    noisy, steps, _, _ = _inputs(t)
    with torch.no_grad():
        assert t.predict(noisy, steps, downs, mid).shape == noisy.shape


# --- guide.inject ------------------------------------------------------------------------------


def test_inject_mid_zeroes_every_down_residual_and_drops_their_projections(tiny_teachers):
    t = tiny_teachers["tiny-sd15"]
    full = _full(t.unet)
    net = _same_weights(UNetControlNet.copy_of(t.unet, inject="mid"), full)
    (downs, mid), (_, ref_mid) = _run(net, t), _run(full, t)
    assert all(torch.count_nonzero(d) == 0 for d in downs)
    assert torch.count_nonzero(ref_mid) > 0
    torch.testing.assert_close(mid, ref_mid, rtol=1e-5, atol=1e-6)
    downs_layout, _ = residual_shapes(t.unet)
    projections = sum(c * c + c for c, _ in downs_layout)  # 1x1 conv c -> c, with bias
    assert _trainable(controlnet_guide(t, inject="mid")) == _trainable(controlnet_guide(t)) - projections


def test_inject_deepest_k_and_a_list(tiny_teachers):
    t = tiny_teachers["tiny-sd15"]
    full = _full(t.unet)
    ref_downs, ref_mid = _run(full, t)
    n = len(ref_downs)
    for inject, kept, has_mid in ((1, {n - 1}, True), ([0, 2], {0, 2}, False),
                                  ([1, "mid"], {1}, True)):
        net = _same_weights(UNetControlNet.copy_of(t.unet, inject=inject), full)
        downs, mid = _run(net, t)
        for i, (a, b) in enumerate(zip(downs, ref_downs, strict=True)):
            if i in kept:
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
            else:
                assert torch.count_nonzero(a) == 0, (inject, i)
        if has_mid:
            torch.testing.assert_close(mid, ref_mid, rtol=1e-5, atol=1e-6)
        else:
            assert torch.count_nonzero(mid) == 0 and net.mid_block is None
        built = {int(k.split(".")[1]) for k in net.state_dict() if
                 k.startswith("controlnet_down_blocks.")}
        assert built == kept, inject


@pytest.mark.parametrize(("args", "names"), [
    ({"inject": [0, 9]}, ["entry 9", "indices 0..3 and mid"]),
    ({"inject": ["mid", "deep"]}, ["'deep'", "0..3"]),
    ({"blocks": 1, "inject": "mid"}, ["guide.inject=mid", "guide.blocks=1"]),
    ({"blocks": 1, "inject": [0, "mid"]}, ["'mid'", "indices 0..2"]),
    ({"inject": 5}, ["guide.inject=5", "1..4"]),
    ({"blocks": 3}, ["guide.blocks=3", "1..2"]),
    ({"inject": [0, "mid", "mid"]}, ["listed twice"]),  # one module would get two hashes
    ({"blocks": 1, "inject": "mid"}, ["indices 0..2, or set guide.blocks=null"]),
    ({"zero_init": "no"}, ["guide.zero_init must be true or false, not 'no'"]),
    ({"zero_init": 0}, ["guide.zero_init must be true or false"]),
])
def test_a_bad_structure_is_one_line_at_build(args, names, tiny_teachers):
    with pytest.raises(AblateError) as info:
        controlnet_guide(tiny_teachers["tiny-sd15"], **args)
    message = str(info.value)
    assert "\n" not in message and all(n in message for n in names), message


def test_a_bad_inject_from_the_recipe_fails_when_the_detector_is_built(tiny_teachers):
    cfg = compose(["train.device=cpu", "guide.inject=[1,7]"])
    with pytest.raises(AblateError, match=r"^guide.inject: entry 7 .*0\.\.3[^\n]*$"):
        build_detector(cfg, teacher=tiny_teachers["tiny-sd15"])


class _Transformer(nn.Module):
    """A transformer teacher as the guide factories see it (its `controlnet` never runs)."""

    denoiser_name, name = "transformer", "tiny-sd3"

    def controlnet(self, layers=None):  # noqa: ANN001, ANN201
        return nn.Linear(1, 1)

    def adapter(self, width):  # noqa: ANN001, ANN201
        return nn.Linear(1, 1)


@pytest.mark.parametrize("args", [{"blocks": 1}, {"inject": "mid"}, {"inject": [0]},
                                  {"zero_init": False}])
def test_unet_structure_keys_on_a_transformer_teacher_are_one_line(args):
    with pytest.raises(AblateError) as info:
        controlnet_guide(_Transformer(), **args)
    message = str(info.value)
    assert "\n" not in message and "guide.layers" in message and "tiny-sd3" in message
    controlnet_guide(_Transformer(), layers=2)  # the transformer's own key still builds
    with pytest.raises(AblateError, match=r"^guide.depth=2: for UNet teachers only[^\n]*$"):
        adapter_guide(_Transformer(), depth=2)
    with pytest.raises(AblateError, match=r"^guide.zero_init must be true or false"):
        adapter_guide(_Transformer(), zero_init="off")  # text YAML reads as true otherwise


# --- guide.zero_init ---------------------------------------------------------------------------


def test_zero_init_false_gives_nonzero_residuals_from_the_start(tiny_teachers):
    t = tiny_teachers["tiny-sd15"]
    for args in ({"zero_init": False}, {"zero_init": False, "blocks": 1}):
        downs, mid = _run(controlnet_guide(t, **args).nets[0], t)
        held = 4 if "blocks" not in args else 3
        assert all(torch.count_nonzero(d) > 0 for d in downs[:held]), args
        assert (torch.count_nonzero(mid) > 0) == ("blocks" not in args)
    downs, mid = _run(controlnet_guide(t).nets[0], t)
    assert all(torch.count_nonzero(d) == 0 for d in [*downs, mid])


# --- the adapter -------------------------------------------------------------------------------


def test_adapter_depth_and_zero_init(tiny_teachers):
    t = tiny_teachers["tiny-sd15"]
    default = adapter_guide(t).nets[0]
    assert isinstance(default, ConvPyramid)
    # today's pyramid: one conv + SiLU per level, a zero 1x1 per residual
    assert [k for k in default.state_dict() if k.startswith("stages.")] == [
        f"stages.{lvl}.0.{p}" for lvl in range(len(default.stages)) for p in ("weight", "bias")]
    assert all(len(s) == 2 for s in default.stages)
    assert all(torch.count_nonzero(p) == 0 for n, p in default.named_parameters()
               if not n.startswith("stages."))
    deep = adapter_guide(t, depth=3).nets[0]
    assert all(len(s) == 6 for s in deep.stages)
    extra = sum(p.numel() for s in deep.stages for p in s[2:].parameters())
    assert sum(p.numel() for p in deep.parameters()) == sum(
        p.numel() for p in default.parameters()) + extra > 0
    _, _, cond, _ = _inputs(t)
    with torch.no_grad():
        shapes = [d.shape for d in default(cond)[0]]
        assert [d.shape for d in deep(cond)[0]] == shapes
        assert all(torch.count_nonzero(d) == 0 for d in deep(cond)[0])
        live = adapter_guide(t, zero_init=False).nets[0](cond)
    assert all(torch.count_nonzero(d) > 0 for d in [*live[0], live[1]])
    assert [d.shape for d in live[0]] == shapes


# --- recipe hashes ----------------------------------------------------------------------------


def test_structure_keys_leave_the_default_hash_alone_and_change_any_other():
    base = recipe_hash(compose([]))
    spelled = compose(["guide.blocks=null", "guide.inject=all", "guide.zero_init=true"])
    assert recipe_hash(spelled) == base
    for override in ("guide.inject=mid", "guide.inject=2", "guide.inject=[0,mid]",
                     "guide.blocks=1", "guide.zero_init=false"):
        assert recipe_hash(compose([override])) != base, override
    adapter = recipe_hash(compose(["guide=adapter"]))
    assert recipe_hash(compose(["guide=adapter", "guide.depth=1"])) == adapter
    assert recipe_hash(compose(["guide=adapter", "guide.depth=2"])) != adapter
    assert recipe_hash(compose(["guide=adapter", "guide.zero_init=false"])) != adapter


# --- a guided training run at a non-default point --------------------------------------------


def test_a_truncated_guide_trains(tmp_path):
    from ablate.train import train

    cfg = compose([*TINY_RUN, "train.steps=2", "guide.blocks=1", "guide.inject=1",
                   f"run.out_dir={tmp_path}", "run.name=r"])
    folder = train(cfg, progress=False).folder
    run = json.loads((folder / "run.json").read_text())
    assert run["recipe_hash"] == recipe_hash(cfg) != recipe_hash(compose(TINY_RUN))
    saved = load_file(str(folder / "trainable.safetensors"))
    projections = sorted(k for k in saved if "controlnet_down_blocks" in k or "mid_block" in k)
    # one residual injected (block 0's downsampler output, index 2): one projection, no mid
    assert [k.split("controlnet_down_blocks.")[1] for k in projections] == ["2.bias", "2.weight"]
    assert any(torch.count_nonzero(saved[k]) > 0 for k in projections)  # it trained
