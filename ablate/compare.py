"""`ablate compare-teachers`: one recipe, several diffusion teachers, matched seeds and data.

The comparison is a sweep over an explicit grid (one recipe per teacher) run by
the sweep machinery, so it is recorded in the results database like any sweep
and reused, resumed and reported the same way.

The training run (seed) is the unit of replication; test sets are fixed conditions,
never replicates. Per test set, a teacher's AUC/EER is the mean over its seeds with a
Student-t interval over seeds, and its difference to the first teacher is *paired* by
seed (the seeds both ran), with a Student-t interval over those per-seed differences.
Each teacher's Avg row averages the test sets within each seed first, then takes the
interval over those seed means (`report.stats.seed_interval`), with its minimum
detectable effect and, from the runs' per-frame scores, a two-stage interval that adds
the test videos' sampling. With one seed there is no interval over seeds: a teacher's
own numbers carry that run's video-bootstrap CI (test sample only), a difference none.
DeLong's p tests only the test sample for one pair of trained models.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ablate.compare_output import (
    AVG,
    AVG_T,
    BASE_DELTA,
    DIFF_T,
    NO_SEEDS,
    OWN_T,
    RUN_BOOT,
    require_free,
    write_comparison,
)
from ablate.core.errors import AblateError
from ablate.core.names import NO_GUIDE
from ablate.core.paths import REPORTS_DIR, SPACES_DIR
from ablate.provenance import is_part
from ablate.recipe import compose, result_dict
from ablate.registry import build
from ablate.report.delong import holm
from ablate.report.paired import delong_on, read_scores, two_stage_difference
from ablate.report.stats import (
    DEFAULT_EFFECT,
    NO_INTERVAL,
    SEED_T,
    TWO_STAGE,
    seed_interval,
    seeds_needed,
    t_interval,
)
from ablate.results import ResultsDB
from ablate.space import load_space, parse_settings
from ablate.sweep import run_sweep

CPU_SPACE = "compare-cpu"  # the default recipe and test sets without --recipe: a space file


def cpu_default() -> tuple[dict, list[str]]:
    """(fixed settings, test sets) of the shipped `compare-cpu` space."""
    space = load_space(CPU_SPACE)
    return dict(space.fixed), list(space.tests or [])


@dataclass(frozen=True)
class TeacherSpec:
    """One compared teacher: `NAME` or `NAME[key=value,...]` (e.g. `sd15[path=/m/sd15]`);
    `none` is the plain detector without guidance (no teacher at all)."""

    label: str
    name: str
    args: dict[str, str]

    @property
    def is_baseline(self) -> bool:
        return self.name == NO_GUIDE

    def overrides(self) -> list[str]:
        if self.is_baseline:
            return ["guide=none"]
        return [f"teacher={self.name}", *(f"teacher.{k}={v}" for k, v in self.args.items())]


def parse_teachers(text: str) -> list[TeacherSpec]:
    """Split `A,B[k=v,k2=v2],C` on the commas outside brackets."""
    items, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth < 0:
            raise AblateError(f"unbalanced ']' in --teachers {text!r}")
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    items.append(current)
    specs = [_spec(item.strip()) for item in items if item.strip()]
    if len(specs) < 2:
        raise AblateError("compare-teachers needs at least two teachers, e.g. "
                          "--teachers none,tiny-sd15 (none = the plain baseline)")
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise AblateError(f"a teacher is listed twice in --teachers: {', '.join(labels)}")
    return specs


def _spec(item: str) -> TeacherSpec:
    if "[" not in item:
        return TeacherSpec(item, item, {})
    name, _, rest = item.partition("[")
    if name.strip() == NO_GUIDE:
        raise AblateError(f"{item!r}: `none` (the plain baseline) takes no arguments")
    if not rest.endswith("]"):
        raise AblateError(f"teacher {item!r}: write NAME[key=value,...]")
    args = {}
    for pair in filter(None, (p.strip() for p in rest[:-1].split(","))):
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise AblateError(f"teacher {item!r}: {pair!r} is not key=value")
        args[key.strip()] = value.strip()
    return TeacherSpec(item, name.strip(), args)


def parse_recipe(overrides: list[str]) -> dict[str, object]:
    """--recipe overrides as `fixed` settings; the teacher is what is compared, so not here."""
    fixed = parse_settings(overrides, "--recipe")
    if any(k == "teacher" or k.startswith("teacher.") for k in fixed):
        raise AblateError("--recipe must not set the teacher; list teachers in --teachers "
                          "(with arguments as NAME[key=value])")
    return fixed


def write_space(name: str, specs: list[TeacherSpec], fixed: dict, tests: list[str], seeds: int,
                resources: dict[str, float]) -> Path:
    """The comparison as a search-space file, kept beside the results for provenance."""
    space = {
        "description": f"compare-teachers: {' vs '.join(s.label for s in specs)}",
        "fixed": fixed,
        "objectives": [{"metric": "val_auc", "mode": "max"}],
        "budget": {"trials": len(specs), "max_concurrent": len(specs)},
        "seeds": seeds,
        "early_stopping": {"enabled": False},
        "resources": resources,
        "tests": tests,
        "sampler": {"name": "random", "seed": 0},
    }
    SPACES_DIR.mkdir(parents=True, exist_ok=True)
    path = (SPACES_DIR / f"{name}.yaml").resolve()
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def check_teachers(space_path: Path, specs: list[TeacherSpec]) -> dict[str, dict]:
    """Compose each teacher's recipe (unknown names fail here); build tiny ones. -> teacher cfg."""
    space = load_space(space_path)
    teachers = {}
    for spec in specs:
        try:
            cfg = compose([*space.overrides(), *spec.overrides()])
        except AblateError as err:
            raise AblateError(f"teacher {spec.label}: {err}") from None
        teachers[spec.label] = result_dict(cfg).get("teacher")  # None: the baseline
        if spec.name.startswith("tiny-"):  # seconds; real teachers are checked when loaded
            kwargs = {k: v for k, v in teachers[spec.label].items() if k != "name"}
            try:
                build("teacher", spec.name, **kwargs)
            except AblateError as err:
                raise AblateError(f"teacher {spec.label}: {err}") from None
    return teachers


