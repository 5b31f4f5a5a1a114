"""The sweep's memory preflight: every distinct recipe estimated against a trial's share of
a card before any trial starts; refused with the levers that would fit; `gpu: auto` packs
trials by the estimates; the estimate stored with each trial."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli

from ablate.core.errors import AblateError
from ablate.results import ResultsDB
from ablate.space import load_space
from ablate.sweep import preflight
from ablate.sweep.preflight import Estimated, check_estimates, estimate_sweep, packed_gpu_share

SPACE = """\
fixed:
  backbone: tiny
  teacher: tiny-sd15
  image_size: 32
  data.train: synth-blend
  train: cpu
  train.steps: 2
  train.eval_every: 0
params:
{params}
objectives:
  - {{metric: val_auc, mode: max}}
budget: {{trials: 1, max_concurrent: 1}}
seeds: 1
resources: {{cpu: 1, gpu: {gpu}}}
tests: [synth-colour]
sampler: {{name: random, seed: 0}}
"""
GUIDES = "  guide: {choice: [controlnet, adapter]}"


def write_space(folder: Path, params: str = GUIDES, gpu: str = "0") -> str:
    path = folder / "fitcheck.yaml"
    path.write_text(SPACE.format(params=params, gpu=gpu))
    return str(path)


def _estimated(label: str, gb: float) -> Estimated:
    return Estimated(label, (f"label={label}",), gb)


def test_packed_share_is_the_most_copies_of_the_heaviest_that_fit(monkeypatch):
    monkeypatch.setattr(preflight, "levers_that_fit", lambda overrides, gb, batch=None: [])
    found = [_estimated("light", 3.0), _estimated("heavy", 7.0)]
    assert packed_gpu_share(found, 24.0) == pytest.approx(1 / 3)  # 3 x 7 GB <= 24 < 4 x 7
    assert packed_gpu_share(found, 7.0) == 1.0
    with pytest.raises(AblateError, match="heavy: needs ~7.0 GB.*no lever set fits"):
        packed_gpu_share(found, 6.0)


def test_heaviest_corner_combines_each_params_heaviest_value(tmp_path, monkeypatch):
    """One param at a time cannot see two heavy values together; the corner does. The
    estimator is replaced by a hand-made cost: 1 GB, +2 for batch 8, +3 for controlnet."""
    params = GUIDES + "\n  train.batch_size: {choice: [4, 8]}"
    space = load_space(write_space(tmp_path, params))

    def cost(overrides, batch=None):  # noqa: ANN001, ANN202
        gb = 1.0 + 2.0 * ("train.batch_size=8" in overrides) + 3.0 * ("guide=controlnet" in overrides)

        class Found:
            needs_gb = gb
        return Found()

    monkeypatch.setattr(preflight, "estimate_recipe", cost)
    found = {e.label: e.needs_gb for e in estimate_sweep(space, None)}
    # the probes vary one param from the defaults (controlnet, 4 = 4 GB): adapter 1 GB, batch 8 6 GB
    corner = [v for k, v in found.items() if k.startswith("heaviest corner")]
    assert corner == [] and max(found.values()) == 6.0  # the corner IS a probe here
    params = "  guide: {choice: [adapter, controlnet]}\n  train.batch_size: {choice: [4, 8]}"
    space = load_space(write_space(tmp_path, params))
    found = {e.label: e.needs_gb for e in estimate_sweep(space, None)}
    # defaults (adapter, 4): 1 GB; controlnet alone 4 GB; batch 8 alone 3 GB; both: 6 GB
    assert sorted(found.values()) == [1.0, 3.0, 4.0, 6.0]
    assert found["heaviest corner: guide=controlnet train.batch_size=8"] == 6.0


def test_refusal_names_the_recipe_its_estimate_and_what_fits(monkeypatch):
    monkeypatch.setattr(preflight, "levers_that_fit", lambda overrides, gb, batch=None: ["bf16"])
    with pytest.raises(AblateError) as err:
        check_estimates([_estimated("a", 3.0), _estimated("b", 20.0)], 16.0, 16.0)
    text = str(err.value)
    assert "\n" not in text and "1 recipe(s)" in text
    assert "b: needs ~20.0 GB, a trial gets 16.0 GB of a 16 GB card; fits with bf16" in text
    assert "a: needs" not in text
    check_estimates([_estimated("a", 3.0)], 16.0, 16.0)  # fits: nothing said


def test_sweep_that_cannot_fit_stops_before_anything_starts(tmp_path):
    """Through the CLI with the real estimator: a card far too small is one line naming both
    recipes, and the database gets no sweep."""
    db = f"sqlite:///{tmp_path / 'r.db'}"
    code, out, err = run_cli("sweep", "--space", write_space(tmp_path), "--db", db,
                             "--device-memory", "0.01", cwd=tmp_path)
    assert code != 0 and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert "2 recipe(s) of this sweep cannot fit" in line
    assert "guide=controlnet: needs ~" in line and "guide=adapter: needs ~" in line
    assert "0.01 GB card" in line
    with ResultsDB(db) as results:
        assert results.list_sweeps().empty


def test_device_memory_must_be_positive(tmp_path):
    for bad in ("0", "-2"):
        code, _, err = run_cli("sweep", "--space", write_space(tmp_path), "--device-memory", bad,
                               cwd=tmp_path)
        assert code != 0 and "--device-memory" in err and "Traceback" not in err


def test_gpu_auto_without_a_card_size_says_what_to_give(tmp_path):
    code, _, err = run_cli("sweep", "--space", write_space(tmp_path, gpu="auto"),
                           "--db", f"sqlite:///{tmp_path / 'r.db'}", cwd=tmp_path)
    assert code != 0 and "Traceback" not in err
    assert "gpu: auto" in err and "--device-memory" in err


@pytest.mark.slow  # a real one-trial sweep on Ray
def test_a_trial_row_stores_its_estimate_beside_its_measured_peak(tmp_path, monkeypatch):
    monkeypatch.setenv("ABLATE_CACHE", str(Path("results").resolve()))
    db = f"sqlite:///{tmp_path / 'r.db'}"
    space = write_space(tmp_path)
    code, out, err = run_cli("sweep", "--space", space, "--db", db, "--device-memory", "80",
                             "--name", "fit", cwd=tmp_path)
    assert code == 0, err[-2000:]
    assert "memory preflight: 2 recipe(s) fit 80.0 GB a trial" in err + out
    with ResultsDB(db) as results:
        trial = results.trials("fit").iloc[0]
    params = {"guide": json.loads(trial["recipe_json"])["guide"]["name"]}
    expected = preflight.estimate_recipe(load_space(space).overrides(params)).needs_gb * 1024
    assert trial["estimated_mem_mb"] == pytest.approx(expected, abs=0.1)
    assert trial["peak_mem_mb"] > 0  # measured, beside it
