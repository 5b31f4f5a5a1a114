"""Designs: a space that lists matched cells (one-at-a-time, factorial) instead of sampling.

Checked: the cells are exactly the expected recipes and each one-at-a-time cell differs
from the reference in one factor of its *composed* recipe; bad designs are one-line
errors before anything runs; a real design sweep runs every cell on the same seeds, and
the report's paired Δ and CI equal a numpy recomputation from the stored metrics.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from scipy import stats

from ablate.core.errors import AblateError
from ablate.recipe import compose
from ablate.results import ResultsDB
from ablate.space import load_space, validate_space

FIXED = """
fixed:
  teacher: tiny-sd15
  backbone: tiny
  image_size: 32
  data.train: synth-blend
  train: cpu
  train.steps: {steps}
  train.batch_size: 4
  train.eval_every: 3
  train.log_every: 3
"""

OAT = """description: "test: one-at-a-time"
{fixed}
design: one-at-a-time
reference: {{guide: controlnet, filter: paper, weight: paper}}
factors:
  guide: [controlnet, none, adapter]
  filter: [paper, conv_only]
  weight: [paper, none]
seeds: {seeds}
budget: {{max_concurrent: 2}}
resources: {{cpu: 1, gpu: 0}}
tests: [synth-colour, synth-warp]
"""


def flatten(cfg) -> dict:  # noqa: ANN001
    """A composed recipe as {dotted key: value} (OmegaConf's own container, walked here)."""
    from omegaconf import OmegaConf

    out: dict = {}

    def walk(node, prefix: str) -> None:  # noqa: ANN001
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = value

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def write(folder: Path, text: str, name: str = "design.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def oat(folder: Path, steps: int = 6, seeds: int = 2, **replace: str) -> Path:
    text = OAT.format(fixed=FIXED.format(steps=steps), seeds=seeds)
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    return write(folder, text)


def test_one_at_a_time_cells_each_change_one_factor_of_the_composed_recipe(tmp_path):
    space = load_space(oat(tmp_path))
    cells = space.design.cells()
    assert [c.label for c in cells] == ["reference", "guide=none", "guide=adapter",
                                        "filter=conv_only", "weight=none"]  # hand-listed
    assert space.trials == 5 and space.seeds == 2
    flats = {c.label: flatten(compose([*space.overrides(), *c.overrides()])) for c in cells}
    ref = flats["reference"]
    assert (ref["guide.name"], ref["filter.name"], ref["weight.name"]) == (
        "controlnet", "paper", "paper")
    changed_slot = {"guide=none": "guide", "guide=adapter": "guide",
                    "filter=conv_only": "filter", "weight=none": "weight"}
    for label, slot in changed_slot.items():
        differs = {k for k in set(ref) | set(flats[label]) if ref.get(k) != flats[label].get(k)}
        if label == "guide=none":  # the baseline: the guide and what only guidance builds
            assert flats[label]["guide.name"] == "none"
            assert {k for k in differs if not k.startswith(("guide.", "filter.", "weight."))} \
                == set(), sorted(differs)  # the backbone, data, optimiser... stay the reference's
            continue
        owners = {k.split(".")[0] for k in differs}
        assert owners == {slot}, (label, sorted(differs))


def test_factorial_is_every_combination_once_reference_first(tmp_path):
    text = OAT.format(fixed=FIXED.format(steps=6), seeds=1).replace(
        "design: one-at-a-time", "design: factorial").replace(
        "  guide: [controlnet, none, adapter]\n", "")
    text = text.replace("reference: {guide: controlnet, filter: paper, weight: paper}",
                        "reference: {filter: paper, weight: paper}")
    space = load_space(write(tmp_path, text))
    cells = space.design.cells()
    combos = [(c.levels["filter"], c.levels["weight"]) for c in cells]
    assert combos[0] == ("paper", "paper") and cells[0].label == "reference"
    assert sorted(combos) == sorted([("paper", "paper"), ("paper", "none"),
                                     ("conv_only", "paper"), ("conv_only", "none")])
    assert space.trials == 4
    both = next(c for c in cells if c.changed == ("filter", "weight"))
    assert both.label == "filter=conv_only weight=none"


@pytest.mark.parametrize("case,replace,message", [
    ("unknown factor", {"  weight: [paper, none]": "  weight: [paper, none]\n  filtr.x: [1, 2]"},
     "filtr"),
    ("unknown level", {"filter: [paper, conv_only]": "filter: [paper, nope]"}, "nope"),
    ("reference not in the design", {"filter: paper, weight": "filter: no_mhsa, weight"},
     "reference.filter: 'no_mhsa' is not one of filter's levels"),
    ("reference names no factor", {"weight: paper}": "weight: paper, lr: 1}"},
     "reference.lr: is not a factor"),
    ("seeds: 0", {"seeds: 2": "seeds: 0"}, "seeds: must be an integer >= 1"),
    ("params beside a design", {"seeds: 2": "seeds: 2\nparams: {train.lr: {choice: [1]}}"},
     "a design lists factors, not params"),
    ("one level", {"weight: [paper, none]": "weight: [paper]"}, "at least two levels"),
    ("cells that are one recipe", {
        "reference: {guide: controlnet,": "reference: {guide: none,"}, "are the same recipe"),
])
def test_bad_designs_are_one_line_errors_before_anything_runs(tmp_path, case, replace, message):
    path = oat(tmp_path, **replace)
    db = tmp_path / "r.db"
    code, out, err = run_cli("sweep", "--space", str(path), "--db", f"sqlite:///{db}",
                             cwd=tmp_path, env={"ABLATE_CACHE": str(Path("results").resolve())})
    assert code == 2, out + err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and message in err, err
    assert "Traceback" not in err
    if db.is_file():
        assert ResultsDB(f"sqlite:///{db}").list_sweeps().empty
    assert not (tmp_path / "results" / "runs").exists()


def test_shipped_design_spaces_validate(tmp_path):
    ablation = load_space("ablation")
    assert ablation.design.kind == "one-at-a-time" and ablation.seeds >= 3
    labels = [c.label for c in ablation.design.cells()]
    for wanted in ("guide=none", "guide=adapter", "guide.shared=false", "filter=conv_only",
                   "weight=none"):
        assert wanted in labels
    validate_space(ablation, build=False)
    paper = load_space("paper-ablation")
    assert "guide=none" in [c.label for c in paper.design.cells()]
    with pytest.raises(AblateError, match="teacher.path"):  # real weights: the user's to set
        validate_space(paper, build=False)


@pytest.mark.slow
def test_a_design_sweep_runs_every_cell_on_the_same_seeds_and_the_report_pairs_them(
        tmp_path, monkeypatch):
    from ablate.report.build import build_report
    from ablate.sweep import run_sweep

    monkeypatch.setenv("ABLATE_CACHE", str(Path("results").resolve()))
    monkeypatch.chdir(tmp_path)
    space = oat(tmp_path, **{"  guide: [controlnet, none, adapter]": "  guide: [controlnet, none]",
                             "  weight: [paper, none]\n": ""})
    space.write_text(space.read_text().replace(
        "reference: {guide: controlnet, filter: paper, weight: paper}",
        "reference: {guide: controlnet, filter: paper}"))
    url = f"sqlite:///{tmp_path / 'r.db'}"
    run_sweep(str(space), db_url=url, name="oat", n_boot=20)
    db = ResultsDB(url)
    trials = db.trials("oat")
    assert sorted(trials["status"]) == ["finished"] * 6
    recipes = [json.loads(r) for r in trials["recipe_json"]]
    cells = {(r["guide"]["name"], (r.get("filter") or {}).get("name")) for r in recipes}
    assert cells == {("controlnet", "paper"), ("none", None), ("controlnet", "conv_only")}
    for cell in cells:  # the same seeds in every cell
        seeds = sorted(t.seed for t, r in zip(trials.itertuples(), recipes, strict=True)
                       if (r["guide"]["name"], (r.get("filter") or {}).get("name")) == cell)
        assert seeds == [0, 1], cell
    settings = db.list_sweeps().set_index("name").loc["oat"]
    assert "one-at-a-time" in settings["settings_json"]

    report = build_report("oat", url, out=tmp_path / "report", formats="md,csv")
    ablation = pd.read_csv(report.folder / "ablation.csv")
    metrics = db.metrics("oat")
    frame_auc = metrics[(metrics["split"] == "test") & (metrics["level"] == "frame")
                        & (metrics["metric"] == "auc")]
    by_trial = {int(t.id): (r, int(t.seed)) for t, r in
                zip(trials.itertuples(), recipes, strict=True)}

    def values(guide: str, filt: str | None) -> dict[tuple[int, str], float]:
        out = {}
        for row in frame_auc.itertuples():
            recipe, seed = by_trial[int(row.trial_id)]
            if (recipe["guide"]["name"], (recipe.get("filter") or {}).get("name")) == (guide, filt):
                out[(seed, row.dataset)] = row.value
        return out

    ref = values("controlnet", "paper")
    for factor, variant, cell in (("filter", "conv_only", ("controlnet", "conv_only")),
                                  ("guide", "none", ("none", None))):
        mine = values(*cell)
        seeds = sorted({s for s, _ in ref})  # 2 seeds x 2 test sets
        per_seed = np.array([np.mean([mine[k] - ref[k] for k in ref if k[0] == s])
                             for s in seeds])  # test sets averaged within each seed
        half = stats.t.ppf(0.975, len(per_seed) - 1) * per_seed.std(ddof=1) / np.sqrt(2)
        row = ablation[(ablation["factor"] == factor) & (ablation["variant"] == variant)
                       & (ablation["metric"] == "auc")].iloc[0]
        assert row["matching"] == "paired" and row["n_seeds"] == 2
        assert row["mean"] == pytest.approx(per_seed.mean(), abs=1e-12)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx(
            (per_seed.mean() - half, per_seed.mean() + half), abs=1e-12)
    text = (report.folder / "report.md").read_text()
    assert "Baseline vs + guidance" in text and "A design samples nothing" in text

    # paired tests: ΔAUC from the runs' own per-frame scores (sklearn), Holm by hand
    from sklearn.metrics import roc_auc_score

    tests = pd.read_csv(report.folder / "paired_tests.csv")
    assert set(tests["test"]) == {"DeLong (frames)", "paired video bootstrap"}
    runs = {(r["guide"]["name"], (r.get("filter") or {}).get("name"), int(t.seed)): t.run_dir
            for t, r in zip(trials.itertuples(), recipes, strict=True)}
    conv = tests[tests["comparison"].str.startswith("filter=conv_only")]
    assert len(conv) == 4  # 2 test sets x 2 tests
    for row in conv.itertuples():
        aucs = {}
        for cell in (("controlnet", "conv_only"), ("controlnet", "paper")):
            per_seed = []
            for seed in (0, 1):
                s = pd.read_csv(Path(runs[(*cell, seed)]) / "scores.csv")
                s = s[s["dataset"] == row.dataset]
                per_seed.append(roc_auc_score(s["label"], s["score"]))
            aucs[cell] = np.mean(per_seed)
        assert row.diff == pytest.approx(aucs[("controlnet", "conv_only")]
                                         - aucs[("controlnet", "paper")], abs=1e-12)
    for _, group in tests.groupby("test"):
        p = group["p"].to_numpy()
        order = np.argsort(p)
        holm = np.minimum(1, np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order]))
        assert group["p_holm"].to_numpy()[order] == pytest.approx(holm, abs=1e-12)