def compare_teachers(
    specs: list[TeacherSpec], recipe: list[str], tests: list[str] | None, seeds: int,
    db_url: str | None, address: str | None, name: str | None, cpus: float, gpus: float,
    n_boot: int = 1000, resume: bool = False, out: str | None = None,
) -> tuple[pd.DataFrame, Path]:
    """Run the comparison through the sweep machinery, then build its report."""
    from datetime import UTC, datetime

    name = name or f"compare-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
    folder = Path(out) if out else REPORTS_DIR / name
    require_free(folder)  # before any training: a taken folder costs seconds, not hours
    default_fixed, default_tests = cpu_default()
    fixed = parse_recipe(recipe) if recipe else default_fixed
    guide_settings = sorted(k for k in fixed if k.startswith("guide."))
    if guide_settings and any(s.is_baseline for s in specs):
        raise AblateError(f"--recipe sets {', '.join(guide_settings)}, which the `none` row "
                          "(no guide) cannot take; compare the baseline with the default guide, "
                          "or drop `none` from --teachers")
    tests = tests or ([] if recipe else default_tests)
    if not tests:
        raise AblateError("give the test sets with --tests when --recipe is set")
    space_path = write_space(name, specs, fixed, tests, seeds, {"cpu": cpus, "gpu": gpus})
    teachers = check_teachers(space_path, specs)
    grid = {s.label: s.overrides() for s in specs}
    run_sweep(str(space_path), db_url=db_url, address=address, name=name, resume=resume,
              n_boot=n_boot, grid=grid)
    db = ResultsDB(db_url)
    table = comparison_table(db, name, teachers, n_boot)
    return table, write_comparison(table, folder)


