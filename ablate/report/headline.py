"""The report's first table, in the paper's language: the plain baseline beside + guidance.

One guided recipe (the reference when it is guided, else the guided recipe with the
best source-val AUC that has a matched baseline) against its plain baseline (the same
setup with guide=none). Per test set and on average:

- each detector's frame AUC, frame EER and video AUC: mean ± 95% CI over seeds
  (Student t, as in the main table);
- the paired difference guided - baseline: per test set over seeds (t), and on
  average over test sets (`stats.seed_interval`: the mean over test sets within each
  seed, then t over those seed means; the same numbers as the guidance table), with
  its minimum detectable effect. Where the runs' per-frame scores are readable, the
  Avg row also gets the two-stage interval (seeds and test videos).

`summary_paragraph` turns these numbers, the ablation rows and the importances into a
few plain sentences, hedged by the CIs; every number in it is a cell of a table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ablate.core.names import is_baseline_flat
from ablate.provenance import is_part
from ablate.report.ablation import excludes_zero, unmatched_note
from ablate.report.data import SweepData
from ablate.report.display import Table, pm
from ablate.report.guidance import baseline_of
from ablate.report.reference import Reference, _best_val
from ablate.report.stats import (
    DEFAULT_EFFECT,
    TWO_STAGE,
    seed_interval,
    seeds_needed,
    t_interval,
)
from ablate.report.tables import AVG

MEASURES = [("frame", "auc", "AUC"), ("frame", "eer", "EER"), ("video", "auc", "video AUC")]
COLUMNS = ["dataset", "level", "metric", "detector", "n", "mean", "ci_low", "ci_high", "ci",
           "mde", "seeds_needed", "note"]
TWO_STAGE_ROW = "difference, two-stage"  # the Avg difference with test-sample uncertainty


@dataclass
class Headline:
    guided: str  # config
    baseline: str
    guided_label: str
    baseline_label: str
    numbers: pd.DataFrame  # COLUMNS; detector in {baseline, guided, difference, TWO_STAGE_ROW}
    effect: float = DEFAULT_EFFECT  # the effect "seeds needed" is quoted for

    def cell(self, dataset: str, detector: str, level: str = "frame",
             metric: str = "auc") -> pd.Series | None:
        n = self.numbers
        hit = n[(n["dataset"] == dataset) & (n["detector"] == detector) & (n["level"] == level)
                & (n["metric"] == metric)]
        return None if hit.empty else hit.iloc[0]


def choose_pair(data: SweepData, ref: Reference) -> tuple[str, str] | None:
    """(guided config, its baseline config), or None when the sweep holds no such pair."""
    if not is_baseline_flat(data.flat[ref.config]):
        base = baseline_of(data, ref.config)
        if base is not None:
            return ref.config, base
    guided = [c for c, f in data.flat.items()
              if not is_baseline_flat(f) and baseline_of(data, c) is not None]
    if not guided:
        return None
    best = _best_val(data, guided)
    return best, baseline_of(data, best)


def headline(data: SweepData, seed_vals: pd.DataFrame, ref: Reference,
             effect: float = DEFAULT_EFFECT, two_stage: dict | None = None) -> Headline | None:
    """The first table's numbers (see module doc), or None without a guided/baseline pair.

    `two_stage`: (level, metric) -> (mean, low, high, n) of the Avg difference with test
    videos resampled too (`paired.two_stage_difference`), where the scores were readable.
    """
    pair = choose_pair(data, ref)
    if pair is None:
        return None
    guided, base = pair
    labels = data.counted.drop_duplicates("config").set_index("config")["label"]
    rows = []
    for level, metric, _ in MEASURES:
        vals = seed_vals[(seed_vals["level"] == level) & (seed_vals["metric"] == metric)]
        per = {who: vals[vals["config"] == cfg].set_index(["seed", "dataset"])["value"]
               for who, cfg in (("baseline", base), ("guided", guided))}
        for dataset in [*data.tests, AVG]:
            for who in ("baseline", "guided"):
                x = per[who].xs(dataset, level="dataset") if len(per[who]) else pd.Series()
                rows.append(_row(dataset, level, metric, who, *t_interval(x.to_numpy()),
                                 "t over seeds"))
            both = pd.concat([per["guided"].rename("g"), per["baseline"].rename("b")],
                             axis=1, join="inner").dropna()
            if dataset == AVG:  # test sets averaged within each seed, then t over seeds
                pairs = both.drop(index=AVG, level="dataset", errors="ignore").reset_index()
                pairs = pairs[~pairs["dataset"].map(is_part).astype(bool)]  # not twice
                found = seed_interval(pairs.assign(diff=pairs["g"] - pairs["b"]))
                unmatched = unmatched_note(*(per[w].reset_index() for w in ("guided", "baseline")))
                rows.append(_row(dataset, level, metric, "difference", found.mean, found.low,
                                 found.high, found.n_seeds, found.procedure, found.mde,
                                 seeds_needed(effect, found.sd),
                                 "; ".join(n for n in (found.note, unmatched) if n)))
                if two_stage and (level, metric) in two_stage:
                    rows.append(_row(dataset, level, metric, TWO_STAGE_ROW,
                                     *two_stage[(level, metric)], TWO_STAGE))
            else:
                mine = both.xs(dataset, level="dataset") if dataset in set(
                    both.index.get_level_values("dataset")) else both.iloc[0:0]
                rows.append(_row(dataset, level, metric, "difference",
                                 *t_interval((mine["g"] - mine["b"]).to_numpy()),
                                 "t over paired seeds"))
    return Headline(guided, base, str(labels[guided]), str(labels[base]),
                    pd.DataFrame(rows, columns=COLUMNS), effect)


def _row(dataset: str, level: str, metric: str, who: str, mean: float, low: float, high: float,
         n: int, ci: str, mde: float = float("nan"), needed: int | None = None,
         note: str = "") -> dict:
    return {"dataset": dataset, "level": level, "metric": metric, "detector": who, "n": n,
            "mean": mean, "ci_low": low, "ci_high": high, "ci": ci if n >= 2 else
            "no interval (1 seed)" if n == 1 else ci, "mde": mde, "seeds_needed": needed,
            "note": note}


def _excludes_zero(row: pd.Series | None) -> bool:
    return row is not None and excludes_zero(row)


def first_table(h: Headline, tests: list[str], names: dict[str, str] | None = None) -> Table:
    """Rows: test sets (by display name) and Avg. Columns: baseline, + guidance, then the
    paired Δ, per measure."""
    names = names or {}
    columns = ["Test set"]
    for _, _, name in MEASURES:
        columns += [f"Baseline {name}", f"+Guidance {name}"]
    rows, bold = [], []
    for dataset in [*tests, AVG]:
        row, marks = ["Avg" if dataset == AVG else names.get(dataset, dataset)], [False]
        for level, metric, _ in MEASURES:
            cells = [h.cell(dataset, who, level, metric) for who in ("baseline", "guided")]
            for c in cells:
                row.append("-" if c is None else pm(c["mean"], c["ci_low"], c["ci_high"]))
            marks += _better(cells, metric)
        rows.append(row)
        bold.append(marks)
    return Table(f"Baseline vs + guidance (%): {h.baseline_label} → {h.guided_label}",
                 columns, rows, bold, slug="baseline_vs_guidance",
                 note="mean ± half-width of the 95% CI over seeds (Student t); the same seeds "
                      "for both detectors; bold: the better mean of the pair. Avg = mean over "
                      "test sets per seed. Frame AUC/EER from per-frame scores, video AUC from "
                      "per-video mean scores.")


def _better(cells: list[pd.Series | None], metric: str) -> list[bool]:
    if any(c is None or pd.isna(c["mean"]) for c in cells):
        return [False, False]
    a, b = cells[0]["mean"], cells[1]["mean"]
    if np.isclose(a, b):
        return [False, False]
    guided_better = b < a if metric == "eer" else b > a
    return [not guided_better, guided_better]


def difference_table(h: Headline, tests: list[str],
                     names: dict[str, str] | None = None) -> Table:
    """Rows: test sets, Avg and (with readable scores) Avg two-stage; columns: Δ (guided -
    baseline) per measure in points, the seeds, and the Avg's minimum detectable effect."""
    columns = ["Test set", *(f"Δ {name} (pts)" for _, _, name in MEASURES), "Seeds",
               "MDE ΔAUC (pts)", "Interval"]
    rows, bold = [], []
    lines = [(d, "difference") for d in [*tests, AVG]]
    if not h.numbers[h.numbers["detector"] == TWO_STAGE_ROW].empty:
        lines.append((AVG, TWO_STAGE_ROW))
    for dataset, who in lines:
        name = "Avg" if dataset == AVG else (names or {}).get(dataset, dataset)
        row, marks = [name if who == "difference" else f"{name} (seeds × videos)"], [False]
        auc = h.cell(dataset, who)
        for level, metric, _ in MEASURES:
            c = h.cell(dataset, who, level, metric)
            row.append("-" if c is None else pm(c["mean"], c["ci_low"], c["ci_high"],
                                                signed=True))
            marks.append(_excludes_zero(c))
        mde = "-" if auc is None or pd.isna(auc["mde"]) else f"{auc['mde'] * 100:.2f}"
        row += ["-" if auc is None else str(int(auc["n"])), mde,
                "-" if auc is None else str(auc["ci"])]
        rows.append(row)
        bold.append(marks + [False] * 3)
    return Table("Paired difference, guided − baseline (points)", columns, rows, bold,
                 slug="guidance_difference",
                 note="per test set: mean over paired seeds ± half-width of its Student-t 95% "
                      "CI; Avg: the test sets averaged within each seed, then the mean ± "
                      "half-width of the Student-t 95% CI over those seed means (the training "
                      "run is the unit; test sets are conditions, not replicates). Seeds × "
                      "videos: recomputed from the per-frame scores on the frames every run "
                      "scored, its interval adding the test videos' sampling (videos "
                      "resampled: scores.csv holds no identities) "
                      "(two-stage, docs/report.md). MDE: the Avg ΔAUC a paired t test over these "
                      "seeds detects with 80% power at α = 0.05. Bold: the CI excludes 0. AUC: "
                      "positive means guidance helps; EER: negative means it helps.",
                 align="lrrrrrl")


