"""The guided detector end to end with every variant and each tiny teacher."""

import copy

import pytest
import torch

from ablate.model.build import build_detector
from ablate.recipe import compose
from ablate.registry import registry
from ablate.train import make_optimizer, train_step
from tests.conftest import TINY_TEACHERS, fixed_batch

CPU = ["train.device=cpu"]


def detector_for(overrides, teachers):
    cfg = compose([*CPU, *overrides])
    return cfg, build_detector(cfg, teacher=teachers[cfg.teacher.name])


def variant_overrides():
    cases = []
    for slot in ("filter", "weight", "guide"):  # guide=none (the baseline): tests/test_method.py
        cases += [[f"{slot}={name}"] for name in registry(slot).names() if name != "none"]
    cases += [["guide=controlnet", "guide.shared=false"], ["guide=adapter", "guide.shared=false"],
              ["weight=code", "weight.detach=true"], ["weight=paper", "weight.target=cos01"]]
    return cases


@pytest.mark.parametrize("teacher", TINY_TEACHERS)
@pytest.mark.parametrize("overrides", variant_overrides(), ids=lambda o: ",".join(o))
def test_every_variant_runs_one_guided_step(teacher, overrides, tiny_teachers):
    cfg, det = detector_for([f"teacher={teacher}", *overrides], tiny_teachers)
    opt = make_optimizer(cfg, [p for p in det.parameters() if p.requires_grad])
    terms = train_step(det, fixed_batch(), opt, torch.device("cpu"), 1.0)
    assert {"total", "ce", "source", "target"} <= set(terms)
    assert all(torch.isfinite(torch.tensor(v)) for v in terms.values())
    has_weight_loss = registry("weight").get(cfg.weight.name).factory is not None and \
        det.weight_source.has_loss
    assert ("weight_source" in terms) == has_weight_loss


@pytest.mark.parametrize("backbone", ["tiny", "small", "vit"])
def test_backbones_run_one_guided_step(backbone, tiny_teachers):
    over = (["backbone=timm", "backbone.model_name=test_vit"] if backbone == "vit"
            else [f"backbone={backbone}"])
    cfg, det = detector_for(over, tiny_teachers)
    opt = make_optimizer(cfg, [p for p in det.parameters() if p.requires_grad])
    terms = train_step(det, fixed_batch(), opt, torch.device("cpu"), 1.0)
    assert torch.isfinite(torch.tensor(terms["total"]))


@pytest.mark.slow  # seconds of training or many steps: not in make test-fast
@pytest.mark.parametrize("teacher", TINY_TEACHERS)
def test_loss_decreases_on_a_fixed_batch(teacher, tiny_teachers):
    cfg, det = detector_for([f"teacher={teacher}", "train.lr=1e-3"], tiny_teachers)
    opt = make_optimizer(cfg, [p for p in det.parameters() if p.requires_grad])
    batch = fixed_batch()
    torch.manual_seed(0)
    first = [train_step(det, batch, opt, torch.device("cpu"), 1.0)["total"] for _ in range(5)]
    for _ in range(25):
        train_step(det, batch, opt, torch.device("cpu"), 1.0)
    last = [train_step(det, batch, opt, torch.device("cpu"), 1.0)["total"] for _ in range(5)]
    assert sum(last) / 5 < 0.8 * sum(first) / 5, (first, last)


@pytest.mark.parametrize("guide", ["controlnet", "adapter"])
@pytest.mark.parametrize("teacher", TINY_TEACHERS)
def test_zero_convs_make_guided_prediction_equal_plain_teacher(guide, teacher, tiny_teachers):
    cfg, det = detector_for([f"teacher={teacher}", f"guide={guide}"], tiny_teachers)
    t = det.teacher
    g = torch.Generator().manual_seed(1)
    noisy = torch.randn(2, t.latent_channels, 8, 8, generator=g)
    steps = torch.tensor([10, 900])
    cond = torch.randn(2, t.unet.config.block_out_channels[0], 8, 8, generator=g)
    kwargs = t.conditioning(2, 64)
    downs, mid = det.guide(noisy, steps, cond, kwargs)
    assert all(torch.count_nonzero(d) == 0 for d in downs) and torch.count_nonzero(mid) == 0
    with torch.no_grad():
        guided = t.predict(noisy, steps, downs, mid)
        plain = t.unet(noisy, steps, **kwargs).sample  # diffusers' UNet directly
    torch.testing.assert_close(guided, plain, rtol=0, atol=1e-6)


def test_controlnet_guide_starts_as_a_copy_of_the_teacher_encoder(tiny_teachers):
    _, det = detector_for(["guide=controlnet"], tiny_teachers)
    net, unet = det.guide.nets[0], det.teacher.unet
    for a, b in zip(net.down_blocks.parameters(), unet.down_blocks.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(net.conv_in.weight, unet.conv_in.weight)
    assert net.conv_in.weight.data_ptr() != unet.conv_in.weight.data_ptr()  # a copy


def test_separate_guides_are_two_networks(tiny_teachers):
    _, shared = detector_for(["guide.shared=true"], tiny_teachers)
    _, separate = detector_for(["guide.shared=false"], tiny_teachers)
    assert len(shared.guide.nets) == 1 and len(separate.guide.nets) == 2


def test_teacher_frozen_and_guide_trained(tiny_teachers):
    cfg, det = detector_for(["train.lr=1e-3"], tiny_teachers)
    teacher_before = copy.deepcopy(det.teacher.state_dict())
    guide_before = copy.deepcopy(det.guide.state_dict())
    opt = make_optimizer(cfg, [p for p in det.parameters() if p.requires_grad])
    for _ in range(3):
        train_step(det, fixed_batch(), opt, torch.device("cpu"), 1.0)
    for k, v in det.teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k
    changed = [k for k, v in det.guide.state_dict().items() if not torch.equal(v, guide_before[k])]
    assert any("controlnet_down_blocks" in k for k in changed)  # the zero convs moved
    assert any("down_blocks" in k and "controlnet" not in k for k in changed)
    assert all(not p.requires_grad for p in det.teacher.parameters())


def test_same_timestep_and_noise_for_both_branches(tiny_teachers, monkeypatch):
    _, det = detector_for([], tiny_teachers)
    seen = {}
    real_add_noise = det.teacher.add_noise

    def spy(latents, noise, timesteps):
        seen.update(noise=noise, t=timesteps)
        return real_add_noise(latents, noise, timesteps)

    monkeypatch.setattr(det.teacher, "add_noise", spy)
    b = fixed_batch()
    det.guided_losses(b["image"], b["source"], b["target"], b["label"])
    half = seen["noise"].shape[0] // 2
    assert torch.equal(seen["noise"][:half], seen["noise"][half:])
    assert torch.equal(seen["t"][:half], seen["t"][half:])


def test_loss_weights_follow_the_recipe(tiny_teachers):
    _, det = detector_for(["loss.source=0", "loss.target=0", "loss.weight_source=0",
                           "loss.weight_target=0"], tiny_teachers)
    b = fixed_batch()
    losses = det.guided_losses(b["image"], b["source"], b["target"], b["label"])
    torch.testing.assert_close(losses["total"], losses["ce"])
    _, paper = detector_for(["recipe=paper", "backbone=tiny", "teacher=tiny-sd15", "image_size=64"],
                            tiny_teachers)
    assert (paper.loss_weights.source, paper.loss_weights.target) == (0.7, 1.0)
