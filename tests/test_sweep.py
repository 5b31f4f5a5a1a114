"""Real sweeps through Ray Tune + Optuna on CPU, into SQLite and PostgreSQL.

Every sweep here trains tiny recipes for a few steps; what is checked is the
machinery: rows, statuses, metrics per test set, reuse, resume, faults, errors.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli
from pg import fresh_postgres_url, postgres_url  # noqa: F401

from ablate.core.errors import AblateError
from ablate.results import ResultsDB
from ablate.sweep import run_sweep

pytestmark = pytest.mark.slow

TESTS = ["synth-colour", "synth-warp"]

SPACE = """
description: "test: tiny trials"
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
params:
{params}
objectives:
  - {{metric: val_auc, mode: max}}
budget: {{trials: {trials}, max_concurrent: {concurrent}}}
seeds: 1
early_stopping: {{enabled: {asha}, grace_period: 1, reduction_factor: 2}}
resources: {{cpu: 1, gpu: 0}}
tests: [synth-colour, synth-warp]
sampler: {{name: {sampler}, seed: 0}}
"""

MODULES = """  filter: {choice: [paper, conv_only]}
  guide: {choice: [controlnet, adapter]}"""

def write_space(folder: Path, params: str = MODULES, trials: int = 2, concurrent: int = 2,
                steps: int = 6, asha: bool = False, sampler: str = "tpe") -> str:
    path = folder / "tiny.yaml"
    path.write_text(SPACE.format(params=params, trials=trials, concurrent=concurrent,
                                 steps=steps, asha=str(asha).lower(), sampler=sampler))
    return str(path)


def check_filled(db: ResultsDB, name: str, n_finished: int) -> None:
    trials = db.trials(name)
    finished = trials[trials["status"] == "finished"]
    assert len(finished) == n_finished
    assert finished["recipe_hash"].str.len().gt(0).all()
    metrics = db.metrics(name)
    for trial_id in finished["id"]:
        mine = metrics[metrics["trial_id"] == trial_id]
        test = mine[(mine["split"] == "test") & (mine["metric"] == "auc")]
        assert set(test["dataset"]) == set(TESTS)
        assert set(test["level"]) == {"frame", "video"}
        assert test["value"].between(0, 1).all()
        assert (test["ci_low"] <= test["value"]).all() and (test["value"] <= test["ci_high"]).all()
        val = mine[(mine["split"] == "val") & (mine["metric"] == "auc")]
        assert list(val["dataset"]) == ["synth-blend"]
    curves = db.curves(name)
    assert set(curves[curves["trial_id"].isin(finished["id"])]["name"]) >= {"val/auc",
                                                                              "loss/total"}


def test_sweep_fills_sqlite_then_reuses_finished_recipes(in_tmp):
    url = f"sqlite:///{in_tmp / 'r.db'}"
    space = write_space(in_tmp)
    summary = run_sweep(space, db_url=url, name="first", n_boot=20)
    db = ResultsDB(url)
    check_filled(db, "first", 2)
    assert db.list_sweeps().set_index("name").loc["first", "status"] == "finished"
    assert list(summary.table["status"]) == ["finished", "finished"]

    # same space, same sampler seed: the same recipes come up and are reused, not re-run
    run_sweep(space, db_url=url, name="again", n_boot=20)
    again = db.trials("again")
    first = db.trials("first")
    assert list(again["status"]) == ["reused", "reused"]
    assert set(again["reused_from"]) == set(first["id"])
    assert set(again["recipe_hash"]) == set(first["recipe_hash"])
    assert len(list((in_tmp / "results/runs/again").glob("*"))) == 0  # nothing trained
    reused_metrics = db.metrics("again")
    assert len(reused_metrics) == len(db.metrics("first"))


def test_sweep_into_postgres_keeps_its_password_out_of_every_file(in_tmp, fresh_postgres_url):  # noqa: F811
    import sqlalchemy as sa

    secret = "s3cr3t-pw-ablate"  # the test server trusts local users, so any password works
    url = sa.make_url(fresh_postgres_url)._replace(password=secret).render_as_string(
        hide_password=False)
    space = write_space(in_tmp, trials=2)
    run_sweep(space, db_url=url, name="pg", n_boot=20)
    db = ResultsDB(url)
    check_filled(db, "pg", 2)
    import optuna  # the study lives in the same database

    study = optuna.load_study(study_name="pg", storage=url)
    assert len(study.trials) == 2
    # not in Tune's pickled state, run folders, logs (ours and Ray's) or the results
    ray_logs = Path("/tmp/ray/session_latest").resolve()
    files = [p for folder in (in_tmp, ray_logs) for p in folder.rglob("*") if p.is_file()]
    assert any(p.suffix == ".pkl" for p in files)  # Tune did pickle its state here
    leaked = [p for p in files if secret.encode() in p.read_bytes()]
    assert not leaked, leaked
    tables = [db.list_sweeps(), db.trials("pg"), db.metrics("pg"), db.curves("pg")]
    assert not any(secret in t.to_csv() for t in tables)


def _ablate(*args: str, cwd: Path) -> subprocess.Popen:
    exe = Path(sys.executable).parent / "ablate"
    return subprocess.Popen([str(exe), *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "ABLATE_CACHE": str(Path("results").resolve())})


def optuna_agrees_with_rows(url: str, name: str) -> list[str]:
    """Check trial by trial that the sweep's Optuna study says what its rows say."""
    import optuna

    study = optuna.load_study(study_name=name, storage=url)
    rows = ResultsDB(url).trials(name)
    metrics = ResultsDB(url).metrics(name)
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    states = []
    number = {t.number: t for t in study.trials}
    for t in study.trials:
        if t.user_attrs.get("interrupted"):
            continue
        # a retry of a trial cut off by a kill also owns the seeds that trial wrote
        owners, chain = [t.user_attrs["tune_trial_id"]], t
        while "retry_of" in chain.user_attrs:
            chain = number[chain.user_attrs["retry_of"]]
            # none when the kill fell between Optuna's ask and the Tune id being written:
            # that trial never ran, so it owns no rows (its retry reruns the recipe)
            owners.append(chain.user_attrs.get("tune_trial_id", ""))
        mine = rows[rows["tune_trial_id"].str.split(":").str[0].isin(owners)]
        tune_id = owners[0]
        statuses = set(mine["status"])
        expected = ("PRUNED" if "pruned" in statuses else
                    "COMPLETE" if statuses & {"finished", "reused"} else "FAIL")
        assert t.state.name == expected, (tune_id, statuses, t.state)
        if expected == "COMPLETE" and len(t.values) == 1:
            val = metrics[metrics["trial_id"].isin(mine["id"]) & (metrics["split"] == "val")]
            assert t.values[0] == pytest.approx(val["value"].mean())
        states.append(expected)
    return states


