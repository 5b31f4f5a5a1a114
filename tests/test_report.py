"""`ablate report`: numbers from a database with known contents, every format, bad input.

The database is written through ResultsDB's public API with hand-picked values;
expected means, CIs and paired differences are recomputed here with numpy/scipy
from those values, never read back from the report's own code.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from click.testing import CliRunner
from optuna.distributions import CategoricalDistribution, FloatDistribution
from scipy import stats

from ablate.cli import cli
from ablate.core.errors import AblateError
from ablate.report import build_report
from ablate.report.importance import sampler_note
from ablate.report.stats import pareto_mask
from ablate.results import ResultsDB

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2025, 3, 1, 12, 0, 0)
TESTS = ["synth-colour", "synth-warp"]
SEEDS = [0, 1, 2]
# (filter, weight, guide) -> per test set, AUC for seeds 0, 1, 2
AUC = {
    ("paper", "paper", "controlnet"): {"synth-colour": [0.80, 0.82, 0.84],
                                       "synth-warp": [0.70, 0.71, 0.75]},
    ("no_mhsa", "paper", "controlnet"): {"synth-colour": [0.78, 0.80, 0.81],
                                         "synth-warp": [0.69, 0.70, 0.72]},
    ("paper", "constant", "controlnet"): {"synth-colour": [0.81, 0.83, 0.86],
                                          "synth-warp": [0.72, 0.72, 0.76]},
    ("paper", "code", "adapter"): {"synth-colour": [0.75, 0.77, 0.76],
                                   "synth-warp": [0.66, 0.68, 0.65]},
}
VAL = {("paper", "paper", "controlnet"): 0.95, ("no_mhsa", "paper", "controlnet"): 0.93,
       ("paper", "constant", "controlnet"): 0.96, ("paper", "code", "adapter"): 0.90}
PARAMS = {("paper", "paper", "controlnet"): 1000, ("no_mhsa", "paper", "controlnet"): 800,
          ("paper", "constant", "controlnet"): 990, ("paper", "code", "adapter"): 500}
REF, NO_MHSA, CONST, ADAPT = list(AUC)


def eer_of(auc: float) -> float:
    return round(0.5 - (auc - 0.5) * 0.6, 6)


def recipe(key: tuple[str, str, str], seed: int, lr: float = 1e-4) -> dict:
    filt, weight, guide = key
    filter_args = {"name": filt, **({"heads": 4} if filt in ("paper", "code") else {})}
    return {"backbone": {"name": "tiny"}, "filter": filter_args, "weight": {"name": weight},
            "guide": {"name": guide}, "teacher": {"name": "tiny-sd15"}, "train": {"lr": lr},
            "data": {"train": "synth-blend", "tests": TESTS}, "image_size": 64, "seed": seed}


def metrics_of(key: tuple[str, str, str], seed: int) -> list[dict]:
    rows = [{"dataset": "synth-blend", "split": "val", "level": "frame", "metric": "auc",
             "value": VAL[key] + seed * 0.001}]
    for test in TESTS:
        auc = AUC[key][test][seed]
        rows += [{"dataset": test, "split": "test", "level": "frame", "metric": "auc",
                  "value": auc, "ci_low": auc - 0.03, "ci_high": auc + 0.02, "n": 400},
                 {"dataset": test, "split": "test", "level": "frame", "metric": "eer",
                  "value": eer_of(auc), "ci_low": eer_of(auc) - 0.02,
                  "ci_high": eer_of(auc) + 0.02, "n": 400},
                 {"dataset": test, "split": "test", "level": "video", "metric": "auc",
                  "value": min(auc + 0.05, 1.0), "n": 40}]
    return rows


def curves_of(seed: int) -> list[tuple[int, str, float]]:
    return [(s, name, v) for s in range(0, 40, 10)
            for name, v in (("loss/total", 2.0 / (1 + s + seed)), ("val/auc", 0.5 + s / 100))]


def record(db: ResultsDB, sweep_id: int, tid: str, key, seed: int, status: str = "finished",
           **kw) -> int:
    return db.record_trial(sweep_id, tid, recipe_hash=f"{'-'.join(key)}-{seed}",
                           recipe=recipe(key, seed), seed=seed, status=status,
                           started=T0, ended=T0 + timedelta(minutes=3), **kw)


def add_optuna_study(url: str, name: str) -> None:
    """12 trials: val_auc driven by the filter, params_trainable by the weight module."""
    study = optuna.create_study(study_name=name, storage=url,
                                directions=["maximize", "minimize"])
    filters, weights = ["paper", "no_mhsa", "conv_only", "code"], ["paper", "constant", "none"]
    dists = {"filter": CategoricalDistribution(filters), "weight": CategoricalDistribution(weights),
             "train.lr": FloatDistribution(1e-5, 1e-3, log=True),
             "filter.heads": CategoricalDistribution([2, 4])}
    rng = np.random.default_rng(0)
    for i in range(12):
        params = {"filter": filters[i % 4], "weight": weights[i % 3],
                  "train.lr": float(10 ** rng.uniform(-5, -3))}
        if params["filter"] in ("paper", "code"):
            params["filter.heads"] = 2 + 2 * (i % 2)
        values = [0.6 + 0.1 * filters.index(params["filter"]) + rng.normal(0, 0.003),
                  1000 - 300 * weights.index(params["weight"]) + rng.normal(0, 3)]
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: dists[k] for k in params}, values=values))


def build_db(url: str) -> dict:
    """The known database; returns trial ids the tests refer to."""
    ids: dict = {}
    with ResultsDB(url) as db:
        old = db.start_sweep("old", "quick", {"objectives": [{"metric": "val_auc",
                                                              "mode": "max"}]}, "v0")
        ids["origin"] = record(db, old, "t_orig:2", ADAPT, 2, metrics=metrics_of(ADAPT, 2),
                               params_trainable=PARAMS[ADAPT], curves=curves_of(2))
        settings = {"objectives": [{"metric": "val_auc", "mode": "max"},
                                   {"metric": "params_trainable", "mode": "min"}],
                    "sampler": "tpe", "seeds": 3}
        sid = db.start_sweep("abl", "modules", settings, "v1")
        n = 0
        for key in AUC:
            for seed in SEEDS:
                n += 1
                if key == ADAPT and seed == 2:
                    record(db, sid, f"t{n}:{seed}", key, seed, status="reused",
                           reused_from=ids["origin"], metrics=metrics_of(key, seed),
                           params_trainable=PARAMS[key], curves=curves_of(seed))
                    continue
                record(db, sid, f"t{n}:{seed}", key, seed, metrics=metrics_of(key, seed),
                       params_trainable=PARAMS[key], step_time_s=0.1 * (1 + seed),
                       curves=curves_of(seed))
        # the search sampled the reference again: a reused copy must not count twice
        record(db, sid, "t_dup:0", REF, 0, status="reused", metrics=metrics_of(REF, 0))
        db.record_trial(sid, "t_pruned:0", recipe_hash="p", recipe=recipe(NO_MHSA, 0, lr=1e-3),
                        seed=0, status="pruned", started=None, ended=T0,
                        curves=[(10, "val/auc", 0.55)])
        db.record_trial(sid, "t_failed:0", recipe_hash="f", recipe=recipe(CONST, 0, lr=2e-3),
                        seed=0, status="failed", started=None, ended=T0,
                        error="CUDA out of memory. Tried to allocate 2 GiB\nTraceback ...")
        db.record_trial(sid, "t_nan:0", recipe_hash="n", recipe=recipe(REF, 0, lr=5e-3), seed=0,
                        status="nan", started=T0, ended=T0, error="loss is NaN at step 12")
        add_optuna_study(db.optuna_storage_url, "abl")
        bare = db.start_sweep("bare", "quick", {}, "v1")  # finished, but never evaluated
        record(db, bare, "z:0", REF, 0)
        dead = db.start_sweep("dead", "quick", {}, "v1")
        db.record_trial(dead, "x:0", recipe_hash="d", recipe=recipe(REF, 0), seed=0,
                        status="failed", started=None, ended=T0, error="ValueError: bad lr")
        db.record_trial(dead, "y:0", recipe_hash="e", recipe=recipe(REF, 1), seed=1,
                        status="pruned", started=None, ended=T0)
    return ids


@pytest.fixture(scope="module")
def db_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('reportdb') / 'ablate.db'}"
    build_db(url)
    return url


@pytest.fixture(scope="module")
def built(db_url: str, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("report") / "abl"
    return build_report("abl", db_url, folder)


def label(key: tuple[str, str, str]) -> str:
    return f"filter={key[0]} weight={key[1]} guide={key[2]}"


def t_ci(values: list[float]) -> tuple[float, float]:
    """Mean and 95% half-width (Student t), computed independently of the report."""
    x = np.asarray(values)
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return float(x.mean()), float(half)


# ---------------------------------------------------------------- numbers


def test_main_csv_has_mean_and_ci_over_seeds(built) -> None:
    main = pd.read_csv(built.folder / "main.csv")
    frame = main[main["level"] == "frame"].set_index(["label", "dataset", "metric"])
    for key, per_test in AUC.items():
        for test, values in per_test.items():
            row = frame.loc[(label(key), test, "auc")]
            mean, half = t_ci(values)
            assert row["n_seeds"] == 3  # reused seed counted, duplicate reused copy not
            assert row["mean"] == pytest.approx(mean)
            assert (row["ci_high"] - row["ci_low"]) / 2 == pytest.approx(half)
            eer = frame.loc[(label(key), test, "eer")]
            assert eer["mean"] == pytest.approx(np.mean([eer_of(v) for v in values]))
        avg = frame.loc[(label(key), "avg", "auc")]
        per_seed = np.mean([per_test[t] for t in TESTS], axis=0)
        assert avg["mean"] == pytest.approx(per_seed.mean())
        assert (avg["ci_high"] - avg["ci_low"]) / 2 == pytest.approx(t_ci(per_seed)[1])


def test_main_markdown_shows_percent_and_best(built) -> None:
    md = built.main_markdown
    lines = {line.split("|")[1].strip(): line for line in md.splitlines()[2:] if "|" in line}
    mean, half = t_ci(AUC[REF]["synth-colour"])
    ref_row = lines[f"{label(REF)} (ref)"]
    assert f"{mean * 100:.2f} ± {half * 100:.2f}" in ref_row
    best = lines[label(CONST)]  # CONST has the best AUC on both test sets and the average
    mean_c, half_c = t_ci(AUC[CONST]["synth-colour"])
    assert f"**{mean_c * 100:.2f} ± {half_c * 100:.2f}**" in best
    assert "**" not in lines[label(ADAPT)]  # worst everywhere (highest EER too: not bold)
    order = [row.split(" (ref)")[0] for row in lines if row.startswith("filter=")]
    assert order[0] == label(CONST) and order[-1] == label(ADAPT)  # sorted by average AUC


def test_ablation_paired_difference(built) -> None:
    abl = pd.read_csv(built.folder / "ablation.csv")
    row = abl[(abl["factor"] == "filter") & (abl["variant"] == "no_mhsa")
              & (abl["metric"] == "auc")].iloc[0]
    diffs = np.array([np.subtract(AUC[NO_MHSA][t], AUC[REF][t]) for t in TESTS])  # (T, seeds)
    seed_means = diffs.mean(axis=0)  # test sets averaged within each seed: the unit is the run
    mean, half = t_ci(seed_means)
    assert row["matching"] == "paired" and row["reference"] == "paper"
    assert row["n_seeds"] == len(seed_means) == 3
    assert row["mean"] == pytest.approx(mean)
    assert (row["ci_high"] - row["ci_low"]) / 2 == pytest.approx(half)
    assert row["procedure"] == "t over seed means"
    const = abl[(abl["variant"] == "constant") & (abl["metric"] == "auc")].iloc[0]
    assert const["matching"] == "paired"
    assert const["mean"] == pytest.approx(
        np.mean([np.subtract(AUC[CONST][t], AUC[REF][t]) for t in TESTS]))


def test_ablation_unmatched_when_no_single_slot_change(built) -> None:
    abl = pd.read_csv(built.folder / "ablation.csv")
    guide = abl[(abl["factor"] == "guide") & (abl["metric"] == "auc")].iloc[0]
    assert guide["variant"] == "adapter" and guide["matching"] == "unmatched"
    # adapter configs minus the mean of all controlnet configs, per (seed, test set)
    controlnet = [REF, NO_MHSA, CONST]
    diffs = [AUC[ADAPT][t][s] - np.mean([AUC[k][t][s] for k in controlnet])
             for t in TESTS for s in SEEDS]
    assert guide["mean"] == pytest.approx(np.mean(diffs)) and guide["n_seeds"] == 3
    md = (built.folder / "report.md").read_text()
    mean, low, high = (abl.loc[(abl["variant"] == "no_mhsa") & (abl["metric"] == "auc"), c].iloc[0]
                       for c in ("mean", "ci_low", "ci_high"))
    assert (f"filter=no_mhsa instead of paper: AUC {mean * 100:+.2f} ± "
            f"{(high - low) / 2 * 100:.2f} points") in md
    assert "paired, 3 seeds; MDE " in md


def test_reference_is_the_default_recipe(built) -> None:
    md = (built.folder / "report.md").read_text()
    assert f"Reference recipe: {label(REF)} (the default recipe's choices (filter=paper, " \
           "weight=paper, guide=controlnet))" in md


def test_status_counts_and_errors(built) -> None:
    status = pd.read_csv(built.folder / "status.csv", keep_default_na=False)
    status = status.set_index("status")["trials"]
    assert status.to_dict() == {"finished": 11, "reused": 2, "pruned": 1, "failed": 1, "nan": 1,
                                "running": 0, "total": 16}
    errors = pd.read_csv(built.folder / "errors.csv")
    assert set(errors["error"]) == {"CUDA out of memory. Tried to allocate 2 GiB",
                                    "loss is NaN at step 12"}
    trials = pd.read_csv(built.folder / "trials.csv")
    assert trials["counted"].sum() == 12  # 4 recipes x 3 seeds; the duplicate is not counted
    dup = trials[trials["tune_trial_id"] == "t_dup:0"].iloc[0]
    assert not dup["counted"]


def test_pareto_front(built) -> None:
    front = pd.read_csv(built.folder / "pareto.csv").set_index("label")
    val = {label(k): np.mean([v + s * 0.001 for s in SEEDS]) for k, v in VAL.items()}
    assert front["val_auc"].to_dict() == pytest.approx(val)
    # only REF is dominated: CONST has both a higher val AUC and fewer params (990 < 1000)
    assert set(front.index[front["on_front"]]) == {label(CONST), label(NO_MHSA), label(ADAPT)}


def test_pareto_mask_minimise_and_maximise() -> None:
    pts = np.array([[0.9, 100], [0.8, 50], [0.7, 80], [0.9, 120], [np.nan, 1]])
    assert pareto_mask(pts, [True, False]).tolist() == [True, True, False, False, False]


def test_importance_from_optuna_study(built) -> None:
    imp = pd.read_csv(built.folder / "importance.csv")
    top = imp.sort_values("importance", ascending=False).groupby("objective").head(1)
    assert dict(zip(top["objective"], top["param"], strict=True)) == {
        "val_auc": "filter", "params_trainable": "weight"}
    assert imp.groupby("objective")["importance"].sum().to_numpy() == pytest.approx([1, 1])
    assert "filter.heads" not in set(imp["param"])  # conditional: fANOVA cannot assess it
    md = (built.folder / "report.md").read_text()
    assert "Not assessed (conditional, absent from some trials): filter.heads" in md
    assert "sampled by tpe, an adaptive sampler" in md and "biased" in md


def test_sampler_notes() -> None:
    assert "not biased" in sampler_note("random") and "not biased" in sampler_note("grid")
    assert "Caution" in sampler_note("tpe") and "Caution" in sampler_note("nsga2")
    assert "unknown sampler" in sampler_note(None)


# ---------------------------------------------------------------- formats


def test_every_format_written(built) -> None:
    names = {p.name for p in built.files}
    assert {"report.md", "report.html", "main.tex", "ablation.tex", "main.csv",
            "auc_heatmap.png", "ablation.png", "importance.png", "pareto.png",
            "curves.png"} <= names
    assert all(p.is_file() and p.stat().st_size > 0 for p in built.files)
    tex = (built.folder / "main.tex").read_text()
    mean, half = t_ci(AUC[CONST]["synth-warp"])
    assert rf"\textbf{{{mean * 100:.2f} $\pm$ {half * 100:.2f}}}" in tex
    assert r"\toprule" in tex and "filter=no\\_mhsa" in tex
    md = (built.folder / "report.md").read_text()
    assert "![curves](curves.png)" in md and "## Pareto front" in md


def _image_check_page(report_html: Path, dest: Path) -> Path:
    """A copy of the page, away from its PNGs, that writes each image's load state into the DOM."""
    script = ("<script>window.addEventListener('load',()=>{const p=document.createElement('pre');"
              "p.id='imgcheck';p.textContent=JSON.stringify([...document.images].map("
              "i=>[i.complete,i.naturalWidth,i.naturalHeight]));document.body.appendChild(p);});"
              "</script>")
    page = report_html.read_text().replace("</body>", script + "</body>")
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / "moved.html"
    out.write_text(page)
    return out