def _effect(c: pd.Series) -> str:
    if pd.isna(c["ci_low"]):
        return f"{c['mean'] * 100:+.1f} points"
    return (f"{c['mean'] * 100:+.1f} points (95% CI {c['ci_low'] * 100:+.1f} to "
            f"{c['ci_high'] * 100:+.1f})")


def power_sentence(c: pd.Series, effect: float) -> str:
    """What these seeds could have seen: the minimum detectable effect, and the seeds that
    the chosen effect would need."""
    if pd.isna(c.get("mde", float("nan"))):
        return ""
    text = (f" With {int(c['n'])} seeds, the smallest effect this comparison detects with 80% "
            f"power is {c['mde'] * 100:.1f} points")
    needed = c.get("seeds_needed")
    if needed is not None and pd.notna(needed):
        text += f"; a {effect * 100:g}-point effect would need {int(needed)} seeds"
    return text + "."


def headline_sentence(h: Headline) -> str:
    """`Guidance changes mean test AUC by +2.1 points (95% CI +0.4 to +3.8) over ...`, with
    the interval's procedure and what the study could have detected."""
    c = h.cell(AVG, "difference")
    if c is None or pd.isna(c["mean"]):
        return (f"Guidance ({h.guided_label}) and the plain encoder ({h.baseline_label}) share "
                "no seed with every test set, so no difference is reported.")
    text = (f"Guidance ({h.guided_label}) changes mean test AUC by {_effect(c)} over the "
            f"plain encoder ({h.baseline_label})")
    if int(c["n"]) < 2:
        return text + f", from {int(c['n'])} seed: no interval (1 seed), so no verdict."
    text += (f", over {int(c['n'])} paired seeds (the test sets averaged within each seed, "
             "Student t over seeds)")
    if isinstance(c.get("note"), str) and c["note"]:
        text += f" ({c['note'].replace('variant', 'the guided recipe').replace('reference', 'the baseline')}; only matched seeds compared)"
    power = power_sentence(c, h.effect)
    if not _excludes_zero(c):
        could = ("" if pd.isna(c["mde"]) else
                 f" So a {h.effect * 100:g}-point effect "
                 f"{'could' if c['mde'] <= h.effect else 'could not'} have been told apart "
                 "from none here.")
        return (text + "; the CI includes 0, so these runs show no clear effect either way."
                + power + could)
    return text + (": guidance helps here." if c["mean"] > 0 else ": guidance hurts here.") \
        + power