def test_asha_pruned_failed_and_reused_trials_are_told_to_optuna_as_such(in_tmp):
    url = f"sqlite:///{in_tmp / 'r.db'}"
    # a grid of ten: four learning rates that train (ASHA prunes some), one that diverges,
    # and `bogus`, which fails
    params = """  train.optimizer: {choice: [adam, bogus]}
  train.lr: {choice: [0.001, 0.0003, 0.0001, 0.00003, 1.0e+30]}"""
    space = write_space(in_tmp, params=params, trials=10, concurrent=1, steps=9, asha=True,
                        sampler="grid")
    run_sweep(space, db_url=url, name="told", n_boot=20)
    # failed and diverged trials are recorded with their error and the sweep goes on
    trials = ResultsDB(url).trials("told")
    by_status = trials.groupby("status").size().to_dict()
    assert by_status["failed"] == 5 and by_status["nan"] == 1
    assert by_status.get("finished", 0) + by_status.get("pruned", 0) == 4
    assert trials[trials["status"] == "failed"]["error"].str.contains("train.optimizer").all()
    nan = trials[trials["status"] == "nan"].iloc[0]
    assert "loss became" in nan["error"]
    assert '"lr": 1e+30' in nan["recipe_json"]
    states = optuna_agrees_with_rows(url, "told")
    assert {"COMPLETE", "PRUNED", "FAIL"} <= set(states), states
    # a reused trial shows ASHA and Optuna the evaluations it showed when computed,
    # never its final AUC at the first rung
    run_sweep(space, db_url=url, name="again", n_boot=20)
    optuna_agrees_with_rows(url, "again")
    import optuna

    first = {t.params.__repr__(): t for t in
             optuna.load_study(study_name="told", storage=url).trials
             if t.state.name == "COMPLETE"}
    reused = ResultsDB(url).trials("again")
    assert (reused["status"] == "reused").any()
    for t in optuna.load_study(study_name="again", storage=url).trials:
        original = first.get(t.params.__repr__())
        if t.state.name == "COMPLETE" and original is not None:
            assert t.intermediate_values == original.intermediate_values