def test_html_images_load_in_chromium(built, tmp_path: Path) -> None:
    html = (built.folder / "report.html").read_text()
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', html)
    assert len(sources) == len([p for p in built.files if p.suffix == ".png"]) == 5
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r'(href|src)="(?!data:)', html)  # nothing fetched: self-contained
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium not installed (Debian: apt-get install -y chromium); "
                    "the HTML checks above ran, the in-browser image load did not")
    page = _image_check_page(built.folder / "report.html", tmp_path / "elsewhere")
    done = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="imgcheck">(.*?)</pre>', done.stdout, re.S)
    assert found, f"chromium did not run the check: {done.stderr[-500:]}"
    images = json.loads(found.group(1))
    assert len(images) == 5
    assert all(ok and w > 100 and h > 100 for ok, w, h in images), images


def test_csv_only_writes_no_plots(db_url: str, tmp_path: Path) -> None:
    report = build_report("abl", db_url, tmp_path / "r", formats="csv")
    assert {p.suffix for p in report.files} == {".csv"}
    assert not list((tmp_path / "r").glob("*.png"))


def test_single_objective_without_study(db_url: str, tmp_path: Path) -> None:
    """Sweep 'old': one recipe, one seed, no Optuna study: no Pareto, importance skipped."""
    report = build_report("old", db_url, tmp_path / "old", formats="md,csv")
    md = (tmp_path / "old" / "report.md").read_text()
    assert "no Optuna study named 'old'" in md and "## Pareto front" not in md
    assert "Nothing to ablate" in md
    main = pd.read_csv(tmp_path / "old" / "main.csv")
    row = main[(main["dataset"] == "synth-colour") & (main["metric"] == "auc")
               & (main["level"] == "frame")].iloc[0]
    auc = AUC[ADAPT]["synth-colour"][2]  # one seed: the stored video-bootstrap CI is shown
    assert row["n_seeds"] == 1 and row["ci_kind"] == "video bootstrap"
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((auc - 0.03, auc + 0.02))
    assert f"{auc * 100:.2f} ± 2.50" in report.main_markdown


