"""What `ablate compare-teachers` writes: the procedures behind its intervals, the table as
text (compare.md), its numbers (compare.csv) and a plot (compare.png).

`ablate.compare` computes the comparison; this module only names and shows it.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from ablate.core.errors import AblateError
from ablate.report.display import Table
from ablate.report.render import markdown_table
from ablate.report.stats import DEFAULT_EFFECT, MAX_SEEDS, NO_INTERVAL, SEED_T, TWO_STAGE

AVG = "avg"  # test_set of each teacher's row averaged over test sets (as in the report)
OWN_T = "t over seeds"
DIFF_T = "t over matched seeds"
AVG_T = f"{SEED_T} (test sets averaged within each seed)"
RUN_BOOT = "video bootstrap (1 seed: test sample only)"
NO_SEEDS = "no finished seeds"
BASE_DELTA = "— (the base)"
# What each procedure named in the table does; compare.md states the ones it uses.
PROCEDURES = {
    OWN_T: "a teacher's AUC/EER on one test set: the mean over its seeds (training runs), "
           "Student-t 95% interval over the per-seed values",
    DIFF_T: "Δ vs the base on one test set: each matched seed's paired difference (seeds "
            "both teachers ran), mean and Student-t 95% interval over those seeds",
    AVG_T: "Avg rows: each seed's value (or paired Δ) averaged over the test sets first, then "
           "the mean and Student-t 95% interval over those seed means",
    TWO_STAGE: "Avg rows, column ΔAUC [95% CI, seeds × videos]: recomputed from the runs' "
               "per-frame scores on the frames every run scored (so its centre can differ a "
               "little from the stored metrics'); videos are resampled (scores.csv has no "
               "identities); "
               "its interval adds the test videos' sampling (video resamples shared by every "
               "run) to the seed-to-seed variance (ablate.report.stats.two_stage_interval)",
    RUN_BOOT: "a single training run: that run's own stored percentile video bootstrap CI; it "
              "measures test-set sampling given that one trained model, not training "
              "randomness, which is usually the larger part: no verdict on a teacher",
    NO_INTERVAL: "one (matched) seed: the point only; one run says nothing about "
                 "seed-to-seed variation, so no interval is given",
    NO_SEEDS: "no finished run has this number",
}



def _fmt(point: float, low: float, high: float, signed: bool = False) -> str:
    if pd.isna(point):
        return "n/a"
    sign = "+" if signed else ""
    text = f"{point:{sign}.3f}"
    return text if pd.isna(low) or pd.isna(high) else f"{text} [{low:{sign}.3f}, {high:{sign}.3f}]"


def _effect_label() -> str:
    return f"seeds for ΔAUC {DEFAULT_EFFECT:g}"


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The comparison as strings: one row per teacher and test set, then each teacher's Avg."""
    base = table["teacher"].iloc[0]
    two_stage = table["d_auc_2s_low"].notna().any()
    rows = []
    for r in table.itertuples():
        first, avg = r.teacher == base, r.test_set == AVG
        row = {
            "teacher": r.teacher, "test set": "Avg" if avg else r.test_set,
            "seeds": _seeds_cell(r, first),
            "AUC [95% CI]": _fmt(r.auc, r.auc_low, r.auc_high),
            "EER [95% CI]": _fmt(r.eer, r.eer_low, r.eer_high),
            "CI": r.ci_method,
            f"ΔAUC vs {base} [95% CI over seeds]":
                "—" if first else _fmt(r.d_auc, r.d_auc_low, r.d_auc_high, True),
            f"ΔEER vs {base} [95% CI over seeds]":
                "—" if first else _fmt(r.d_eer, r.d_eer_low, r.d_eer_high, True),
            "Δ CI": "—" if first else r.d_ci_method,
        }
        if two_stage:
            row["ΔAUC [95% CI, seeds × videos]"] = "—" if first or pd.isna(r.d_auc_2s) else \
                _fmt(r.d_auc_2s, r.d_auc_2s_low, r.d_auc_2s_high, True)
        row["MDE ΔAUC"] = "—" if first or not avg or pd.isna(r.mde) else f"{r.mde:.3f}"
        row[_effect_label()] = _needed_cell(r, first or not avg)
        row.update({
            "DeLong p (Holm)": _p_cell(r, first),
            "step (s)": f"{r.step_time_s:.3f}", "peak mem (MB)": f"{r.peak_mem_mb:.0f}",
            "trainable params": f"{r.params_trainable:,.0f}",
            "frozen params": "?" if pd.isna(getattr(r, "params_frozen", np.nan))
            else f"{r.params_frozen:,.0f}",
            "note": "" if pd.isna(r.note) else str(r.note),
        })
        rows.append(row)
    return pd.DataFrame(rows)