def test_two_objective_sweep_with_early_stopping_and_its_pareto_front(in_tmp):
    url = f"sqlite:///{in_tmp / 'r.db'}"
    space = Path(write_space(in_tmp, trials=4, concurrent=2, steps=9, asha=True))
    space.write_text(space.read_text().replace(
        "  - {metric: val_auc, mode: max}",
        "  - {metric: val_auc, mode: max}\n  - {metric: params_trainable, mode: min}"))
    run_sweep(str(space), db_url=url, name="pareto", n_boot=20)
    db = ResultsDB(url)
    assert db.list_sweeps().set_index("name").loc["pareto", "status"] == "finished"
    optuna_agrees_with_rows(url, "pareto")
    import optuna

    study = optuna.load_study(study_name="pareto", storage=url)
    assert len(study.directions) == 2
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert done and all(t.values[1] > 1000 for t in done)  # params_trainable, not a rung AUC
    from ablate.report.build import build_report

    report = build_report("pareto", url, out=in_tmp / "report", formats="md")
    assert "Pareto front" in (report.folder / "report.md").read_text()


def test_resume_into_another_db_is_refused(in_tmp):
    ResultsDB(f"sqlite:///{in_tmp / 'r.db'}").start_sweep("here", "tiny", {}, "v")
    with pytest.raises(AblateError, match="no sweep named 'here'.*other.db"):
        run_sweep(write_space(in_tmp), db_url=f"sqlite:///{in_tmp / 'other.db'}",
                  name="here", resume=True)


