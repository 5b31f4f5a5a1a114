"""`ablate compare-teachers`: one recipe, several diffusion teachers, matched seeds and data.

The comparison is a sweep over an explicit grid (one recipe per teacher) run by
the sweep machinery, so it is recorded in the results database like any sweep
and reused, resumed and reported the same way. Differences against the first
teacher are *paired*: both teachers' scores on the same test videos are
resampled together (one bootstrap draw of videos, applied to both), which is
much tighter than comparing two independent CIs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
import yaml

from ablate.errors import AblateError
from ablate.report.delong import holm
from ablate.report.paired import delong_on, read_scores
from ablate.slots import NO_GUIDE
from ablate.space import parse_settings

SPACES_DIR = Path("results/spaces")
REPORTS_DIR = Path("results/reports")

# The CPU default when no --recipe is given: the `quick` space's recipe.
CPU_RECIPE = {
    "backbone": "tiny", "image_size": 64, "data.train": "synth-blend", "train": "cpu",
    "train.steps": 240, "train.batch_size": 8, "train.eval_every": 40, "train.log_every": 20,
}
CPU_TESTS = ["synth-blend", "synth-colour", "synth-warp", "synth-lowres"]


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
    from ablate.recipe import compose, result_dict
    from ablate.registry import build
    from ablate.space import load_space

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

    from ablate.results import ResultsDB
    from ablate.sweep import run_sweep

    name = name or f"compare-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
    folder = Path(out) if out else REPORTS_DIR / name
    require_free(folder)  # before any training: a taken folder costs seconds, not hours
    fixed = parse_recipe(recipe) if recipe else dict(CPU_RECIPE)
    guide_settings = sorted(k for k in fixed if k.startswith("guide."))
    if guide_settings and any(s.is_baseline for s in specs):
        raise AblateError(f"--recipe sets {', '.join(guide_settings)}, which the `none` row "
                          "(no guide) cannot take; compare the baseline with the default guide, "
                          "or drop `none` from --teachers")
    tests = tests or ([] if recipe else CPU_TESTS)
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
    from ablate.teachers.catalog import frozen_params

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
    """Per teacher and test set: AUC/EER [95% CI], paired delta vs the first teacher, cost.

    `teachers` maps each label, first = the baseline, to its composed teacher config.
    """
    trials = trial_rows(db, name, teachers)
    done = trials[trials["status"].isin(["finished", "reused"])]
    if done.empty:
        errors = "; ".join(f"{r.teacher}: {r.status} {r.error or ''}".strip()
                           for r in trials.itertuples())
        raise AblateError(f"comparison {name} has no finished trials ({errors})")
    scores = read_scores(done, "teacher")  # (teacher, seed) -> per-frame scores
    metrics = db.metrics(name)
    labels = list(teachers)
    base = labels[0]
    rows = []
    for dataset in _test_sets(metrics):
        boot = {lab: _boot_over_seeds(scores, lab, dataset, n_boot) for lab in labels}
        for lab in labels:
            row = {"teacher": lab, "test_set": dataset}
            mine = done[done["teacher"] == lab]
            row["seeds"] = int(mine["seed"].nunique())
            for metric in ("auc", "eer"):
                point, low, high = _metric(metrics, mine, dataset, metric, boot[lab], None)
                row.update({metric: point, f"{metric}_low": low, f"{metric}_high": high})
                d_point, d_low, d_high = _metric(metrics, mine, dataset, metric, boot[lab],
                                                 (boot[base], done[done["teacher"] == base]))
                row.update({f"d_{metric}": d_point, f"d_{metric}_low": d_low,
                            f"d_{metric}_high": d_high})
            row["ci_method"] = "paired video bootstrap" if boot[lab] else "stored CIs (no scores)"
            row["p_delong"] = _delong_p(scores, lab, base, dataset)
            for cost in ("step_time_s", "peak_mem_mb", "params_trainable"):
                row[cost] = float(mine[cost].mean()) if mine[cost].notna().any() else np.nan
            rows.append(row)
    table = pd.DataFrame(rows)
    # Holm over every teacher x test set compared with the base
    table["p_delong_holm"] = holm(table["p_delong"].to_numpy(dtype=float))
    return with_frozen_params(table, teachers)


def _delong_p(scores: dict, label: str, base: str, dataset: str) -> float:
    """DeLong's p of mean frame AUC (seeds both have) of `label` against `base`, on the
    frames both scored; NaN for the base itself or without readable scores."""
    found = None if label == base else delong_on(scores, label, base, dataset)
    return float("nan") if found is None else found[0].p_value


def _test_sets(metrics: pd.DataFrame) -> list[str]:
    test = metrics[metrics["split"] == "test"]
    return list(dict.fromkeys(test["dataset"]))


def _boot_over_seeds(scores: dict, label: str, dataset: str, n_boot: int) -> dict:
    """{'auc': (points per seed, resample values averaged over seeds), 'eer': ...} or {}."""
    from ablate.metrics import auc, bootstrap_values, eer

    seeds = sorted(s for (lab, s) in scores if lab == label)
    if not seeds:
        return {}
    out: dict[str, tuple[list[float], np.ndarray]] = {}
    for metric, fn in (("auc", auc), ("eer", eer)):
        points, values = [], []
        for seed in seeds:
            frame = scores[(label, seed)]
            frame = frame[frame["dataset"] == dataset].sort_values("path", kind="stable")
            if frame.empty:
                return {}
            y, s = frame["label"].to_numpy(), frame["score"].to_numpy()
            points.append(fn(y, s))
            # bootstrap seed 0 for every teacher and seed: the same video resamples
            values.append(bootstrap_values(frame["video_id"].astype(str).to_numpy(), y, s,
                                           metric, n_boot=n_boot, seed=0)[0])
        out[metric] = (points, np.mean(values, axis=0))
    return out


def _metric(metrics: pd.DataFrame, trials: pd.DataFrame, dataset: str, metric: str,
            boot: dict, paired: tuple[dict, pd.DataFrame] | None) -> tuple[float, float, float]:
    """(point, CI low, CI high): of the metric, or with `paired` of its difference to the base."""
    if boot and (paired is None or paired[0]):
        points, values = boot[metric]
        if paired is not None:
            base_points, base_values = paired[0][metric]
            points = [np.mean(points) - np.mean(base_points)]
            values = values - base_values
        low, high = np.quantile(values, [0.025, 0.975])
        return float(np.mean(points)), float(low), float(high)
    # no scores here (a cluster run folder elsewhere): the database's numbers
    def stored(rows: pd.DataFrame) -> pd.DataFrame:
        ids = rows["id"] if "id" in rows else rows["trial_id"]
        return metrics[(metrics["trial_id"].isin(ids)) & (metrics["dataset"] == dataset)
                       & (metrics["split"] == "test") & (metrics["level"] == "frame")
                       & (metrics["metric"] == metric)]
    mine = stored(trials)
    if paired is None:
        return float(mine["value"].mean()), float(mine["ci_low"].mean()), float(
            mine["ci_high"].mean())
    base = stored(paired[1])
    return float(mine["value"].mean() - base["value"].mean()), np.nan, np.nan


# ---------------------------------------------------------------- output


def _fmt(point: float, low: float, high: float, signed: bool = False) -> str:
    if np.isnan(point):
        return "n/a"
    sign = "+" if signed else ""
    text = f"{point:{sign}.3f}"
    return text if np.isnan(low) else f"{text} [{low:{sign}.3f}, {high:{sign}.3f}]"


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The comparison as strings: one row per teacher and test set."""
    base = table["teacher"].iloc[0]
    rows = []
    for r in table.itertuples():
        first = r.teacher == base
        rows.append({
            "teacher": r.teacher, "test set": r.test_set, "seeds": r.seeds,
            "AUC [95% CI]": _fmt(r.auc, r.auc_low, r.auc_high),
            "EER [95% CI]": _fmt(r.eer, r.eer_low, r.eer_high),
            f"ΔAUC vs {base}": "—" if first else _fmt(r.d_auc, r.d_auc_low, r.d_auc_high, True),
            f"ΔEER vs {base}": "—" if first else _fmt(r.d_eer, r.d_eer_low, r.d_eer_high, True),
            "DeLong p (Holm)": _p_cell(r, first),
            "step (s)": f"{r.step_time_s:.3f}", "peak mem (MB)": f"{r.peak_mem_mb:.0f}",
            "trainable params": f"{r.params_trainable:,.0f}",
            "frozen params": "?" if pd.isna(getattr(r, "params_frozen", np.nan))
            else f"{r.params_frozen:,.0f}",
        })
    return pd.DataFrame(rows)