# ---------------------------------------------------------------- defaults and errors


def test_cli_default_sweep_is_newest_and_prints_table(db_url: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with ResultsDB(db_url) as db:  # a newer sweep than 'dead' that has results
        sid = db.start_sweep("newest", "quick", {}, "v1")
        record(db, sid, "n:0", REF, 0, metrics=metrics_of(REF, 0))
    try:
        result = CliRunner().invoke(cli, ["report", "--db", db_url, "--format", "md"])
        assert result.exit_code == 0, result.output
        folder = Path("results/reports/newest")
        assert f"written to {folder}/" in result.output
        assert (tmp_path / folder / "report.md").is_file()
        assert f"| {label(REF).split(' weight')[0]}" not in result.output  # one recipe: slot names
        assert "| Recipe | synth-colour AUC | synth-colour EER |" in result.output
        assert "80.00 ± 2.50" in result.output
    finally:
        with ResultsDB(db_url) as db, db._write() as conn:  # leave the module's DB as it was
            conn.exec_driver_sql("DELETE FROM ablate_sweeps WHERE name = 'newest'")


@pytest.mark.parametrize("sweep, out, message", [
    ("nope", None, "no sweep named 'nope'"),
    ("dead", None, "sweep 'dead' has no finished trials (1 failed, 1 pruned); nothing to report; "
                   "first error: ValueError: bad lr"),
    ("bare", None, "sweep 'bare' has 1 finished trial(s) but no test metrics"),
    ("abl", "FILE/sub", "cannot write the report to"),
])
def test_bad_input_is_one_line_error(db_url: str, tmp_path: Path, sweep: str, out: str | None,
                                     message: str) -> None:
    (tmp_path / "FILE").write_text("a file, not a folder")
    target = tmp_path / out if out else tmp_path / "r"
    with pytest.raises(AblateError) as err:
        build_report(sweep, db_url, target, formats="csv")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_format_missing_and_empty_db(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    with pytest.raises(AblateError, match="no results database at .*empty.db; run a sweep"):
        build_report(None, url, tmp_path / "r")
    assert not (tmp_path / "empty.db").exists()  # a report never creates a database
    ResultsDB(url).close()
    with pytest.raises(AblateError, match="unknown report format pdf"):
        build_report(None, url, tmp_path / "r", formats="md,pdf")
    with pytest.raises(AblateError, match="no sweeps in .*ablate sweep --space quick"):
        build_report(None, url, tmp_path / "r")


def test_cli_error_exit_code(db_url: str, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from ablate import cli as cli_module

    monkeypatch.setattr(sys, "argv", ["ablate", "report", "--db", db_url, "--sweep", "nope"])
    with pytest.raises(SystemExit) as exit_:
        cli_module.main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no sweep named 'nope'") and err.count("\n") == 1


def test_report_never_imports_torch(db_url: str, tmp_path: Path) -> None:
    code = ("import sys; from ablate.report import build_report; "
            f"build_report('abl', {db_url!r}, {str(tmp_path / 'r')!r}, formats='md,html'); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


# ---------------------------------------------------------------- the plain baseline

BASE_AUC = {"synth-colour": [0.74, 0.77, 0.78], "synth-warp": [0.69, 0.66, 0.70]}


def baseline_recipe(seed: int, lr: float = 1e-4) -> dict:
    """What result_dict stores for guide=none: no filter, weight or teacher."""
    return {"backbone": {"name": "tiny"}, "guide": {"name": "none"}, "train": {"lr": lr},
            "data": {"train": "synth-blend", "tests": TESTS}, "image_size": 64, "seed": seed}


def _report_with_baseline(tmp_path: Path, extra_baseline_seed: bool = False):  # noqa: ANN202
    """REF and NO_MHSA guided, their plain baseline (BASE_AUC) and one at another lr; with
    `extra_baseline_seed`, the baseline also ran seed 7, which no guided recipe has."""
    url = f"sqlite:///{tmp_path / 'b.db'}"
    with ResultsDB(url) as db:
        sid = db.start_sweep("withbase", "ablation", {"objectives": [
            {"metric": "val_auc", "mode": "max"}]}, "v1")
        if extra_baseline_seed:
            rows = [{"dataset": t, "split": "test", "level": "frame", "metric": "auc",
                     "value": 0.2} for t in TESTS]  # far off: used, it would move the mean
            db.record_trial(sid, "base:7", recipe_hash="base-7", recipe=baseline_recipe(7),
                            seed=7, status="finished", started=T0, ended=T0, metrics=rows)
        for seed in SEEDS:
            for key in (REF, NO_MHSA):
                record(db, sid, f"{key[0]}:{seed}", key, seed, metrics=metrics_of(key, seed))
            rows = [{"dataset": "synth-blend", "split": "val", "level": "frame",
                     "metric": "auc", "value": 0.9}]
            for test in TESTS:
                auc = BASE_AUC[test][seed]
                rows += [{"dataset": test, "split": "test", "level": "frame", "metric": "auc",
                          "value": auc},
                         {"dataset": test, "split": "test", "level": "frame", "metric": "eer",
                          "value": eer_of(auc)}]
            db.record_trial(sid, f"base:{seed}", recipe_hash=f"base-{seed}",
                            recipe=baseline_recipe(seed), seed=seed, status="finished",
                            started=T0, ended=T0, metrics=rows)
            # a baseline at another lr: never paired with a guided recipe as "the lr effect"
            db.record_trial(sid, f"base2:{seed}", recipe_hash=f"base2-{seed}",
                            recipe=baseline_recipe(seed, lr=2e-4), seed=seed, status="finished",
                            started=T0, ended=T0, metrics=rows)
    return build_report("withbase", url, tmp_path / "rep")


def test_report_measures_guidance_against_the_matched_baseline(tmp_path) -> None:
    report = _report_with_baseline(tmp_path)
    effects = pd.read_csv(report.folder / "guidance.csv")
    auc = effects[effects["metric"] == "auc"].set_index("variant")
    for key in (REF, NO_MHSA):
        diffs = [np.mean([AUC[key][t][s] - BASE_AUC[t][s] for t in TESTS]) for s in SEEDS]
        row = auc.loc[f"filter={key[0]} guide={key[2]} train.lr=0.0001"]
        assert row["reference"] == "guide=none train.lr=0.0001" and row["n_seeds"] == 3
        mean, half = t_ci(diffs)
        assert row["mean"] == pytest.approx(mean)
        assert (row["ci_high"] - row["ci_low"]) / 2 == pytest.approx(half)
    ablation = pd.read_csv(report.folder / "ablation.csv")
    none_row = ablation[(ablation["factor"] == "guide") & (ablation["metric"] == "auc")].iloc[0]
    assert none_row["variant"] == "none" and none_row["matching"] == "paired"
    ref_diffs = [BASE_AUC[t][s] - AUC[REF][t][s] for s in SEEDS for t in TESTS]
    assert none_row["mean"] == pytest.approx(np.mean(ref_diffs))
    # the filter factor is compared among guided recipes only: paired, not a hint
    filt = ablation[(ablation["factor"] == "filter") & (ablation["metric"] == "auc")]
    assert list(filt["variant"]) == ["no_mhsa"] and list(filt["matching"]) == ["paired"]
    lr = ablation[ablation["factor"] == "train.lr"]
    assert not lr.empty and set(lr["matching"]) == {"unmatched"}  # baseline@2e-4 vs guided
    text = (report.folder / "report.md").read_text()
    assert "Does guidance help?" in text and "vs the plain baseline" in text


def test_first_table_and_headline_equal_a_numpy_recomputation(tmp_path) -> None:
    from scipy import stats

    report = _report_with_baseline(tmp_path)
    first = pd.read_csv(report.folder / "baseline_vs_guidance.csv")
    frame_auc = first[(first["level"] == "frame") & (first["metric"] == "auc")]
    cell = frame_auc.set_index(["dataset", "detector"])

    def t_ci(x: list[float]) -> tuple[float, float, float]:
        x = np.asarray(x)
        half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
        return x.mean(), x.mean() - half, x.mean() + half

    for test in TESTS:  # each detector's mean ± t CI over seeds, and the paired Δ per test set
        for who, values in (("baseline", BASE_AUC[test]), ("guided", AUC[REF][test]),
                            ("difference", np.subtract(AUC[REF][test], BASE_AUC[test]))):
            row = cell.loc[(test, who)]
            assert (row["mean"], row["ci_low"], row["ci_high"]) == pytest.approx(
                t_ci(list(values)), abs=1e-12), (test, who)
    # Avg: the test sets averaged within each seed, then the t CI over those seed means
    seed_means = [np.mean([AUC[REF][t][s] - BASE_AUC[t][s] for t in TESTS]) for s in SEEDS]
    avg = cell.loc[("avg", "difference")]
    assert avg["n"] == 3 and avg["ci"] == "t over seed means"
    assert (avg["mean"], avg["ci_low"], avg["ci_high"]) == pytest.approx(
        t_ci(seed_means), abs=1e-12)
    # the guidance table (every guided recipe vs its baseline) agrees on the same pairs
    guidance = pd.read_csv(report.folder / "guidance.csv")
    ref_row = guidance[(guidance["metric"] == "auc") & guidance["variant"].str.startswith(
        "filter=paper")].iloc[0]
    assert (ref_row["mean"], ref_row["ci_low"], ref_row["ci_high"]) == pytest.approx(
        (avg["mean"], avg["ci_low"], avg["ci_high"]), abs=1e-12)
    # the headline sentence's numbers are that cell's, rounded to one decimal
    found = re.search(r"mean test AUC by ([+-][\d.]+) points \(95% CI ([+-][\d.]+) to "
                      r"([+-][\d.]+)\)", report.summary)
    assert found, report.summary
    assert [float(g) for g in found.groups()] == [
        round(avg[k] * 100, 1) for k in ("mean", "ci_low", "ci_high")]
    text = (report.folder / "report.md").read_text()
    assert text.index("## Summary") < text.index("Baseline vs + guidance") < text.index(
        "Cross-dataset results")
    assert "Baseline vs + guidance" in report.first_markdown


def test_unmatched_seeds_are_said_and_left_out_of_the_paired_difference(tmp_path) -> None:
    report = _report_with_baseline(tmp_path, extra_baseline_seed=True)
    first = pd.read_csv(report.folder / "baseline_vs_guidance.csv", keep_default_na=False)
    avg = first[(first["dataset"] == "avg") & (first["detector"] == "difference")
                & (first["level"] == "frame") & (first["metric"] == "auc")].iloc[0]
    seed_means = [np.mean([AUC[REF][t][s] - BASE_AUC[t][s] for t in TESTS]) for s in SEEDS]
    assert int(avg["n"]) == 3 and float(avg["mean"]) == pytest.approx(np.mean(seed_means))
    assert "seed(s) 7 without a partner" in avg["note"]
    assert "only matched seeds compared" in report.summary


def test_one_seed_is_no_interval_in_every_comparison(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'one.db'}"
    with ResultsDB(url) as db:
        sid = db.start_sweep("one", "ablation", {"objectives": [
            {"metric": "val_auc", "mode": "max"}]}, "v1")
        for key in (REF, NO_MHSA):
            record(db, sid, f"{key[0]}:0", key, 0, metrics=metrics_of(key, 0))
    report = build_report("one", url, tmp_path / "rep", formats="md,csv")
    abl = pd.read_csv(report.folder / "ablation.csv")
    row = abl[(abl["variant"] == "no_mhsa") & (abl["metric"] == "auc")].iloc[0]
    assert row["n_seeds"] == 1 and pd.isna(row["ci_low"]) and row["procedure"] == "no interval (1 seed)"
    assert "(no interval: 1 seed)" in (report.folder / "report.md").read_text()


# ---------------------------------------------------------------- Pareto front, by hand


def test_pareto_mask_hand_worked_ties_and_directions() -> None:
    # (a, b): hand-worked for every direction pair; rows 0 and 1 are an exact tie
    pts = np.array([[0.9, 100.0], [0.9, 100.0], [0.8, 50.0], [0.8, 80.0], [0.7, 50.0],
                    [1.0, 200.0], [0.85, 120.0], [np.nan, 1.0]])
    # a max, b min: 3 loses to 2 (same a, more b), 4 to 2 (same b, lower a), 6 to 0
    assert pareto_mask(pts, [True, False]).tolist() == [
        True, True, True, False, False, True, False, False]
    # both max: 5 beats everything on both
    assert pareto_mask(pts, [True, True]).tolist() == [
        False, False, False, False, False, True, False, False]
    # both min: 4 (0.7, 50) beats all others
    assert pareto_mask(pts, [False, False]).tolist() == [
        False, False, False, False, True, False, False, False]
    # a min, b max: 0 and 1 lose to 6 (lower a, higher b), 2 to 3 (same a, higher b);
    # 3, 4 (lowest a), 5 (highest b) and 6 lose to nobody
    assert pareto_mask(pts, [False, True]).tolist() == [
        False, False, False, True, True, True, True, False]
    # means over seeds that differ only by float rounding are a tie, not a win
    noisy = np.array([[(0.89 + 0.91) / 2, 10.0], [(0.85 + 0.95) / 2, 10.0]])
    assert noisy[0, 0] != noisy[1, 0]
    assert pareto_mask(noisy, [True, False]).tolist() == [True, True]


# recipe (filter, weight) -> val AUC per seed (0, 1), trainable params, test AUC per seed
FRONT_RECIPES = {
    "A": (("paper", "paper"), [0.89, 0.91], 1000, [0.70, 0.72]),
    "B": (("no_mhsa", "paper"), [0.85, 0.95], 1000, [0.69, 0.71]),  # ties A (float noise)
    "C": (("paper", "constant"), [0.85, 0.85], 500, [0.66, 0.68]),
    "D": (("no_mhsa", "constant"), [0.85, 0.85], 700, [0.65, 0.65]),  # C: same AUC, fewer
    "E": (("conv_only", "constant"), [0.80, 0.80], 500, [0.60, 0.62]),  # C: same params
    "F": (("paper", "code"), [0.95, 0.95], 2000, [0.75, 0.77]),
    "G": (("conv_only", "paper"), [0.88, 0.88], 1200, [0.68, 0.69]),  # A: better on both
}
FRONT = {"A", "B", "C", "F"}  # worked by hand from the comments above


def front_label(name: str) -> str:
    filt, weight = FRONT_RECIPES[name][0]
    return f"filter={filt} weight={weight}"


def test_two_objective_report_shows_the_hand_worked_front(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'front.db'}"
    with ResultsDB(url) as db:
        sid = db.start_sweep("front", "modules", {"objectives": [
            {"metric": "val_auc", "mode": "max"},
            {"metric": "params_trainable", "mode": "min"}]}, "v1")
        for name, ((filt, weight), vals, params, tests) in FRONT_RECIPES.items():
            key = (filt, weight, "controlnet")
            for seed in (0, 1):
                rows = [{"dataset": "synth-blend", "split": "val", "level": "frame",
                         "metric": "auc", "value": vals[seed]},
                        {"dataset": "synth-colour", "split": "test", "level": "frame",
                         "metric": "auc", "value": tests[seed]}]
                record(db, sid, f"{name}:{seed}", key, seed, metrics=rows,
                       params_trainable=params, step_time_s=0.1 + seed * 0.1)
        # a failed seed of D: not a result, so it must not pull D's params down to the front
        db.record_trial(sid, "D:2", recipe_hash="D2", recipe=recipe(
            (*FRONT_RECIPES["D"][0], "controlnet"), 2), seed=2, status="failed", started=T0,
            ended=T0, params_trainable=100, error="boom", metrics=[
                {"dataset": "synth-blend", "split": "val", "level": "frame", "metric": "auc",
                 "value": 0.99}])
    report = build_report("front", url, tmp_path / "rep", formats="md,html,csv")
    front = pd.read_csv(report.folder / "pareto.csv").set_index("label")
    assert len(front) == len(FRONT_RECIPES)  # every recipe, with its flag
    assert set(front.index[front["on_front"]]) == {front_label(n) for n in FRONT}
    for name, (_, vals, params, tests) in FRONT_RECIPES.items():
        row = front.loc[front_label(name)]
        assert row["val_auc"] == pytest.approx(np.mean(vals))
        assert row["params_trainable"] == params
        assert row["test_auc_mean"] == pytest.approx(np.mean(tests))
        assert row["step_time_s"] == pytest.approx(0.15) and row["n_seeds"] == 2

    md = (report.folder / "report.md").read_text()
    section = md.split("## Pareto front", 1)[1].split("\n## ", 1)[0]
    assert "**Pareto front (4 of 7 recipes)**" in section
    table = [line for line in section.splitlines() if line.startswith("| filter=")]
    assert [line.split("|")[1].strip() for line in table][0] == front_label("F")  # best AUC
    assert {line.split("|")[1].strip() for line in table} == {front_label(n) for n in FRONT}
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
             for line in table}
    # Val AUC (%) and test AUC mean (%) ± the t CI over the 2 seeds, params, step time, seeds

    def auc_cell(values: list[float]) -> str:
        mean, half = t_ci(values)
        return f"{mean * 100:.2f} ± {half * 100:.2f}"

    for name in ("F", "C"):
        _, vals, params, tests = FRONT_RECIPES[name]
        assert cells[front_label(name)] == [auc_cell(vals), f"{params:,}", auc_cell(tests),
                                            "0.15", "2"]
    assert cells[front_label("F")][2] == "76.00 ± 12.71"  # hand-worked: t(.975, 1) * 0.01
    assert "![pareto](pareto.png)" in section
    assert (report.folder / "pareto.png").stat().st_size > 1000
    assert "Pareto front (4 of 7 recipes)" in (report.folder / "report.html").read_text()


# ---------------------------------------------------------------- code versions


def test_report_names_every_code_version_its_numbers_come_from(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'versions.db'}"
    single = [{"metric": "val_auc", "mode": "max"}]
    with ResultsDB(url) as db:
        first = db.start_sweep("first", "quick", {"objectives": single}, "v1.0-abc")
        origin = record(db, first, "o:0", REF, 0, metrics=metrics_of(REF, 0))
        record(db, first, "o:1", REF, 1, metrics=metrics_of(REF, 1))
        second = db.start_sweep("second", "quick", {"objectives": single}, "v1.1-def")
        for seed in SEEDS:
            record(db, second, f"n:{seed}", NO_MHSA, seed, metrics=metrics_of(NO_MHSA, seed))
        # the reference's seed 0 copied from the first sweep: computed by v1.0-abc
        record(db, second, "r:0", REF, 0, status="reused", reused_from=origin,
               metrics=metrics_of(REF, 0))
    one = build_report("first", url, tmp_path / "one", formats="md")
    head = (one.folder / "report.md").read_text().split("\n## ", 1)[0]
    assert "- **code versions**: v1.0-abc (2 trials)" in head and "numbers from" not in head
    two = build_report("second", url, tmp_path / "two", formats="md,html,csv")
    head = (two.folder / "report.md").read_text().split("\n## ", 1)[0]
    assert ("- **code versions**: numbers from 2 code versions: v1.1-def (3 trials), "
            "v1.0-abc (1 trial)") in head
    assert "numbers from 2 code versions" in (two.folder / "report.html").read_text()
    trials = pd.read_csv(two.folder / "trials.csv").set_index("tune_trial_id")
    assert trials["code_version"].to_dict() == {"n:0": "v1.1-def", "n:1": "v1.1-def",
                                                "n:2": "v1.1-def", "r:0": "v1.0-abc"}


def test_trial_code_version_column_wins_over_the_sweeps() -> None:
    """The trials table may carry its own code_version (optional): it wins when filled."""
    from ablate.report.versions import result_versions

    sweeps = {"s": "sweep-v", "old": "old-v"}
    trials = pd.DataFrame({"id": [1, 2, 3], "sweep": ["s", "s", "s"],
                           "code_version": ["trial-v", None, None],
                           "reused_from": [None, None, 9]})
    origins = pd.DataFrame({"id": [9], "sweep": ["old"], "code_version": ["origin-v"]})
    assert result_versions(trials, origins, sweeps).tolist() == ["trial-v", "sweep-v",
                                                                 "origin-v"]
    bare = trials.drop(columns="code_version")  # a trials table without the column
    assert result_versions(bare, origins.drop(columns="code_version"), sweeps).tolist() == [
        "sweep-v", "sweep-v", "old-v"]


# ---------------------------------------------------------------- ranks across test sets


def test_three_recipes_on_three_test_sets_get_a_rank_section(tmp_path: Path) -> None:
    """Ranks within each test set of the mean AUC over seeds, by hand with pandas, and the
    Friedman statistic against scipy; the CD diagram is drawn."""
    tests = ["synth-colour", "synth-warp", "synth-lowres"]
    rng = np.random.default_rng(5)
    base = {"paper": 0.80, "no_mhsa": 0.78, "conv_only": 0.70, "code": 0.79}
    url = f"sqlite:///{tmp_path / 'ranks.db'}"
    values = []
    with ResultsDB(url) as db:
        sid = db.start_sweep("ranks", "ablation", {"objectives": [
            {"metric": "val_auc", "mode": "max"}]}, "v1")
        for filt, level in base.items():
            key = (filt, "paper", "controlnet")
            for seed in SEEDS:
                rows = [{"dataset": "synth-blend", "split": "val", "level": "frame",
                         "metric": "auc", "value": level}]
                for i, test in enumerate(tests):
                    auc = float(level - 0.02 * i + rng.normal(0, 0.01))
                    values.append((filt, seed, test, auc))
                    rows.append({"dataset": test, "split": "test", "level": "frame",
                                 "metric": "auc", "value": auc})
                rec = {**recipe(key, seed), "data": {"train": "synth-blend", "tests": tests}}
                db.record_trial(sid, f"{filt}:{seed}", recipe_hash=f"{filt}-{seed}",
                                recipe=rec, seed=seed, status="finished", started=T0, ended=T0,
                                metrics=rows)
    report = build_report("ranks", url, tmp_path / "rep", formats="md,csv")
    frame = pd.DataFrame(values, columns=["filter", "seed", "dataset", "auc"])
    cells = frame.groupby(["filter", "dataset"])["auc"].mean().unstack()
    by_hand = cells.rank(axis=0, ascending=False).mean(axis=1)  # 1 = best, per test set
    ranks = pd.read_csv(report.folder / "ranks.csv")
    for r in ranks.itertuples():
        filt = r.recipe.split("filter=")[1].split()[0]
        assert r.mean_rank == pytest.approx(by_hand[filt])
    md = (report.folder / "report.md").read_text()
    section = md.split("## Ranks across test sets", 1)[1].split("\n## ", 1)[0]
    chi2 = stats.friedmanchisquare(*[cells.loc[f].to_numpy() for f in cells.index]).statistic
    assert f"chi2_F = {chi2:.3g}" in section
    assert (report.folder / "cd_diagram.png").stat().st_size > 1000


def test_a_test_sets_breakdown_is_never_counted_again_in_an_average(tmp_path: Path) -> None:
    """`synth-colour::part` rows (a per-method breakdown) are shown, but the Avg and every
    paired difference average the whole test sets only."""
    url = f"sqlite:///{tmp_path / 'parts.db'}"
    with ResultsDB(url) as db:
        sid = db.start_sweep("parts", "ablation", {"objectives": [
            {"metric": "val_auc", "mode": "max"}]}, "v1")
        for key in (REF, NO_MHSA):
            for seed in SEEDS:
                rows = metrics_of(key, seed) + [{
                    "dataset": "synth-colour::fam1", "split": "test", "level": "frame",
                    "metric": "auc", "value": 0.1 if key == REF else 0.9}]
                record(db, sid, f"{key[0]}:{seed}", key, seed, metrics=rows)
    report = build_report("parts", url, tmp_path / "rep", formats="csv")
    main = pd.read_csv(report.folder / "main.csv")
    avg = main[(main["label"] == "filter=paper") & (main["dataset"] == "avg")
               & (main["level"] == "frame") & (main["metric"] == "auc")].iloc[0]
    per_seed = np.mean([AUC[REF][t] for t in TESTS], axis=0)
    assert avg["mean"] == pytest.approx(per_seed.mean())
    abl = pd.read_csv(report.folder / "ablation.csv")
    row = abl[(abl["variant"] == "no_mhsa") & (abl["metric"] == "auc")].iloc[0]
    diffs = np.mean([np.subtract(AUC[NO_MHSA][t], AUC[REF][t]) for t in TESTS], axis=0)
    assert row["mean"] == pytest.approx(diffs.mean())