def with_frozen_params(table: pd.DataFrame, teachers: dict[str, dict | None]) -> pd.DataFrame:
    """Adds each teacher's frozen parameters (denoiser + VAE; 0 for `none`)."""
    # lazy: loads torch only when called
    from ablate.teacher_fitting.catalog import frozen_params

    counts = {label: frozen_params(cfg) for label, cfg in teachers.items()}
    return table.assign(params_frozen=table["teacher"].map(counts).astype(float))


# ---------------------------------------------------------------- the comparison


def _teacher_label(recipe: dict, teachers: dict[str, dict | None]) -> str | None:
    baseline = (recipe.get("guide") or {}).get("name") == NO_GUIDE
    for label, cfg in teachers.items():
        if (cfg is None and baseline) or (cfg is not None and recipe.get("teacher") == cfg):
            return label
    return None


def trial_rows(db, name: str, teachers: dict[str, dict]) -> pd.DataFrame:  # noqa: ANN001
    """Trials of the comparison, each labelled with the teacher spec its recipe composed from."""
    trials = db.trials(name)
    if trials.empty:
        raise AblateError(f"comparison {name} has no trials in {db.url}")
    recipes = trials["recipe_json"].map(lambda t: json.loads(t) if isinstance(t, str) else {})
    trials["teacher"] = [_teacher_label(r, teachers) for r in recipes]
    return trials


def comparison_table(db, name: str, teachers: dict[str, dict], n_boot: int = 1000) -> pd.DataFrame:  # noqa: ANN001
    """Per teacher and test set, and per teacher on average over test sets (test_set AVG):
    AUC/EER with 95% CIs over seeds, the paired Δ vs the first teacher, DeLong's p, costs.

    `teachers` maps each label, first = the base, to its composed teacher config. The
    training run (seed) is the unit: every interval is over seeds (PROCEDURES names each,
    in columns ci_method, d_ci_method and d_2s_method); `n_boot` sizes the video resamples
    of the Avg rows' two-stage interval.
    """
    trials = trial_rows(db, name, teachers)
    done = trials[trials["status"].isin(["finished", "reused"])]
    if done.empty:
        errors = "; ".join(f"{r.teacher}: {r.status} {r.error or ''}".strip()
                           for r in trials.itertuples())
        raise AblateError(f"comparison {name} has no finished trials ({errors})")
    metrics = db.metrics(name)
    vals, notes = seed_values(metrics, done)
    scores = read_scores(done, "teacher")  # (teacher, seed) -> per-frame scores: DeLong, 2-stage
    labels = list(teachers)
    base = labels[0]
    datasets = _test_sets(metrics)
    costs = {lab: _costs(done[done["teacher"] == lab]) for lab in labels}
    rows = []
    for dataset in datasets:
        for lab in labels:
            rows.append(_merged({"teacher": lab, "test_set": dataset,
                                 "note": _join(*notes.get(lab, [])),
                                 "p_delong": _delong_p(scores, lab, base, dataset)},
                                _own_cells(vals, lab, dataset),
                                _delta_cells(vals, lab, base, dataset), costs[lab]))
    whole = [d for d in datasets if not is_part(d)]  # a breakdown is not counted twice
    for lab in labels:
        row = _merged({"teacher": lab, "test_set": AVG, "note": _join(*notes.get(lab, [])),
                       "p_delong": np.nan}, _own_avg_cells(vals, lab, whole),
                      _delta_avg_cells(vals, lab, base, whole), costs[lab])
        readable = {k[0] for k in scores}
        if lab != base and row["d_seeds"] >= 2 and {lab, base} <= readable:
            row = _merged(row, _two_stage_cells(scores, lab, base, whole, n_boot,
                                                row["d_seeds"]))
        rows.append(row)
    table = pd.DataFrame(rows)
    # Holm over every teacher x test set compared with the base (Avg rows have no p: NaN)
    table["p_delong_holm"] = holm(table["p_delong"].to_numpy(dtype=float))
    return with_frozen_params(table.reindex(columns=TABLE_COLUMNS), teachers)


