"""Checkpoint selection rules (`train.select`, `train.proxy`: ablate/core/selection.py).

The expected steps are computed here, with sklearn's roc_auc_score on validation scores this
file constructs, never with the code under test: `proxy` keeps the best proxy step where
`best_val` keeps another, `last` keeps the final step, the threshold stays source val's, a
sweep prunes and ranks by the rule's signal, and bad input is one line.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_cli
from omegaconf import OmegaConf
from sklearn.metrics import roc_auc_score

from ablate.core.errors import AblateError
from ablate.core.selection import unused_proxy
from ablate.recipe import compose
from ablate.scoring import Selection, validation_point

STEPS = (10, 20, 30, 40)
# per step, how far fakes score above reals: source val is best at 20, the proxy at 30, and
# neither at 40 (the last step), so the three rules must disagree
SOURCE_SHIFT = {10: 0.4, 20: 2.0, 30: 1.2, 40: 0.8}
PROXY_SHIFT = {10: 0.1, 20: 0.3, 30: 1.5, 40: 0.6}
TINY = ["guide=none", "backbone=tiny", "image_size=32", "train=cpu", "train.batch_size=4",
        "data.train=synth-blend", "data.tests=[synth-colour,synth-warp]"]


def _curve(shifts: dict[int, float], n: int, seed: int) -> dict[int, pd.DataFrame]:
    """step -> validation scores (label, score): reals ~ N(0, 1), fakes ~ N(shift, 1)."""
    rng = np.random.default_rng(seed)
    labels = np.array([0] * (n // 2) + [1] * (n - n // 2))
    noise = rng.normal(size=n)
    return {step: pd.DataFrame({"label": labels, "score": noise + shift * labels})
            for step, shift in shifts.items()}


SOURCE = _curve(SOURCE_SHIFT, 100, seed=1)
PROXY = _curve(PROXY_SHIFT, 60, seed=2)  # other size: n_frames says which set it came from


def _auc(frame: pd.DataFrame) -> float:
    return float(roc_auc_score(frame["label"], frame["score"]))


def _best(curve: dict[int, pd.DataFrame]) -> int:
    """The step with the highest AUC, by sklearn (the first of equals)."""
    return max(STEPS, key=lambda step: _auc(curve[step]))


class _Detector:
    """Stands in for a detector: its trainable weights are the step it has reached."""

    def __init__(self) -> None:
        self.step = 0
        self.classifier = torch.nn.Identity()

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {"w": torch.tensor([float(self.step)])}


def _select(rule: str, monkeypatch, proxy: bool = True):  # noqa: ANN001, ANN202
    """Run a ValidationSelector over the constructed curves; (selector, detector, signals)."""
    from ablate import train as training

    detector = _Detector()
    monkeypatch.setattr(training, "score",
                        lambda classifier, dataset, **_: dataset[detector.step])
    cfg = OmegaConf.create({"train": {"select": rule, "proxy": "held-out set" if proxy else None},
                            "data": {"train": "source"}})
    selector = training.ValidationSelector(detector, SOURCE, cfg, torch.device("cpu"),
                                           PROXY if proxy else None)
    signals = []
    for step in STEPS:
        detector.step = step
        signals.append(selector.evaluate(step).signal)
    return selector, detector, signals


# ---------------------------------------------------------------- the rules


def test_the_constructed_curves_make_the_rules_disagree():
    assert _best(SOURCE) == 20 and _best(PROXY) == 30 and STEPS[-1] == 40


def test_proxy_keeps_the_best_proxy_step_and_best_val_another(monkeypatch):
    best_val, _, val_signals = _select("best_val", monkeypatch)
    proxy, _, proxy_signals = _select("proxy", monkeypatch)
    assert best_val.selection.step == _best(SOURCE)
    assert proxy.selection.step == _best(PROXY) != best_val.selection.step
    assert proxy.best_state["w"].item() == _best(PROXY)  # that step's weights, not the last
    # what the trial hands ASHA at each evaluation: the rule's signal
    assert val_signals == pytest.approx([_auc(SOURCE[s]) for s in STEPS])
    assert proxy_signals == pytest.approx([_auc(PROXY[s]) for s in STEPS])
    chosen = proxy.selection
    assert chosen.rule == "proxy" and chosen.proxy == "held-out set"
    assert chosen.proxy_auc == pytest.approx(_auc(PROXY[30]))
    assert chosen.proxy_frames == len(PROXY[30])
    # the threshold and the recorded val numbers are the source val split's at the kept step
    assert chosen.val_auc == pytest.approx(_auc(SOURCE[30]))
    assert chosen.n_frames == len(SOURCE[30])
    assert chosen.threshold == pytest.approx(validation_point(SOURCE[30])[1])
    assert chosen.as_dict()["metric"] == "proxy_auc" and chosen.as_dict()["rule"] == "proxy"


def test_best_val_without_a_proxy_is_unchanged(monkeypatch):
    selector, _, signals = _select("best_val", monkeypatch, proxy=False)
    chosen = selector.selection
    assert chosen.step == _best(SOURCE) and chosen.rule == "best_val"
    assert chosen.proxy is None and chosen.proxy_auc is None
    assert signals == pytest.approx([_auc(SOURCE[s]) for s in STEPS])
    assert chosen.as_dict()["metric"] == "val_auc"


def test_last_keeps_the_final_step(monkeypatch):
    selector, detector, signals = _select("last", monkeypatch)
    assert selector.selection.step == STEPS[-1] != _best(SOURCE)
    assert selector.selection.rule == "last"
    assert selector.best_state is None  # train() then saves the live, final weights
    assert detector.trainable_state_dict()["w"].item() == STEPS[-1]
    assert selector.selection.threshold == pytest.approx(validation_point(SOURCE[40])[1])
    assert signals == pytest.approx([_auc(SOURCE[s]) for s in STEPS])  # ASHA: source val


def test_proxy_without_a_proxy_set_is_refused_by_the_selector(monkeypatch):
    with pytest.raises(AblateError, match="no proxy set"):
        _select("proxy", monkeypatch, proxy=False)


# ---------------------------------------------------------------- records


def test_an_old_selection_record_reads_as_best_val(tmp_path):
    from ablate.train_state import META, TrainState, capture_rng, load_state, save_state

    old = {"step": 3, "val_auc": 0.9, "threshold": 0.5, "n_frames": 8, "dataset": "synth-blend"}
    assert Selection(**old).rule == "best_val" and Selection(**old).signal == 0.9
    weight = torch.nn.Parameter(torch.zeros(2))
    new = Selection(**old, rule="proxy", proxy="synth-warp", proxy_auc=0.7, proxy_frames=6)
    state = TrainState(3, 1, {"w": weight.detach()}, torch.optim.SGD([weight], lr=1).state_dict(),
                       None, new, rng=capture_rng())
    folder = save_state(tmp_path / "s", state, "abc", 0)
    assert load_state(folder, "abc", 0).selection == new
    meta = json.loads((folder / META).read_text())  # as saved before rules existed
    meta["selection"] = old
    (folder / META).write_text(json.dumps(meta))
    assert load_state(folder, "abc", 0).selection == Selection(**old)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("overrides,message", [
    (["train.select=proxy"], "needs train.proxy"),
    (["train.select=proxy", "train.proxy=synth-warp"], "also a test set"),
    (["train.select=last", "train.proxy=synth-colour"], "also a test set"),  # any rule
    (["train.select=proxy", "train.proxy=synth-blend"], "is the training set"),
    (["train.select=proxy", "train.proxy=holdout:"], "names no method"),
    (["train.select=proxy", "train.proxy=holdout:NeuralTextures"],
     "has no fakes of method 'NeuralTextures' (its methods: blend)"),
    (["train.select=proxy", "train.proxy=holdout:blend"], "the only method"),
    (["train.select=newest"], "train.select must be one of best_val, last, proxy"),
])
def test_bad_selection_input_is_one_line(overrides, message, tmp_path):
    code, _, stderr = run_cli("train", "--dry-run", *TINY, *overrides, cwd=tmp_path,
                              env={"ABLATE_CACHE": str(Path("results").resolve())})
    assert code == 2, stderr
    lines = [ln for ln in stderr.splitlines() if not ln.startswith("WARNING")]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], stderr
    assert "Traceback" not in stderr


def test_a_proxy_that_chooses_nothing_is_a_warning_not_an_error():
    """Kept, with one line: a design comparing rules gives every cell the same proxy."""
    cfg = compose([*TINY, "data.tests=[synth-colour]", "train.proxy=synth-warp"])
    note = unused_proxy(cfg)
    assert note is not None and "\n" not in note and "only scored" in note
    assert unused_proxy(compose([*TINY, "data.tests=[synth-colour]", "train.select=proxy",
                                 "train.proxy=synth-warp"])) is None


# ---------------------------------------------------------------- data


def _two_methods(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    """A manifest with two manipulation methods (blend and warp), from the benchmark."""
    from ablate.data.manifest import load_manifest, save_manifest
    from ablate.data.synthetic import ensure_benchmark

    table = load_manifest(ensure_benchmark())
    both = table[table["dataset"].isin(["synth-blend", "synth-warp"])].reset_index(drop=True)
    return save_manifest(both, tmp_path / "two.csv"), both


def test_holdout_leaves_its_method_out_of_training_and_proxies_on_its_val_split(tmp_path):
    from ablate.data.loader import proxy_rows, source_table

    path, both = _two_methods(tmp_path)
    cfg = compose([*TINY, f"data.train={path}", "data.tests=[synth-colour]",
                   "train.select=proxy", "train.proxy=holdout:warp"])
    kept = source_table(cfg)
    assert "warp" not in set(kept["method"]) and "blend" in set(kept["method"])
    assert len(kept) == int((both["method"] != "warp").sum())  # every split, reals kept
    proxy = proxy_rows(cfg)
    val = both[both["split"] == "val"]
    expected = set(val.loc[val["method"].isin(["warp", "real"]), "path"].map(
        lambda p: Path(p).name))
    assert set(proxy["path"].map(lambda p: Path(p).name)) == expected
    assert set(proxy["split"]) == {"val"} and set(proxy["label"]) == {0, 1}
    with pytest.raises(AblateError, match=r"its methods: blend, warp"):
        source_table(compose([*TINY, f"data.train={path}", "data.tests=[synth-colour]",
                              "train.select=proxy", "train.proxy=holdout:lowres"]))


def test_a_dataset_proxy_joins_the_data_fingerprint():
    from ablate.reuse_key import data_fingerprint

    base = [*TINY, "data.tests=[synth-colour]"]
    plain = data_fingerprint(compose(base))
    assert data_fingerprint(compose([*base, "train.select=last"])) == plain
    assert data_fingerprint(compose([*base, "train.select=proxy",
                                     "train.proxy=synth-warp"])) != plain


# ---------------------------------------------------------------- the sweep


def _seed(rule: str, val: float, proxy: float | None) -> dict:
    recipe = {"train": {"select": rule}} if rule != "best_val" else {"train": {}}
    rows = [{"dataset": "src", "split": "val", "level": "frame", "metric": "auc", "value": val}]
    if proxy is not None:
        rows.append({"dataset": "p", "split": "proxy", "level": "frame", "metric": "auc",
                     "value": proxy})
    return {"recipe": recipe, "val_auc": val, "metrics": rows}


def test_a_trial_summarises_and_replays_the_rules_signal():
    from ablate.sweep import trial

    assert trial.selection_auc(_seed("proxy", 0.99, 0.7)) == 0.7
    assert trial.selection_auc(_seed("best_val", 0.99, 0.7)) == 0.99  # proxy only recorded
    assert trial.selection_auc(_seed("last", 0.98, None)) == 0.98
    summary = trial.summarise([_seed("proxy", 0.99, 0.7), _seed("proxy", 0.97, 0.6)])
    assert summary["select_auc"] == pytest.approx(0.65)
    assert summary["val_auc"] == pytest.approx(0.98)  # still the source val AUC

    # a reused seed shows ASHA the points of its rule's curve
    replayed = object.__new__(trial._Trial)
    replayed.rung_seed, reports = 0, []
    replayed.report = lambda kind, values, checkpoint=None: reports.append(values)
    curves = [(s, "val/auc", 0.9 + s / 1000) for s in (3, 6, 9)]
    curves += [(s, "proxy/auc", 0.5 + s / 100) for s in (3, 6, 9)]
    replayed._replay({"seed": 0, "identity": "i", "recipe_hash": "h"}, curves, 4, "proxy/auc")
    assert [r[trial.RUNG_METRIC] for r in reports] == pytest.approx([0.53, 0.56, 0.59])
    assert {r[trial.RUNG_CURVE] for r in reports} == {"proxy/auc"}


def test_the_confirmation_ranks_by_the_rules_signal():
    from ablate.sweep.confirm import selection_values

    trials = pd.DataFrame({"id": [1, 2], "recipe_json": [
        json.dumps({"train": {"select": "proxy", "proxy": "p"}}),
        json.dumps({"train": {"proxy": "p"}})]})  # best_val with a recorded proxy
    rows = [(t, ds, split, v) for t, ds, split, v in (
        (1, "src", "val", 0.99), (1, "p", "proxy", 0.61), (1, "x", "test", 0.5),
        (2, "src", "val", 0.97), (2, "p", "proxy", 0.80))]
    metrics = pd.DataFrame(rows, columns=["trial_id", "dataset", "split", "value"]).assign(
        level="frame", metric="auc")
    values = selection_values(trials, metrics)
    assert values[1] == pytest.approx(0.61) and values[2] == pytest.approx(0.97)


def test_optuna_gets_rung_values_only_for_the_objective_they_measure():
    from ablate.sweep.searcher import rung_measures
    from ablate.sweep.trial import RUNG_CURVE

    proxy, source = {RUNG_CURVE: "proxy/auc"}, {RUNG_CURVE: "val/auc"}
    assert rung_measures(["val_auc"], source) and rung_measures(["val_auc"], {})
    assert not rung_measures(["val_auc"], proxy)
    assert rung_measures(["select_auc"], proxy) and rung_measures(["select_auc"], source)
    assert not rung_measures(["val_auc", "params_trainable"], source)


# ---------------------------------------------------------------- real runs


@pytest.mark.slow
def test_trained_runs_keep_the_rules_step_and_record_it(tmp_path, caplog):
    """Two real tiny runs on the embedded benchmark: the exported weights are the chosen
    step's (their proxy AUC, rescored here with sklearn, is the recorded one)."""
    from ablate.checkpoint import RUN_INFO, load_classifier
    from ablate.data.dataset import ManifestDataset
    from ablate.data.loader import proxy_rows
    from ablate.scoring import score
    from ablate.train import train

    base = [*TINY, "data.tests=[synth-colour]", "train.steps=8", "train.eval_every=2",
            "train.proxy=synth-warp", f"run.out_dir={tmp_path}"]
    cfg = compose([*base, "train.select=proxy", "run.name=proxy"])
    run = train(cfg, progress=False)
    info = json.loads((run.folder / RUN_INFO).read_text())
    proxy_curve = {s: v for s, name, v in run.curves if name == "proxy/auc"}
    assert sorted(proxy_curve) == [2, 4, 6, 8]
    best = max(sorted(proxy_curve), key=proxy_curve.get)
    assert info["selection"]["rule"] == "proxy" and info["checkpoint_step"] == best
    classifier, _ = load_classifier(run.folder)
    rows = ManifestDataset(proxy_rows(cfg), cfg.image_size, guided=False, augment="none")
    rescored = score(classifier, rows, progress=False)
    assert roc_auc_score(rescored["label"], rescored["score"]) == pytest.approx(
        info["selection"]["proxy_auc"], abs=1e-6)

    with caplog.at_level(logging.WARNING, logger="ablate.train"):
        last = train(compose([*base, "train.select=last", "run.name=last"]), progress=False)
    assert last.selection["rule"] == "last" and last.selection["step"] == 8
    assert any("only scored" in r.getMessage() for r in caplog.records)
    # the same seed and data: the rules differ only in the step they keep
    assert [c for c in last.curves if "auc" in c[1]] == [c for c in run.curves if "auc" in c[1]]