def _seeds_cell(r, first: bool) -> str:  # noqa: ANN001
    """The teacher's seeds, and how many of them are matched with the base where fewer."""
    seeds = 0 if pd.isna(r.seeds) else int(r.seeds)
    if first or pd.isna(r.d_seeds) or int(r.d_seeds) == seeds:
        return str(seeds)
    return f"{seeds} ({int(r.d_seeds)} matched)"


def _needed_cell(r, blank: bool) -> str:  # noqa: ANN001
    if blank or pd.isna(r.sd_seeds):
        return "—"
    return f"> {MAX_SEEDS:,}" if pd.isna(r.seeds_needed) else f"{int(r.seeds_needed)}"


def _p_cell(r, first: bool) -> str:  # noqa: ANN001
    """DeLong's p against the base and, in brackets, Holm-adjusted; '—' where none."""
    p, adj = getattr(r, "p_delong", np.nan), getattr(r, "p_delong_holm", np.nan)
    return "—" if first or pd.isna(p) else f"{p:.3g} ({adj:.3g})"


def markdown(frame: pd.DataFrame) -> str:
    """The display table through the report's Markdown renderer (one cell escaping rule)."""
    rows = [[str(v).replace("\n", " ") for v in row] for row in frame.itertuples(index=False)]
    return markdown_table(Table("", [str(c) for c in frame.columns], rows,
                                align="l" * len(frame.columns)))


def comparison_note(table: pd.DataFrame) -> str:
    """compare.md's account of every interval in the table and of DeLong's p."""
    base = table["teacher"].iloc[0]
    used = set(table["ci_method"]) | set(table["d_ci_method"]) | set(table["d_2s_method"].dropna())
    used = {p for u in used for p in str(u).split("; ")}
    used = {u.split(": ", 1)[1] if u[:4] in ("AUC:", "EER:") else u for u in used}
    lines = ["Intervals are 95%. The unit of replication is the training run (seed): the "
             "intervals over seeds count each run once; test sets are fixed conditions, never "
             f"replicates. Δ is teacher − {base} on the same seeds and test sets. Procedures "
             "in this table (columns CI, Δ CI):", ""]
    lines += [f"- **{p}**: {text}." for p, text in PROCEDURES.items() if p in used]
    if used <= {RUN_BOOT, NO_INTERVAL, NO_SEEDS, BASE_DELTA}:
        lines.append("- With one seed per teacher nothing here measures training randomness, "
                     "so no difference here is a verdict on a teacher: run --seeds 3 or more.")
    lines += [f"- **MDE ΔAUC** (Avg rows): the Avg ΔAUC a paired t test over these seeds "
              f"detects with 80% power at α = 0.05, given the seed-to-seed spread seen here; "
              f"**{_effect_label()}**: the seeds that test needs for a true ΔAUC of "
              f"{DEFAULT_EFFECT:g}.",
              "- **DeLong p** (Holm-adjusted over every teacher × test set, in brackets): "
              "the mean frame AUC over the matched seeds against the base's, on the frames "
              "both scored, frames counted as independent. It tests test-sample variance for "
              "one pair of trained models only and ignores training randomness, so it is not "
              "a verdict on a teacher; the intervals over seeds are."]
    return "\n".join(lines)


COMPARISON_FILES = ("compare.csv", "compare.md", "compare.png")


def require_free(folder: Path) -> None:
    """AblateError when `folder` already holds a comparison's files: they are never replaced."""
    taken = [n for n in COMPARISON_FILES if (folder / n).exists()]
    if taken:
        raise AblateError(f"{folder} already holds a comparison ({', '.join(taken)}); "
                          "choose another --out (an existing comparison is never overwritten)")


def write_comparison(table: pd.DataFrame, folder: Path) -> Path:
    """compare.csv (numbers), compare.md (the table and how each interval was computed, the
    note of `comparison_note`), compare.png (AUC bars, error bars the 95% CI over seeds).

    Every file is created exclusively, so a comparison already in `folder` (or one that
    another process writes there meanwhile) is never overwritten: AblateError instead.
    """
    note = comparison_note(table)
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
        mine = table[table["teacher"] == teacher].set_index("test_set").reindex(sets)
        x = np.arange(len(sets)) + (i - (len(teachers) - 1) / 2) * width
        over_seeds = mine["ci_method"].isin([OWN_T, AVG_T]).to_numpy()  # no bars for 1 seed
        err = np.vstack([mine["auc"] - mine["auc_low"], mine["auc_high"] - mine["auc"]])
        ax.bar(x, mine["auc"], width, yerr=np.where(over_seeds, np.nan_to_num(err), 0.0),
               capsize=3, label=teacher, color=colours[i])
    ax.set_xticks(np.arange(len(sets)), ["Avg" if s == AVG else s for s in sets], rotation=20)
    ax.set_ylabel("frame AUC (95% CI over seeds)")
    ax.set_ylim(0, 1)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.legend(title="teacher", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)