TABLE_COLUMNS = [
    "teacher", "test_set", "seeds", "auc", "auc_low", "auc_high", "eer", "eer_low", "eer_high",
    "ci_method", "d_seeds", "d_auc", "d_auc_low", "d_auc_high", "d_eer", "d_eer_low",
    "d_eer_high", "d_ci_method", "sd_seeds", "mde", "seeds_needed", "d_2s_seeds", "d_auc_2s",
    "d_auc_2s_low", "d_auc_2s_high", "d_eer_2s", "d_eer_2s_low", "d_eer_2s_high", "d_2s_method",
    "p_delong", "p_delong_holm", "note", "step_time_s", "peak_mem_mb", "params_trainable",
]
METRICS = ("auc", "eer")
NAN = float("nan")


def seed_values(metrics: pd.DataFrame, done: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """(teacher, seed, dataset, metric, value, ci_low, ci_high): each finished run's stored
    frame-level test AUC/EER and its own video-bootstrap CI; and teacher -> notes.

    One run per (teacher, seed): where a seed ran twice (two recipes composing the same
    teacher), the later trial counts (as `read_scores` keeps it) and the note says so.
    """
    test = metrics[(metrics["split"] == "test") & (metrics["level"] == "frame")
                   & metrics["metric"].isin(METRICS)]
    runs = done[done["teacher"].notna()][["id", "teacher", "seed"]].rename(
        columns={"id": "trial_id"})
    vals = test.drop(columns=["seed", "teacher"], errors="ignore").merge(runs, on="trial_id")
    vals = vals.sort_values("trial_id", kind="stable")
    notes: dict[str, list[str]] = {}
    per_run = runs.groupby(["teacher", "seed"])["trial_id"].nunique()
    for (teacher, seed), k in per_run[per_run > 1].items():
        notes.setdefault(teacher, []).append(f"seed {int(seed)} ran {k} times: the last "
                                             "run is used")
    vals = vals.drop_duplicates(["teacher", "seed", "dataset", "metric"], keep="last")
    vals = vals.assign(seed=vals["seed"].astype(int))
    return vals[["teacher", "seed", "dataset", "metric", "value", "ci_low", "ci_high"]], notes


def _per_seed(vals: pd.DataFrame, teacher: str, dataset: str, metric: str) -> pd.DataFrame:
    """The teacher's runs on one test set: value, ci_low, ci_high indexed by seed."""
    mine = vals[(vals["teacher"] == teacher) & (vals["dataset"] == dataset)
                & (vals["metric"] == metric)]
    return mine.dropna(subset=["value"]).set_index("seed").sort_index()


def _own_cells(vals: pd.DataFrame, teacher: str, dataset: str) -> dict:
    """The teacher's own AUC/EER on one test set: t over seeds, or one run's stored CI."""
    out, methods = {}, {}
    for metric in METRICS:
        runs = _per_seed(vals, teacher, dataset, metric)
        if len(runs) >= 2:
            point, low, high, _ = t_interval(runs["value"].to_numpy())
            methods[metric] = OWN_T
        elif len(runs) == 1:  # one run: its own video bootstrap, test sample only
            point, low, high = (float(runs[c].iloc[0]) for c in ("value", "ci_low", "ci_high"))
            methods[metric] = RUN_BOOT if np.isfinite([low, high]).all() else NO_INTERVAL
        else:
            point, low, high = NAN, NAN, NAN
            methods[metric] = NO_SEEDS
        out.update({metric: point, f"{metric}_low": low, f"{metric}_high": high})
        out.setdefault("seeds", len(runs))
    return {**out, "ci_method": _methods(methods)}


def _own_avg_cells(vals: pd.DataFrame, teacher: str, datasets: list[str]) -> dict:
    """The teacher's AUC/EER averaged over test sets within each seed, then t over seeds."""
    out, methods, notes = {}, {}, []
    for metric in METRICS:
        mine = vals[(vals["teacher"] == teacher) & (vals["metric"] == metric)]
        found = seed_interval(mine, value="value")
        out.update({metric: found.mean, f"{metric}_low": found.low,
                    f"{metric}_high": found.high})
        out.setdefault("seeds", found.n_seeds)
        methods[metric] = _avg_method(found.procedure)
        notes += [found.note, _missing_sets(mine, datasets)]
    return {**out, "ci_method": _methods(methods), "note": _join(*notes)}


def _paired(vals: pd.DataFrame, teacher: str, base: str, dataset: str,
            metric: str) -> tuple[pd.Series, str]:
    """(per-seed difference teacher - base on the seeds both ran, a note when the two
    teachers' seeds differ on this test set)."""
    mine = _per_seed(vals, teacher, dataset, metric)["value"]
    theirs = _per_seed(vals, base, dataset, metric)["value"]
    diff = (mine - theirs).dropna()  # aligned on seed: unmatched seeds drop out
    return diff, _seed_note(set(mine.index), set(theirs.index), base, f" on {dataset}")


def _delta_cells(vals: pd.DataFrame, teacher: str, base: str, dataset: str) -> dict:
    """Δ vs the base on one test set: t over matched seeds; one matched seed: no interval."""
    if teacher == base:
        return {"d_seeds": _per_seed(vals, base, dataset, "auc").shape[0], "d_auc": 0.0,
                "d_auc_low": NAN, "d_auc_high": NAN, "d_eer": 0.0, "d_eer_low": NAN,
                "d_eer_high": NAN, "d_ci_method": BASE_DELTA, "note": ""}
    out, methods, notes = {}, {}, []
    for metric in METRICS:
        diff, note = _paired(vals, teacher, base, dataset, metric)
        point, low, high, n = t_interval(diff.to_numpy())
        out.update({f"d_{metric}": point, f"d_{metric}_low": low, f"d_{metric}_high": high})
        out.setdefault("d_seeds", n)
        methods[metric] = DIFF_T if n >= 2 else NO_INTERVAL if n == 1 else NO_SEEDS
        notes.append(note)
    return {**out, "d_ci_method": _methods(methods), "note": _join(*notes)}


def _delta_avg_cells(vals: pd.DataFrame, teacher: str, base: str, datasets: list[str]) -> dict:
    """Δ vs the base averaged over test sets within each matched seed, then t over seeds
    (`stats.seed_interval`), with the ΔAUC's spread, MDE and seeds needed."""
    if teacher == base:
        found = seed_interval(vals[(vals["teacher"] == base) & (vals["metric"] == "auc")],
                              value="value")
        return {"d_seeds": found.n_seeds, "d_auc": 0.0, "d_auc_low": NAN, "d_auc_high": NAN,
                "d_eer": 0.0, "d_eer_low": NAN, "d_eer_high": NAN, "d_ci_method": BASE_DELTA}
    out, methods = {}, {}
    mine, theirs = (set(vals.loc[vals["teacher"] == t, "seed"]) for t in (teacher, base))
    notes = [_seed_note(mine, theirs, base, "")]
    for metric in METRICS:
        diffs = pd.concat([_paired(vals, teacher, base, d, metric)[0].rename("diff")
                           .rename_axis("seed").reset_index().assign(dataset=d)
                           for d in datasets], ignore_index=True)
        found = seed_interval(diffs)
        out.update({f"d_{metric}": found.mean, f"d_{metric}_low": found.low,
                    f"d_{metric}_high": found.high})
        methods[metric] = _avg_method(found.procedure)
        notes += [found.note, _missing_sets(diffs, datasets)]
        if metric == "auc":  # the spread, power and seeds needed quoted for ΔAUC
            needed = seeds_needed(DEFAULT_EFFECT, found.sd)
            out.update({"d_seeds": found.n_seeds, "sd_seeds": found.sd, "mde": found.mde,
                        "seeds_needed": np.nan if needed is None else float(needed)})
    return {**out, "d_ci_method": _methods(methods), "note": _join(*notes)}


def _two_stage_cells(scores: dict, teacher: str, base: str, datasets: list[str],
                     n_boot: int, n_seeds: int) -> dict:
    """The Avg Δ with seeds and test videos resampled (`paired.two_stage_difference`, from
    the runs' per-frame scores); {} where the scores cannot be read or aligned."""
    found = two_stage_difference(scores, teacher, base, datasets, n_boot)
    if not found:
        return {}
    out = {"d_2s_method": TWO_STAGE}
    for metric in METRICS:
        mean, low, high, n = found[("frame", metric)]
        out.update({f"d_{metric}_2s": mean, f"d_{metric}_2s_low": low,
                    f"d_{metric}_2s_high": high, "d_2s_seeds": n})
    if out["d_2s_seeds"] < 2:
        out["d_2s_method"] = NO_INTERVAL
    if out["d_2s_seeds"] != n_seeds:
        out["note"] = f"seeds × videos uses the {out['d_2s_seeds']} seeds with readable scores"
    return out


def _seed_note(mine: set, theirs: set, base: str, where: str) -> str:
    """A note when a teacher's seeds differ from the base's: Δ uses the matched ones only."""
    if mine == theirs:
        return ""
    matched = ", ".join(map(str, sorted(mine & theirs))) or "none"
    return (f"seeds differ from {base}'s{where} (this: {_seeds(mine)}; {base}: "
            f"{_seeds(theirs)}): Δ uses matched seeds {matched} only")


def _seeds(seeds: set) -> str:
    return ", ".join(str(int(s)) for s in sorted(seeds)) or "none"


def _missing_sets(frame: pd.DataFrame, datasets: list[str]) -> str:
    missing = [d for d in datasets if d not in set(frame["dataset"])]
    return f"Avg leaves out {', '.join(missing)} (no matched runs)" if missing else ""


def _avg_method(procedure: str) -> str:
    return {SEED_T: AVG_T, "no seeds": NO_SEEDS}.get(procedure, procedure)


def _methods(by_metric: dict[str, str]) -> str:
    """One procedure name, or each metric's where AUC's and EER's differ."""
    if len(set(by_metric.values())) == 1:
        return next(iter(by_metric.values()))
    return "; ".join(f"{m.upper()}: {p}" for m, p in by_metric.items())


def _merged(*parts: dict) -> dict:
    """The cells of `parts` in one row, their notes joined."""
    row = {k: v for part in parts for k, v in part.items()}
    row["note"] = _join(*(part.get("note", "") for part in parts))
    return row


def _join(*notes: str) -> str:
    return "; ".join(dict.fromkeys(n for n in notes if n))


def _costs(runs: pd.DataFrame) -> dict:
    return {c: float(runs[c].mean()) if runs[c].notna().any() else np.nan
            for c in ("step_time_s", "peak_mem_mb", "params_trainable")}


def _delong_p(scores: dict, label: str, base: str, dataset: str) -> float:
    """DeLong's p of mean frame AUC (seeds both have) of `label` against `base`, on the
    frames both scored; NaN for the base itself or without readable scores. It tests the
    test sample's variance for these trained models only, not training randomness."""
    found = None if label == base else delong_on(scores, label, base, dataset)
    return float("nan") if found is None else found[0].p_value


def _test_sets(metrics: pd.DataFrame) -> list[str]:
    test = metrics[metrics["split"] == "test"]
    return list(dict.fromkeys(test["dataset"]))
