"""`train.processes=N`: one run over N data-parallel processes computes what one process
computes on the same global batch. Checked twice: in one process, the mean of the shards'
gradients against the whole batch's (the draws and the loss means); and end to end, two Ray
Train workers on gloo against a one-process run (loss curves, weights, one run folder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ablate.checkpoint import TRAINABLE
from ablate.model.build import build_detector
from ablate.recipe import compose, recipe_hash
from ablate.sharding import Shard, ShardedBatches
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


@pytest.mark.parametrize(("resources", "processes"), [
    ("{cpu: 1}", 1), ("{cpu: 8, gpu: 1}", 1), ("{cpu: 8, gpu: 0.5}", 1),
    ("{cpu: 16, gpu: 4}", 4), ("{cpu: 2, processes: 2}", 2), ("{gpu: 4, processes: 2}", 2)])
def test_a_space_trains_each_trial_on_one_process_per_whole_gpu(resources, processes):
    from ablate.space.parse import parse_space

    text = f"fixed: {{}}\nparams: {{filter: {{choice: [paper]}}}}\nresources: {resources}\n"
    assert parse_space(text, Path("s.yaml")).resources.data_parallel() == processes


def test_a_negative_process_count_is_one_line():
    from ablate.core.errors import AblateError
    from ablate.space.parse import parse_space

    with pytest.raises(AblateError, match="resources.processes"):
        parse_space("params: {filter: {choice: [paper]}}\nresources: {processes: -1}\n",
                    Path("s.yaml"))


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


def test_a_training_set_smaller_than_one_global_batch_is_one_line():
    """Split unevenly, the processes would draw different sizes and part ways."""
    from ablate.core.errors import AblateError

    with pytest.raises(AblateError, match="fewer than one global batch"):
        list(ShardedBatches(list(range(3)), 4, False, Shard(0, 2)))


def test_gpu_batchnorm_is_synchronised_with_its_activation_kept():
    """torch's conversion turns timm's BatchNormAct2d into a plain SyncBatchNorm, dropping
    the activation after every norm of an EfficientNet; timm's keeps it."""
    import timm

    from ablate.sharding import sync_batch_norm

    model = timm.create_model("test_efficientnet", num_classes=0)
    norms = {type(m).__name__ for m in sync_batch_norm(model, torch.device("cuda")).modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    assert norms == {"SyncBatchNormAct"}


BASE = [*NO_BN, "train=cpu", "train.device=cpu", "train.steps=4", "train.batch_size=4",
        "train.eval_every=2", "train.log_every=1", "data.train=synth-blend", "data.augment=flip"]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """A run on two Ray Train workers (gloo), with copies of the states it checkpointed."""
    import shutil

    from ablate.data_parallel import train_parallel

    out = tmp_path_factory.mktemp("ddp")
    cfg = compose([*BASE, "train.processes=2", f"run.out_dir={out / 'runs'}"])
    states: dict[int, Path] = {}

    def keep(step: int, val_auc: float, folder: Path) -> None:
        states[step] = shutil.copytree(folder, out / f"state-{step}")

    return cfg, train_parallel(cfg, 2, on_checkpoint=keep), states


def test_two_ray_train_workers_on_gloo_train_the_one_process_run(two_processes, tmp_path):
    two, b, _ = two_processes
    one = compose([*BASE, f"run.out_dir={tmp_path}"])
    assert recipe_hash(one) == recipe_hash(two)  # the same result, computed faster
    a = train(one, progress=False)
    assert a.steps == b.steps == 4
    curve = {(s, n): v for s, n, v in a.curves}
    assert {(s, n) for s, n, _ in b.curves} == set(curve)
    for step, name, value in b.curves:  # global-batch means, up to summation order
        assert value == pytest.approx(curve[(step, name)], rel=1e-4, abs=1e-6), (step, name)
    assert b.selection["n_frames"] == a.selection["n_frames"]  # validated once, all frames
    assert [p.name for p in b.folder.parent.iterdir()] == [b.folder.name]  # one run folder
    wa, wb = load_file(a.folder / TRAINABLE), load_file(b.folder / TRAINABLE)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=1e-3, atol=1e-5)


