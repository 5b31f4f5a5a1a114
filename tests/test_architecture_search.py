"""A structure search's costs and its Hyperband: what a trial records as its cost equals an
independent count, and async Hyperband's stops reach Optuna as PRUNED, as ASHA's do."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from ablate.bench.cost import latency_ms, train_gflops
from ablate.bench.estimate import build
from ablate.bench.fake_memory import WarmCache
from ablate.bench.flops import count_flops
from ablate.core.errors import AblateError
from ablate.model.speed import Speed
from ablate.recipe import compose
from ablate.results import ResultsDB
from ablate.space import parse_space
from ablate.sweep import run_sweep
from ablate.sweep.searcher import StopLedger, asha
from ablate.train import update
from tests.test_sweep import optuna_agrees_with_rows, write_space


def real_step_gflops(cfg) -> float:  # noqa: ANN001
    """FLOPs of one training step on real tensors (real weights, a real batch): what the
    fake-tensor count must equal."""
    built = build(cfg, fake=False)
    speed = replace(Speed.from_config(cfg.train, torch.device("cpu")), attention="math",
                    grad_checkpointing=False, compile=False)
    cache = WarmCache() if built.detector.guided else None
    return count_flops(lambda: update(built.detector, built.batch, built.optimizer,
                                      torch.device("cpu"), cfg.train.grad_clip, speed,
                                      cache)) / 1e9


@pytest.mark.parametrize("overrides", [[], ["guide=none"], ["teacher=tiny-sd3"]])
def test_train_gflops_on_fake_tensors_equals_a_real_step(overrides):
    cfg = compose(overrides)
    assert train_gflops(cfg) == pytest.approx(real_step_gflops(cfg), rel=1e-9)


def test_train_gflops_follows_the_structure():
    # a narrower filter and no guide are cheaper; a larger batch costs more per step
    full = train_gflops(compose([]))
    assert train_gflops(compose(["filter.width=8"])) < full
    assert train_gflops(compose(["guide=none"])) < full
    assert train_gflops(compose(["train.batch_size=16"])) > full


def test_latency_is_the_median_of_timed_calls(monkeypatch):
    ticks = iter([0.0, 1.0, 1.0, 3.0, 3.0, 7.0, 7.0, 8.0, 8.0, 8.5])  # five calls: 1, 2, 4, 1, .5 s
    monkeypatch.setattr("ablate.bench.cost.perf_counter", lambda: next(ticks))
    calls = []
    net = torch.nn.Conv2d(3, 1, 1)
    net.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    net.train()
    ms = latency_ms(net, 8, torch.device("cpu"), repeats=3, warmup=2)
    assert ms == pytest.approx(1000.0)  # median of the last three: 4, 1, 0.5 s -> 1 s
    assert calls == [torch.Size([1, 3, 8, 8])] * 5 and net.training  # mode restored


def test_brackets_make_asha_async_hyperband(tmp_path):
    scheduler = asha(StopLedger(), max_t=9, grace_period=1, reduction_factor=2, brackets=3)
    assert len(scheduler._brackets) == 3  # Ray's ASHA with brackets: async Hyperband
    bad = tmp_path / "bad.yaml"
    bad.write_text(open(write_space(tmp_path, asha=True)).read().replace(
        "reduction_factor: 2}", "reduction_factor: 2, brackets: 0}"))
    with pytest.raises(AblateError, match="early_stopping.brackets"):
        parse_space(bad.read_text(), bad)


@pytest.mark.slow
def test_hyperband_sweep_tells_optuna_its_stops_and_records_costs(in_tmp):
    url = f"sqlite:///{in_tmp / 'r.db'}"
    # a structural param, so that trials differ in cost: each must record its own
    params = ("  filter.width: {choice: [8, 16, 32]}\n"
              "  train.lr: {choice: [0.001, 0.0003, 0.0001, 0.00003, 0.00001]}")
    space = in_tmp / "hb.yaml"
    space.write_text(open(write_space(in_tmp, params=params, trials=8, concurrent=1, steps=9,
                                      asha=True)).read()
                     .replace("reduction_factor: 2}", "reduction_factor: 2, brackets: 2}")
                     .replace("  - {metric: val_auc, mode: max}",
                              "  - {metric: val_auc, mode: max}\n"
                              "  - {metric: train_gflops, mode: min}")
                     .replace("name: tpe", "name: nsga2"))
    run_sweep(str(space), db_url=url, name="hb", n_boot=20)
    states = optuna_agrees_with_rows(url, "hb")
    assert "PRUNED" in states and "COMPLETE" in states, states
    rows = ResultsDB(url).trials("hb")
    done = rows[rows["status"] == "finished"]
    own = {row["tune_trial_id"].split(":")[0]: row["train_gflops"] for _, row in done.iterrows()}
    for _, row in done.iterrows():  # each row's count is its own recipe's, on real tensors
        recipe = compose_row(json.loads(row["recipe_json"]))
        assert row["train_gflops"] == pytest.approx(real_step_gflops(recipe), rel=1e-9)
        assert row["latency_ms"] > 0
    assert done["train_gflops"].nunique() > 1, "every finished trial had one width: reseed"
    import optuna

    study = optuna.load_study(study_name="hb", storage=url)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    for t in complete:  # what Optuna was told equals the trial's own row
        assert t.values[1] == pytest.approx(own[t.user_attrs["tune_trial_id"]])


def test_the_driver_gives_asha_the_spaces_brackets(tmp_path):
    from ablate.sweep.driver import _scheduler

    path = tmp_path / "hb.yaml"
    path.write_text(open(write_space(tmp_path, asha=True)).read().replace(
        "reduction_factor: 2}", "reduction_factor: 2, brackets: 3}"))
    scheduler = _scheduler(parse_space(path.read_text(), path), 4, StopLedger())
    assert len(scheduler._brackets) == 3


def test_latency_is_left_out_where_it_cannot_be_measured(monkeypatch):
    from omegaconf import OmegaConf

    from ablate.sweep.trial import measured_latency

    cfg = OmegaConf.create({"train": {"device": "cpu"}, "image_size": 8})
    net = torch.nn.Conv2d(3, 1, 1)
    assert measured_latency(net, cfg) > 0
    assert measured_latency(net, cfg, processes=2) is None  # its device is its processes'

    def broken(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("no such kernel")

    monkeypatch.setattr("ablate.bench.cost.latency_ms", broken)
    assert measured_latency(net, cfg) is None  # the trained seed is kept, its latency not


def compose_row(recipe: dict):  # noqa: ANN201
    """The stored recipe of a row, composed again (its train group as run)."""
    from omegaconf import OmegaConf

    return OmegaConf.create(recipe)


def test_a_train_gflops_constraint_reads_the_real_step_count(tmp_path):
    from ablate.space import load_space
    from ablate.sweep.constraints import ConstraintCheck
    from tests.test_constraints import write_space as constrained_space

    space = load_space(constrained_space(tmp_path, "constraints: {train_gflops: {max: 0.5}}"))
    verdict = ConstraintCheck(space).verdict({"guide": "adapter"})
    expected = real_step_gflops(compose(space.overrides({"guide": "adapter"})))
    assert verdict.values["train_gflops"] == pytest.approx(expected, rel=1e-9)
    assert verdict.violations == [pytest.approx(expected - 0.5)] and not verdict.feasible
