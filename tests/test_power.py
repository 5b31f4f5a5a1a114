"""`ablate spaces NAME --power`: seeds a sweep needs, from the spread of earlier runs.

Databases are written through ResultsDB's public API with known test AUCs; the expected
spread is recomputed here with numpy from those values, the minimum detectable effect is
checked by simulating paired t tests, and the seeds needed by a noncentral-t power
computed here, never read back from ablate.report.stats.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats

from ablate.cli import cli
from ablate.results import ResultsDB
from tests.conftest import run_cli

T0 = datetime(2026, 1, 5, 12, 0, 0)
SEEDS = [0, 1, 2]


@pytest.fixture(scope="module")
def demo() -> dict:
    """The demo space and, per (cell label, seed), the recipe hash and stored recipe a sweep
    of it records (composed the way the sweep composes a trial: space, seed, then cell)."""
    from ablate.recipe import compose, recipe_hash, result_dict
    from ablate.space import load_space

    space = load_space("demo")
    runs = {}
    for cell in space.design.cells():
        for seed in SEEDS:
            cfg = compose([*space.overrides(seed=seed), *cell.overrides()])
            runs[(cell.label, seed)] = (recipe_hash(cfg), result_dict(cfg))
    return {"space": space, "tests": list(space.tests), "runs": runs}


def auc_table(rng: np.random.Generator, n_tests: int, shift: float, seed_sd: float,
              cell_sd: float) -> np.ndarray:
    """(seeds, tests) test AUCs: a per-test-set level, a per-seed shift, per-cell noise."""
    per_test = 0.80 + 0.05 * np.arange(n_tests)
    per_seed = rng.normal(0, seed_sd, size=(len(SEEDS), 1))
    return per_test + shift + per_seed + rng.normal(0, cell_sd, size=(len(SEEDS), n_tests))


def record(db: ResultsDB, sweep_id: int, tid: str, recipe_hash: str, recipe: dict, seed: int,
           tests: list[str], aucs: np.ndarray | None, status: str = "finished") -> None:
    metrics = [] if aucs is None else [
        {"dataset": t, "split": "test", "level": "frame", "metric": "auc",
         "value": float(aucs[i])} for i, t in enumerate(tests)]
    db.record_trial(sweep_id, tid, recipe_hash=recipe_hash, recipe=recipe, seed=seed,
                    status=status, started=T0, ended=T0, metrics=metrics)


def record_cells(db: ResultsDB, sweep_id: int, demo: dict, table: dict[str, np.ndarray]) -> None:
    for label, aucs in table.items():
        for seed in SEEDS:
            h, recipe = demo["runs"][(label, seed)]
            record(db, sweep_id, f"{label}:{seed}", h, recipe, seed, demo["tests"], aucs[seed])


def fake_recipe(guide: str, seed: int, tests: list[str], lr: float = 1e-3) -> dict:
    """A recipe no space composes (another lr, as `--set train.lr=...` would give)."""
    extra = {} if guide == "none" else {"filter": {"name": "paper"}, "weight": {"name": "paper"}}
    return {"backbone": {"name": "tiny"}, "guide": {"name": guide}, **extra,
            "train": {"lr": lr}, "data": {"train": "synth-lowres", "tests": tests},
            "seed": seed}


def power_cli(*args: str, env: dict | None = None):  # noqa: ANN201
    result = CliRunner().invoke(cli, ["spaces", "demo", "--power", *args], env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def number(pattern: str, text: str) -> float:
    found = re.search(pattern, text)
    assert found, f"{pattern!r} not in:\n{text}"
    return float(found.group(1))


def paired_sd(a: np.ndarray, b: np.ndarray) -> float:
    """sd over seeds of the per-seed mean over test sets of a - b."""
    return float(np.std((a - b).mean(axis=1), ddof=1))


def nct_seeds(effect: float, sd: float, power: float = 0.8, alpha: float = 0.05) -> int:
    """Smallest n whose two-sided one-sample t test has `power` at `effect` (noncentral t)."""
    for n in range(2, 100_000):
        crit = stats.t.ppf(1 - alpha / 2, n - 1)
        nc = effect / (sd / np.sqrt(n))
        if stats.nct.sf(crit, n - 1, nc) + stats.nct.cdf(-crit, n - 1, nc) >= power:
            return n
    raise AssertionError("no n")


def simulated_power(effect: float, sd: float, n: int, studies: int = 4000) -> float:
    """Share of simulated n-seed studies whose paired t test (p < 0.05) sees `effect`."""
    rng = np.random.default_rng(7)
    diffs = rng.normal(effect, sd, size=(studies, n))
    return float(np.mean(stats.ttest_1samp(diffs, 0.0, axis=1).pvalue < 0.05))


# ---------------------------------------------------------------- estimates


def test_paired_spread_of_the_space_own_recipes(demo: dict, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = len(demo["tests"])
    table = {"reference": auc_table(rng, n, 0.0, 0.02, 0.01),
             "guide=none": auc_table(rng, n, -0.03, 0.02, 0.03),
             "filter=conv_only": auc_table(rng, n, -0.01, 0.02, 0.015)}
    url = f"sqlite:///{tmp_path / 'a.db'}"
    with ResultsDB(url) as db:
        sid = db.start_sweep("demo-1", "demo", {}, "v1")
        record_cells(db, sid, demo, table)
        record(db, sid, "failed:0", "x", {"guide": {"name": "none"}}, 0, demo["tests"], None,
               status="failed")
        # a newer sweep of another space with a much larger spread: not this space's recipes
        other = db.start_sweep("quick-1", "quick", {}, "v1")
        for seed in SEEDS:
            for guide in ("controlnet", "none"):
                aucs = rng.uniform(0.5, 0.99, size=n)
                record(db, other, f"{guide}:{seed}", f"q-{guide}-{seed}",
                       fake_recipe(guide, seed, demo["tests"]), seed, demo["tests"], aucs)
    result = power_cli("--db", url)
    out = result.output
    assert result.exit_code == 0, out

    sds = {c: paired_sd(table[c], table["reference"]) for c in ("guide=none", "filter=conv_only")}
    largest = max(sds, key=sds.get)
    assert out.splitlines()[0] == "power for space demo (3 seeds per recipe)"
    sd = number(r"sd of a paired ΔAUC: ([\d.]+) points", out)
    assert sd == pytest.approx(sds[largest] * 100, abs=0.006)
    assert (f"(sweep demo-1, {largest} vs reference, 3 seeds, mean over 3 test sets per seed)"
            in out)
    assert "this space's own recipes (the same recipe hash)" in out
    assert "the largest of 2 paired comparisons" in out and "conservative" in out

    mde = number(r"smallest effect 3 seeds detect \(80% power, α = 0.05, paired t over "
                 r"seeds\): ([\d.]+) points", out) / 100
    assert simulated_power(mde, sds[largest], 3) == pytest.approx(0.8, abs=0.03)
    assert simulated_power(0.7 * mde, sds[largest], 3) < 0.7  # MDE is not too large either
    needed = number(r"seeds needed for a 1-point effect: (\d+)", out)
    assert needed == nct_seeds(0.01, sds[largest])

    two = power_cli("--db", url, "--effect", "2").output
    assert number(r"seeds needed for a 2-point effect: (\d+)", two) == nct_seeds(0.02,
                                                                               sds[largest])


def test_one_recipe_gives_sqrt2_times_its_spread(demo: dict, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    aucs = auc_table(rng, len(demo["tests"]), 0.0, 0.02, 0.02)
    url = f"sqlite:///{tmp_path / 'b.db'}"
    with ResultsDB(url) as db:
        sid = db.start_sweep("demo-ref", "demo", {}, "v1")
        record_cells(db, sid, demo, {"reference": aucs})
    out = power_cli("--db", url).output
    one = float(np.std(aucs.mean(axis=1), ddof=1))
    assert number(r"sd of a ΔAUC: ([\d.]+) points", out) == pytest.approx(
        np.sqrt(2) * one * 100, abs=0.006)
    assert number(r"= √2 x ([\d.]+), the sd of one recipe's per-seed mean test AUC",
                  out) == pytest.approx(one * 100, abs=0.006)
    assert "(sweep demo-ref, reference, 3 seeds" in out
    assert "assumes two recipes' seeds vary independently" in out
    assert number(r"seeds needed for a 1-point effect: (\d+)", out) == nct_seeds(
        0.01, np.sqrt(2) * one)


def test_a_measured_paired_spread_beats_one_recipe_times_sqrt2(demo: dict,
                                                              tmp_path: Path) -> None:
    """One cell of the space's own recipes alone gives only √2 x its spread; a paired
    difference measured in a sweep of the same space (other settings) is preferred."""
    rng = np.random.default_rng(4)
    tests = demo["tests"]
    url = f"sqlite:///{tmp_path / 'd.db'}"
    with ResultsDB(url) as db:
        sid = db.start_sweep("demo-ref", "demo", {}, "v1")
        record_cells(db, sid, demo, {"reference": auc_table(rng, len(tests), 0, 0.02, 0.02)})
        sid = db.start_sweep("demo-paired", "demo", {}, "v1")  # the space, other settings
        tables = {g: auc_table(rng, len(tests), 0.0, 0.02, 0.02) for g in ("controlnet", "none")}
        for seed in SEEDS:
            for guide, aucs in tables.items():
                record(db, sid, f"{guide}:{seed}", f"p-{guide}-{seed}",
                       fake_recipe(guide, seed, tests), seed, tests, aucs[seed])
    out = power_cli("--db", url).output
    assert "paired ΔAUC" in out and "(sweep demo-paired, guide=none vs" in out, out
    expected = float(np.std((tables["none"] - tables["controlnet"]).mean(axis=1), ddof=1))
    assert number(r"paired ΔAUC: ([\d.]+) points", out) == pytest.approx(expected * 100,
                                                                          abs=0.006)


def test_other_settings_of_the_same_space_then_the_newest_sweep(demo: dict,
                                                                tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    n, tests = len(demo["tests"]), demo["tests"]

    def sweep(db: ResultsDB, name: str, space: str, seeds: list[int]) -> np.ndarray:
        sid = db.start_sweep(name, space, {}, "v1")
        tables = {g: auc_table(rng, n, 0.0, 0.02, 0.02) for g in ("controlnet", "none")}
        for seed in seeds:
            for guide, aucs in tables.items():
                record(db, sid, f"{guide}:{seed}", f"{name}-{guide}-{seed}",
                       fake_recipe(guide, seed, tests), seed, tests, aucs[seed])
        return tables["none"] - tables["controlnet"]

    url = f"sqlite:///{tmp_path / 'c.db'}"
    with ResultsDB(url) as db:
        sweep(db, "quick-old", "quick", SEEDS)
        newer = sweep(db, "quick-new", "quick", SEEDS)
        sweep(db, "quick-one-seed", "quick", [0])  # the newest, but one seed: no spread
    out = power_cli("--db", url).output
    assert "the newest sweep in the DB with >= 2 seeds of one recipe" in out
    assert "(sweep quick-new, guide=none vs guide=controlnet (reference), 3 seeds" in out
    expected = float(np.std(newer.mean(axis=1), ddof=1))
    assert number(r"paired ΔAUC: ([\d.]+) points", out) == pytest.approx(expected * 100,
                                                                          abs=0.006)

    with ResultsDB(url) as db:  # a sweep of this space's name, with other settings, wins
        mine = sweep(db, "demo-set", "demo", [0, 1])
    out = power_cli("--db", url).output
    assert "earlier sweeps of space demo, not of its recipes as they compose now" in out
    assert "(sweep demo-set, guide=none vs guide=controlnet (reference), 2 seeds" in out
    expected = float(np.std(mine[:2].mean(axis=1), ddof=1))
    assert number(r"paired ΔAUC: ([\d.]+) points", out) == pytest.approx(expected * 100,
                                                                          abs=0.006)


# ---------------------------------------------------------------- unknown and errors


def test_no_database_is_unknown_with_a_pilot(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = power_cli(env={"ABLATE_DB": None})
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("power for space demo: unknown, no results database at ")
    assert "`ablate sweep --space demo --set train.steps=100`" in lines[0]
    assert "then `ablate spaces demo --power`" in lines[0]
    assert not (tmp_path / "results").exists()  # asking never creates a database


def test_no_sweeps_and_one_seed_runs_are_unknown(demo: dict, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'd.db'}"
    ResultsDB(url).close()
    out = power_cli("--db", url).output
    assert out.count("\n") == 1 and "unknown, no sweeps in the results DB" in out
    assert f"ablate sweep --space demo --set train.steps=100 --db {url}" in out

    with ResultsDB(url) as db:
        sid = db.start_sweep("demo-1", "demo", {}, "v1")
        for label in ("reference", "guide=none"):
            h, recipe = demo["runs"][(label, 0)]
            record(db, sid, label, h, recipe, 0, demo["tests"], np.full(3, 0.8))
    out = power_cli("--db", url).output
    assert out.count("\n") == 1 and "test AUC from 1 seed only" in out
    assert "ablate sweep --space demo" in out


def test_no_finished_runs_is_unknown(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'e.db'}"
    with ResultsDB(url) as db:
        sid = db.start_sweep("demo-1", "demo", {}, "v1")
        record(db, sid, "f:0", "x", {"seed": 0}, 0, [], None, status="failed")
    out = power_cli("--db", url).output
    assert "unknown, no finished run in the results DB has test AUC" in out


@pytest.mark.parametrize("db, message", [
    ("nosuch://host/x", "error: cannot open results database nosuch://host/x"),
    ("MISSING", "error: no results database at "),
])
def test_bad_db_is_one_line_error(db: str, message: str, tmp_path: Path) -> None:
    db = str(tmp_path / "missing.db") if db == "MISSING" else db
    code, out, err = run_cli("spaces", "demo", "--power", "--db", db, cwd=tmp_path)
    assert code == 2 and out == ""
    assert err.startswith(message) and err.count("\n") == 1 and "Traceback" not in err


def test_power_needs_a_space() -> None:
    result = CliRunner().invoke(cli, ["spaces", "--power"])
    assert result.exit_code == 2 and "--power needs a space" in result.output