@pytest.mark.parametrize("case,args,message", [
    ("bad range", ["--space", "{bad_range}"], "low"),
    ("unknown variant", ["--space", "{bad_variant}"], "no_such_filter"),
    ("unknown space", ["--space", "nope"], "nope"),
    ("unreachable db", ["--space", "{good}", "--db", "postgresql://u@127.0.0.1:1/x"], "127.0.0.1"),
    ("unreachable ray", ["--space", "{good}", "--address", "127.0.0.1:1"], "Ray"),
    ("resume unknown", ["--space", "{good}", "--name", "ghost", "--resume"], "ghost"),
    ("more cpus than here", ["--space", "{good}", "--cpus", "999"], "999 CPU"),
    ("zero cpus", ["--space", "{good}", "--cpus", "0"], "--cpus must be a positive"),
    ("negative gpus", ["--space", "{good}", "--gpus", "-1"], "--gpus must be 0 or more"),
    ("db folder missing", ["--space", "{good}", "--db", "sqlite:///{tmp}/no/such/r.db"],
     "does not exist"),
    # the database is checked before the space's dry-run builds (seconds, not minutes)
    ("bad db and bad space", ["--space", "{bad_variant}", "--db", "mysql+nope://x/y"], "mysql"),
    ("storage not writable", ["--space", "{good}", "--storage", "/proc/ablate"], "storage"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, case, args, message):
    good = write_space(tmp_path)
    bad_range = tmp_path / "range.yaml"
    bad_range.write_text(Path(good).read_text().replace("[paper, conv_only]}", "[paper]}")
                         .replace("  guide: {choice: [controlnet, adapter]}",
                                  "  train.lr: {float: [1.0e-2, 1.0e-4]}"))
    bad_variant = tmp_path / "variant.yaml"
    bad_variant.write_text(Path(good).read_text().replace("conv_only", "no_such_filter"))
    args = [a.format(good=good, bad_range=bad_range, bad_variant=bad_variant, tmp=tmp_path)
            for a in args]
    db_file = tmp_path / "r.db"
    if "--db" not in args:
        args += ["--db", f"sqlite:///{db_file}"]
    if case == "unknown space":  # one case through a real process and its exit code
        proc = _ablate("sweep", *args, cwd=tmp_path)
        out, _ = proc.communicate(timeout=120)
        code = proc.returncode
    else:
        code, stdout, stderr = run_cli("sweep", *args, cwd=tmp_path, env={
            "ABLATE_CACHE": str(Path("results").resolve())})
        out = stdout + stderr
    assert code == 2, out
    lines = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, out  # one error (a bad space lists each problem below it)
    assert message in out[out.index("error:"):], out
    assert "Traceback" not in out
    if db_file.is_file():
        assert ResultsDB(f"sqlite:///{db_file}").list_sweeps().empty


def test_resume_of_unknown_sweep_raises_before_ray(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AblateError, match="no sweep named 'ghost'"):
        run_sweep(write_space(tmp_path), db_url=f"sqlite:///{tmp_path / 'r.db'}",
                  name="ghost", resume=True)


def test_results_of_another_code_version_are_reused_only_when_asked(tmp_path):
    from ablate.sweep.driver import reuse_table
    from ablate.version import code_version

    db = ResultsDB(f"sqlite:///{tmp_path / 'r.db'}")
    sweep = db.start_sweep("old", "tiny", {}, "v-old")
    val = {"dataset": "synth-blend", "split": "val", "level": "frame", "metric": "auc",
           "value": 0.7, "ci_low": None, "ci_high": None, "n": 10}
    for identity, version in (("old-code", "v-old"), ("this-code", code_version())):
        db.record_trial(sweep, f"{identity}:0", recipe_hash="h", recipe={}, seed=0,
                        status="finished", started=None, ended=None, identity=identity,
                        code_version=version, metrics=[val])
    assert set(reuse_table(db, code_version())) == {"this-code:0"}
    anything = reuse_table(db, code_version(), any_version=True)
    assert set(anything) == {"old-code:0", "this-code:0"}
    assert anything["old-code:0"]["val_auc"] == 0.7


def test_an_error_after_the_sweep_started_marks_it_failed_with_the_error(in_tmp, monkeypatch):
    import ablate.sweep.driver as driver

    def broken(*_args, **_kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("storage went away")

    monkeypatch.setattr(driver, "_run", broken)
    url = f"sqlite:///{in_tmp / 'r.db'}"
    with pytest.raises(RuntimeError, match="storage went away"):
        run_sweep(write_space(in_tmp), db_url=url, name="broken", n_boot=20)
    row = ResultsDB(url).list_sweeps().set_index("name").loc["broken"]
    assert row["status"] == "failed" and "storage went away" in row["error"]


SEED_FAULT = '''
import torch

from ablate.model.filter import FeatureFilter
from ablate.registry import FILTERS


@FILTERS.register("seedonefails", "a conv filter that refuses to build under seed 1 (a test)")
class SeedOneFails(FeatureFilter):
    def __init__(self, in_channels, out_channels, in_size, out_size):
        if torch.initial_seed() == 1:  # train() seeds torch with the recipe's seed first
            raise RuntimeError("this filter refuses seed 1")
        super().__init__(in_channels, out_channels, in_size, out_size, width=16,
                         channel_attn=False, spatial_attn=False, mhsa=False)
'''


def test_an_error_in_one_seed_keeps_the_trials_finished_seeds(tmp_path):
    (tmp_path / "seedfault.py").write_text(SEED_FAULT)
    (tmp_path / "conf" / "filter").mkdir(parents=True)
    (tmp_path / "conf" / "filter" / "seedonefails.yaml").write_text("name: seedonefails\n")
    space = Path(write_space(tmp_path, params="  guide: {choice: [controlnet, adapter]}",
                             trials=1))
    space.write_text(space.read_text().replace("seeds: 1", "seeds: 2")
                     .replace("  teacher: tiny-sd15", "  teacher: tiny-sd15\n  filter: seedonefails"))
    url = f"sqlite:///{tmp_path / 'r.db'}"
    exe = Path(sys.executable).parent / "ablate"
    proc = subprocess.run(
        [str(exe), "sweep", "--space", str(space), "--db", url, "--name", "s", "--bootstrap",
         "20"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "ABLATE_CACHE": str(Path("results").resolve()),
             "ABLATE_PLUGINS": str(tmp_path / "seedfault.py"),
             "ABLATE_CONFIG_PATH": str(tmp_path / "conf")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = ResultsDB(url).trials("s").set_index("seed")
    assert rows.loc[0, "status"] == "finished"
    assert rows.loc[1, "status"] == "failed" and "refuses seed 1" in rows.loc[1, "error"]
    metrics = ResultsDB(url).metrics("s")
    assert set(metrics["seed"]) == {0} and (metrics["split"] == "test").any()
    assert ResultsDB(url).list_sweeps().set_index("name").loc["s", "status"] == "finished"


@pytest.mark.parametrize("train,rungs", [
    ({"steps": 12, "eval_every": 3}, [1, 2, 3, 0]),            # evaluations at 3, 6, 9, 12
    ({"steps": None, "epochs": 3, "eval_every": "epoch"}, [1, 2, 0]),  # paper / code recipes
])
def test_asha_never_sees_the_last_evaluation(train, rungs):
    """The last evaluation has rung 0 (ASHA ignores it): pruning a fully trained trial would
    throw its result away, for step- and epoch-based recipes alike."""
    from omegaconf import OmegaConf

    from ablate.space import planned_evaluations
    from ablate.sweep.trial import _rung

    planned = planned_evaluations(OmegaConf.create(train))
    assert [_rung(i, planned) for i in range(1, planned + 1)] == rungs


@pytest.mark.parametrize("train,batches,expected", [
    # the paper space: 20 epochs of 500 batches = 10,000 steps, evaluated every 2000
    ({"steps": None, "epochs": 20, "eval_every": 2000}, 500, 5),
    # 7 batches an epoch, every 3 steps and at the last: 3, 6, 9, 12, 14
    ({"steps": None, "epochs": 2, "eval_every": 3}, 7, 5),
    ({"steps": 10, "epochs": None, "eval_every": "epoch"}, 4, 3),  # 4, 8 and the last, 10
])
def test_asha_counts_the_evaluations_of_every_epoch(train, batches, expected):
    """With epochs and a step interval, ASHA's time axis spans all epochs (it once counted
    one evaluation for the paper space, so ASHA could stop nothing)."""
    from omegaconf import OmegaConf

    from ablate.space import planned_evaluations

    assert planned_evaluations(OmegaConf.create(train), batches) == expected


def test_a_trial_never_reaches_the_asha_clock_the_driver_set(monkeypatch):
    """The driver counts ASHA's max_t once, on the reference recipe; a trial that counts more
    evaluations itself (its manifest built after the driver counted, a smaller batch) must
    not report a rung at or past max_t, or ASHA stops it as if it were done."""
    from omegaconf import OmegaConf

    from ablate.sweep import trial

    monkeypatch.setattr(trial, "training_batches", lambda cfg: (7, 70, None))
    cfg = OmegaConf.create({"train": {"steps": None, "epochs": 2, "eval_every": 3}})
    assert trial._planned(cfg) == 5  # own count: 3, 6, 9, 12 and the last, 14
    assert trial._planned(cfg, 9) == 5  # under the driver's: its own
    capped = trial._planned(cfg, 1)  # the driver knew no manifest: max_t = 2
    assert [trial._rung(i, capped) for i in range(1, 6)] == [0, 0, 0, 0, 0]