def summary_paragraph(h: Headline | None, abl: pd.DataFrame, imp_table: pd.DataFrame,
                      evaluator: str) -> str:
    """A short paragraph from the numbers (every number in it is in a table below)."""
    parts = [headline_sentence(h)] if h is not None else [
        "The sweep holds no guided recipe with its matched plain baseline (guide=none), so it "
        "cannot say whether guidance helps; add guide=none to the space."]
    paired = abl[(abl["matching"] == "paired") & (abl["metric"] == "auc")] if not abl.empty \
        else abl
    if not paired.empty:
        ranked = paired.assign(size=paired["mean"].abs()).sort_values("size", ascending=False)
        top = ranked.iloc[0]
        clear = ranked[ranked.apply(excludes_zero, axis=1)]
        factor_means = ranked.groupby("factor")["size"].max().sort_values(ascending=False)
        text = (f"Of the one-at-a-time changes, {top['factor']}={top['variant']} moves mean "
                f"test AUC the most ({_effect(top)} against {top['reference']})")
        if clear.empty:
            text += ("; no change's CI excludes 0, so these runs do not tell the factors "
                     "apart.")
        else:
            if len(factor_means) > 1 and _excludes_zero(top):
                text += (f"; by its largest change, {factor_means.index[0]} is the factor "
                         "that matters most")
            names = ", ".join(f"{r.factor}={r.variant}" for r in clear.itertuples())
            text += f"; {len(clear)} change(s) with a CI that excludes 0: {names}."
        parts.append(text)
    if imp_table is not None and not imp_table.empty:
        best = imp_table.sort_values("importance", ascending=False).iloc[0]
        parts.append(f"By {evaluator} importance on the search, {best['param']} matters most "
                     f"for {best['objective']} ({best['importance']:.2f}).")
    return " ".join(parts)
