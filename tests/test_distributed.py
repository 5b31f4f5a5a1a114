"""`train.processes=N`: one run over N data-parallel processes computes what one process
computes on the same global batch. Checked twice: in one process, the mean of the shards'
gradients against the whole batch's (the draws and the loss means); and end to end, two Ray
Train workers on gloo against a one-process run (loss curves, weights, one run folder)."""

from __future__ import annotations

import json

import pytest
import torch

from ablate.distributed import Shard, ShardedBatches
from ablate.model.build import build_detector
from ablate.recipe import compose, recipe_hash
from ablate.train import train
from tests.conftest import fixed_batch

# a BatchNorm-free encoder: on CPUs BatchNorm statistics cannot be synchronised
NO_BN = ["backbone=timm", "backbone.model_name=test_vit", "image_size=32"]


@pytest.mark.parametrize("teacher", ["tiny-sd15", "tiny-sd3"])
def test_the_shards_mean_gradient_is_the_whole_batch_gradient(teacher):
    cfg = compose([*NO_BN, f"teacher={teacher}"])
    torch.manual_seed(0)
    detector = build_detector(cfg)
    batch = fixed_batch(size=32, batch=4, seed=1)
    params = [p for p in detector.parameters() if p.requires_grad]

    def gradients(shard: Shard | None) -> list[torch.Tensor]:
        rows = slice(None) if shard is None else shard.rows(2)
        detector.shard = shard
        detector.zero_grad(set_to_none=True)
        torch.manual_seed(7)  # every process draws from the same state
        losses = detector.guided_losses(batch["image"][rows], batch["source"][rows],
                                        batch["target"][rows], batch["label"][rows])
        losses["total"].backward()
        return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]

    whole = gradients(None)
    halves = [gradients(Shard(rank, 2)) for rank in (0, 1)]
    mean = [(a + b) / 2 for a, b in zip(*halves, strict=True)]
    assert sum(g.abs().sum() for g in whole) > 0
    for reference, ours in zip(whole, mean, strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-6)


def test_a_shards_draw_is_its_rows_of_the_global_draw():
    shape = (2 * 3, 4, 2, 2)  # sources then targets, 3 rows each
    generator = torch.Generator().manual_seed(0)
    whole = torch.randn((2 * 6, 4, 2, 2), generator=generator).unflatten(0, (2, 6))
    for rank in (0, 1):
        generator.manual_seed(0)
        ours = Shard(rank, 2).randn(shape, generator, torch.device("cpu"), torch.float32,
                                    groups=2)
        torch.testing.assert_close(ours, whole[:, rank * 3:(rank + 1) * 3].flatten(0, 1),
                                   rtol=0, atol=0)


def test_sharded_batches_split_each_global_batch():
    keys = list(range(10))
    shards = [list(ShardedBatches(keys, 4, True, Shard(r, 2))) for r in (0, 1)]
    assert shards[0] == [[0, 1], [4, 5]] and shards[1] == [[2, 3], [6, 7]]


def test_two_ray_train_workers_on_gloo_train_the_one_process_run(tmp_path):
    from ablate.distributed import train_parallel

    base = [*NO_BN, "train=cpu", "train.device=cpu", "train.steps=3", "train.batch_size=4",
            "train.eval_every=3", "train.log_every=1", "data.train=synth-blend",
            "data.augment=flip"]
    one = compose([*base, f"run.out_dir={tmp_path / 'one'}"])
    two = compose([*base, "train.processes=2", f"run.out_dir={tmp_path / 'two'}"])
    assert recipe_hash(one) == recipe_hash(two)  # the same result, computed faster
    a = train(one, progress=False)
    b = train_parallel(two, 2, progress=False)
    assert a.steps == b.steps == 3
    curve = {(s, n): v for s, n, v in a.curves}
    assert {(s, n) for s, n, _ in b.curves} == set(curve)
    for step, name, value in b.curves:  # global-batch means, up to summation order
        assert value == pytest.approx(curve[(step, name)], rel=1e-4, abs=1e-6), (step, name)
    assert b.selection["n_frames"] == a.selection["n_frames"]  # validated once, all frames
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [b.folder.name]
    from safetensors.torch import load_file

    wa, wb = load_file(a.folder / "trainable.safetensors"), load_file(b.folder / "trainable.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=1e-3, atol=1e-5)
    assert json.loads((b.folder / "run.json").read_text())["steps"] == 3
