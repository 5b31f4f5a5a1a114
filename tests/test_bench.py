"""The fast guided step computes what the straightforward one does; the latent cache
serves each image once per teacher; `ablate bench --json` runs. No timings here:
they belong to the benchmark (BENCHMARKS.md), not to tests.

Tolerance of the equivalence (fp32): losses rtol 1e-5, gradients rtol 1e-4 / atol 1e-6
per tensor and 1e-5 relative in global norm. Both steps draw the same latents, noise
and timesteps from one seeded generator, so they differ only by fp32 rounding: 2B-
batched and B-sized kernels sum in different orders (measured: ~6e-7 global, losses
equal to ~1e-7). bf16 autocast is held to its own precision (8 mantissa bits): losses
rtol 2e-2, gradients 10% global error and cosine > 0.995 (measured: 3.5%, 0.9996).
"""

import json

import pytest
import torch
from click.testing import CliRunner

from ablate.cli import cli
from ablate.core.errors import AblateError
from ablate.model.build import build_detector
from ablate.model.latent_cache import LatentCache, content_keys, vae_fingerprint
from ablate.model.speed import Speed, configure_detector
from ablate.recipe import compose
from ablate.train import train_step
from tests.conftest import fixed_batch

CPU = torch.device("cpu")


def detector_for(overrides, teachers):
    cfg = compose(["train.device=cpu", *overrides])
    det = build_detector(cfg, teacher=teachers[cfg.teacher.name])
    with torch.no_grad():  # non-zero "zero convs": gradients reach every guide weight
        g = torch.Generator().manual_seed(3)
        for name, p in det.guide.named_parameters():
            if any(k in name for k in ("controlnet_down", "controlnet_mid", "down_convs",
                                       "mid_conv")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return det


def step(det, batch, speed, cache):
    """Losses and gradients of one train step; lr 0 so the weights stay put."""
    configure_detector(det, speed)
    opt = torch.optim.SGD([p for p in det.parameters() if p.requires_grad], lr=0.0)
    losses = train_step(det, batch, opt, CPU, None, speed, cache,
                        torch.Generator().manual_seed(7))
    grads = {n: p.grad.clone() for n, p in det.named_parameters() if p.grad is not None}
    return losses, grads


@pytest.fixture
def restore(tiny_teachers):
    """The session's teachers are shared: put their kernels back after a test."""
    yield
    for teacher in tiny_teachers.values():
        teacher.unet.disable_gradient_checkpointing()
        teacher.unet.to(memory_format=torch.contiguous_format)


def global_error(grads, ref):
    diff = sum(((grads[n] - ref[n]) ** 2).sum() for n in ref) ** 0.5
    return float(diff / sum((ref[n] ** 2).sum() for n in ref) ** 0.5)


@pytest.mark.slow  # seconds of training or many steps: not in make test-fast
@pytest.mark.parametrize("overrides", [
    [],
    ["teacher=tiny-sd21", "guide.shared=false", "weight=code"],
    ["teacher=tiny-sdxl", "guide=adapter", "weight.detach=true"],
], ids=["sd15-shared", "sd21-separate", "sdxl-adapter"])
@pytest.mark.parametrize("speed", [Speed(), Speed(channels_last=True, grad_checkpointing=True),
                                   Speed(branch_backward=True),
                                   Speed(branch_backward=True, grad_checkpointing=True)],
                         ids=["defaults", "channels_last+ckpt", "branch_backward",
                              "branch_backward+ckpt"])
def test_optimised_step_equals_straightforward(overrides, speed, tiny_teachers, restore):
    det = detector_for(overrides, tiny_teachers)
    batch = fixed_batch()
    ref_losses, ref_grads = step(det, batch, Speed.straightforward(), None)
    cache = LatentCache()
    for _ in range(2):  # cold cache (encode), then warm (every posterior from the cache)
        losses, grads = step(det, batch, speed, cache)
        assert losses.keys() == ref_losses.keys()
        for key, value in losses.items():
            assert value == pytest.approx(ref_losses[key], rel=1e-5, abs=1e-7), key
        assert grads.keys() == ref_grads.keys()
        for name, grad in grads.items():
            # atol scales with the parameter's own gradients. The weight module's (~3e-4 at
            # most) are ill-conditioned: checkpointed channels-last convs round the features
            # ~1e-6 apart and its gradients move up to ~6e-6 (measured at torch seed 0); a
            # real difference in what is computed moves them by their own size
            ref = ref_grads[name]
            atol = 1e-6 + 5e-2 * float(ref.abs().max())
            torch.testing.assert_close(grad, ref, rtol=1e-4, atol=atol, msg=name)
        assert global_error(grads, ref_grads) < 5e-5  # 2.2e-5 measured, same seed
    assert cache.misses == 8 and cache.hits == 8  # 4 images + 2 sources + 2 targets, once


@pytest.mark.parametrize("teacher", ["tiny-sd3", "tiny-flux"])
def test_branch_backward_gives_the_joint_gradients_with_transformer_teachers(teacher):
    """Freeing each branch early (train.branch_backward) through the DiT guides as well."""
    from ablate.registry import build

    det = detector_for([f"teacher={teacher}"], {teacher: build("teacher", teacher)})
    with torch.no_grad():  # their zero projections too: gradients reach the whole copy
        g = torch.Generator().manual_seed(5)
        for name, p in det.guide.named_parameters():
            if "controlnet_" in name or "proj" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
    batch = fixed_batch()
    ref_losses, ref_grads = step(det, batch, Speed.straightforward(), None)
    losses, grads = step(det, batch, Speed(branch_backward=True), None)
    for key, value in losses.items():
        assert value == pytest.approx(ref_losses[key], rel=1e-5, abs=1e-7), key
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow  # seconds of training or many steps: not in make test-fast
@pytest.mark.parametrize("branch_backward", [False, True])
def test_bf16_step_stays_close_to_fp32(branch_backward, tiny_teachers, restore):
    det = detector_for([], tiny_teachers)
    batch = fixed_batch()
    ref_losses, ref_grads = step(det, batch, Speed.straightforward(), None)
    losses, grads = step(det, batch, Speed(precision="bf16", branch_backward=branch_backward),
                         LatentCache())
    for key, value in losses.items():
        assert value == pytest.approx(ref_losses[key], rel=2e-2, abs=1e-4), key
    assert global_error(grads, ref_grads) < 0.1
    flat = torch.cat([grads[n].flatten() for n in ref_grads]).double()
    ref = torch.cat([ref_grads[n].flatten() for n in ref_grads]).double()
    assert torch.nn.functional.cosine_similarity(flat, ref, dim=0) > 0.995


def test_cache_encodes_each_image_once_per_teacher(tiny_teachers, monkeypatch):
    teacher = tiny_teachers["tiny-sd15"]
    calls = []
    encode = teacher.vae.encode
    monkeypatch.setattr(teacher.vae, "encode", lambda x: calls.append(len(x)) or encode(x))
    b = fixed_batch()
    images = torch.cat([b["image"], b["source"], b["target"]])  # [12, 3, 64, 64]
    cache = LatentCache()
    first = cache.posteriors(teacher, images)
    assert calls == [8]  # reals are their own source and target: 8 distinct images
    again = cache.posteriors(teacher, images)
    assert calls == [8] and torch.equal(first, again)
    assert first.shape == (12, 8, 8, 8)  # [3B, 2 x 4 latent channels, 64/8, 64/8]
    assert (cache.misses, cache.hits) == (8, 8)
    other = cache.posteriors(tiny_teachers["tiny-sd21"], images[:1])
    assert cache.misses == 9 and other.shape == (1, 8, 8, 8)  # another teacher: its own entry
    assert vae_fingerprint(teacher) != vae_fingerprint(tiny_teachers["tiny-sd21"])


def test_keys_follow_content_not_identity():
    x = torch.rand(2, 3, 8, 8)
    keys = content_keys(torch.cat([x, x.clone(), x.flip(-1)]))
    assert keys[:2] == keys[2:4] and keys[0] != keys[4]


def test_disk_cache_is_reused_by_a_new_cache(tiny_teachers, tmp_path, monkeypatch):
    teacher = tiny_teachers["tiny-sd15"]
    images = fixed_batch()["image"]
    first = LatentCache(tmp_path).posteriors(teacher, images)
    monkeypatch.setattr(teacher.vae, "encode", lambda x: pytest.fail("encoded again"))
    second = LatentCache(tmp_path).posteriors(teacher, images)
    assert torch.equal(first, second)


def test_memory_budget_evicts_oldest(tiny_teachers):
    teacher = tiny_teachers["tiny-sd15"]
    entry_mb = 8 * 8 * 8 * 4 / 2**20  # one float32 posterior [8, 8, 8]
    cache = LatentCache(max_memory_mb=2.5 * entry_mb)
    cache.posteriors(teacher, fixed_batch()["image"])
    assert len(cache) == 2


def test_speed_settings_resolve_and_reject():
    cfg = compose(["train.device=cpu"])
    speed = Speed.from_config(cfg.train, CPU)
    assert (speed.precision, speed.channels_last, speed.latent_cache) == ("fp32", False, True)
    assert Speed.from_config(compose(["train.precision=bf16"]).train, CPU).precision == "bf16"
    with pytest.raises(AblateError, match="train.precision"):
        Speed.from_config(compose(["train.precision=fp8"]).train, CPU)


@pytest.mark.slow  # seconds of training or many steps: not in make test-fast
def test_bench_json_runs_on_a_tiny_recipe():
    args = ["bench", "--json", "--device", "cpu", "--warmup", "1", "--repeats", "2",
            "--eval-batches", "1", "--eval-batch-size", "4", "train.batch_size=2"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    phases = {"encoder", "baseline", "eval", "eval_model", "bare", "guided", "guided_cold",
              "straightforward"}
    assert set(report["results"]) == phases
    assert all(r["median_s"] > 0 and r["repeats"] == 2 for r in report["results"].values())
    assert report["ratios"]["straightforward_over_guided"] > 0
    assert report["ratios"]["baseline_over_encoder"] > 0  # guide=none through train_step
    assert report["goals"]["gpu_peak"]["met"] is None  # no GPU: pending, with its command
    assert report["batch_size"] == 2 and report["speed"]["latent_cache"] is True
    assert report["results"]["guided"]["flops"] > 0  # counted once, outside the timed calls
    assert report["mfu"]["achieved_tflops"] > 0 and report["mfu"]["mfu"] is None  # no CPU peak


def test_sweep_overhead_from_tune_results(tmp_path):
    from ablate.bench.overhead import sweep_overhead

    for i, (end, total) in enumerate([(110.0, 100.0), (120.0, 100.0), (200.0, 70.0)]):
        folder = tmp_path / "s" / f"trial{i}"
        folder.mkdir(parents=True)
        lines = [{"timestamp": end - 5, "time_total_s": total - 5},
                 {"timestamp": end, "time_total_s": total}]
        (folder / "result.json").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    # trials over [10, 110], [20, 120], [130, 200]: 270 s of compute, 2 at once
    found = sweep_overhead("s", wall_s=200.0, ray_dir=tmp_path)
    assert found.concurrency == 2 and found.trial_compute_s == 270.0
    assert found.slot_overhead == pytest.approx((200 - 135) / 200)
    assert found.idle_overhead == pytest.approx((200 - 180) / 200)  # busy 10-120 and 130-200


def test_grad_checkpointing_recomputes_the_filters_in_backward(tiny_teachers, restore):
    """With the setting on, each filter runs once more during backward (its activations were
    not kept); the step's numbers are checked against the plain step above."""
    det = detector_for([], tiny_teachers)
    calls = []
    for filt in (det.filter_source, det.filter_target):
        # a pre-hook: the recomputation stops once it has what backward needs, before the
        # module returns (torch's early stop), so a forward hook would not see it
        filt.register_forward_pre_hook(lambda module, args: calls.append(module))
    for checkpointing, runs in ((False, 2), (True, 4)):
        calls.clear()
        step(det, fixed_batch(), Speed(grad_checkpointing=checkpointing), None)
        assert len(calls) == runs