def test_ablate_train_on_two_processes_shows_process_0s_progress(tmp_path):
    """`ablate train train.processes=2`: the bar in the launching terminal follows process 0's
    steps (its total and its count come only from the workers' step messages)."""
    from tests.conftest import run_cli

    code, out, err = run_cli("train", *BASE, "train.processes=2", f"run.out_dir={tmp_path}",
                             cwd=tmp_path)
    assert code == 0, err
    assert "trained 4 steps" in out and "run saved to" in out
    bar = [line for line in err.replace("\r", "\n").splitlines() if "train (2 processes)" in line]
    assert bar and "4/4" in bar[-1], err[-2000:]


def test_a_workers_one_line_error_reaches_the_launcher(tmp_path):
    """Ray wraps a worker's failure; the user sees the recipe's own one line."""
    from ablate.core.errors import AblateError
    from ablate.data_parallel import train_parallel

    cfg = compose([*BASE, f"data.train={tmp_path / 'nowhere.csv'}", f"run.out_dir={tmp_path}"])
    with pytest.raises(AblateError, match="nowhere.csv"):
        train_parallel(cfg, 2)
    with pytest.raises(AblateError, match="multiple of 3"):  # before any process starts
        train_parallel(compose([*BASE, f"run.out_dir={tmp_path}"]), 3)


def test_a_data_parallel_run_reports_its_states_and_resumes_from_one(two_processes):
    """Each validation's state comes back to the launching process (a sweep trial hands it
    to Tune); a run resumed from one on fresh workers ends as the uninterrupted run."""
    from ablate.data_parallel import train_parallel

    cfg, full, states = two_processes
    assert sorted(states) == [2, 4]
    resumed = train_parallel(cfg, 2, resume_from=states[2])
    assert resumed.curves == full.curves
    assert resumed.selection == full.selection
    wa, wb = load_file(full.folder / TRAINABLE), load_file(resumed.folder / TRAINABLE)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_sweep_trial_trains_data_parallel_and_is_recorded(tmp_path, monkeypatch):
    """`resources: {processes: 2}`: each trial trains on two Ray Train workers inside the
    Tune sweep; its evaluations, metrics and curves land in the results database."""
    from ablate.results import ResultsDB
    from ablate.sweep import run_sweep

    monkeypatch.setenv("ABLATE_CACHE", str(Path("results").resolve()))
    monkeypatch.chdir(tmp_path)
    space = tmp_path / "ddp.yaml"
    space.write_text("""
description: "test: one data-parallel trial"
fixed: {teacher: tiny-sd15, backbone: timm, backbone.model_name: test_vit, image_size: 32,
        data.train: synth-blend, train: cpu, train.steps: 4, train.batch_size: 4,
        train.eval_every: 2, train.log_every: 2}
params:
  filter: {choice: [paper]}
objectives:
  - {metric: val_auc, mode: max}
budget: {trials: 1, max_concurrent: 1}
seeds: 1
resources: {cpu: 1, processes: 2}
tests: [synth-colour]
sampler: {name: random, seed: 0}
""")
    url = f"sqlite:///{tmp_path / 'r.db'}"
    run_sweep(str(space), db_url=url, name="ddp", n_boot=20)
    db = ResultsDB(url)
    trials = db.trials("ddp")
    assert list(trials["status"]) == ["finished"]
    assert json.loads(db.list_sweeps().set_index("name").loc["ddp", "settings_json"])[
        "resources"]["processes"] == 2
    metrics = db.metrics("ddp")
    test = metrics[(metrics["split"] == "test") & (metrics["metric"] == "auc")]
    assert set(test["dataset"]) == {"synth-colour"} and test["value"].between(0, 1).all()
    curves = db.curves("ddp")
    assert sorted(curves[curves["name"] == "val/auc"]["step"]) == [2, 4]