def _p_cell(r, first: bool) -> str:  # noqa: ANN001
    """DeLong's p against the base and, in brackets, Holm-adjusted; '—' where none."""
    p, adj = getattr(r, "p_delong", np.nan), getattr(r, "p_delong_holm", np.nan)
    return "—" if first or pd.isna(p) else f"{p:.3g} ({adj:.3g})"


def markdown(frame: pd.DataFrame) -> str:
    head = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])


COMPARISON_FILES = ("compare.csv", "compare.md", "compare.png")


def require_free(folder: Path) -> None:
    """AblateError when `folder` already holds a comparison's files: they are never replaced."""
    taken = [n for n in COMPARISON_FILES if (folder / n).exists()]
    if taken:
        raise AblateError(f"{folder} already holds a comparison ({', '.join(taken)}); "
                          "choose another --out (an existing comparison is never overwritten)")


def write_comparison(table: pd.DataFrame, folder: Path) -> Path:
    """compare.csv (numbers), compare.md (the table and how CIs were computed), compare.png.

    Every file is created exclusively, so a comparison already in `folder` (or one that
    another process writes there meanwhile) is never overwritten: AblateError instead.
    """
    methods = ", ".join(sorted(set(table["ci_method"])))
    note = (f"CIs: 95% percentile bootstrap over test videos ({methods}); deltas are paired "
            "(the same video resamples for both teachers), averaged over matched seeds.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        require_free(folder)
        with open(folder / "compare.csv", "x", newline="") as fh:  # claims the folder
            table.to_csv(fh, index=False)
        with open(folder / "compare.md", "x") as fh:
            fh.write(markdown(display_table(table)) + "\n\n" + note + "\n")
        with open(folder / "compare.png", "xb") as fh:
            _plot(table, fh)
    except FileExistsError:
        require_free(folder)  # raises, naming what is there
        raise
    except OSError as err:
        raise AblateError(f"cannot write the comparison to {folder}: {err.strerror or err}; "
                          "choose another --out") from None
    return folder


def _plot(table: pd.DataFrame, path: Path | BinaryIO) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * table["test_set"].nunique(), 3.6))
    sets, teachers = list(dict.fromkeys(table["test_set"])), list(dict.fromkeys(table["teacher"]))
    width = 0.8 / len(teachers)
    colours = sns.color_palette("deep", len(teachers))
    for i, teacher in enumerate(teachers):
        mine = table[table["teacher"] == teacher].set_index("test_set").loc[sets]
        x = np.arange(len(sets)) + (i - (len(teachers) - 1) / 2) * width
        err = np.vstack([mine["auc"] - mine["auc_low"], mine["auc_high"] - mine["auc"]])
        ax.bar(x, mine["auc"], width, yerr=np.nan_to_num(err), capsize=3, label=teacher,
               color=colours[i])
    ax.set_xticks(np.arange(len(sets)), sets, rotation=20)
    ax.set_ylabel("frame AUC (95% CI)")
    ax.set_ylim(0, 1)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.legend(title="teacher", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)
