"""The report's figures: seaborn on matplotlib's Agg backend (no display), saved as PNG.

Each function takes numbers already computed by `tables` / `ablation` /
`importance`, draws one figure, writes it into the report folder and returns
its path (None when there is nothing to draw).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import matplotlib.ticker as mticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from ablate.report.searched import (  # noqa: E402
    ABSENT,
    COST_NAMES,
    LOG_COSTS,
    Param,
    param_order,
)
from ablate.report.tables import AVG  # noqa: E402

DPI = 110
ABSENT_AT = -0.15  # parallel coordinates: where a param a trial lacked sits
MAX_CURVE_HUES = 8  # more recipes than this: grey lines, best and reference in colour
sns.set_theme(style="whitegrid", context="notebook")


def _save(fig: plt.Figure, folder: Path, name: str) -> Path:
    path = folder / name
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def auc_heatmap(summ: pd.DataFrame, order: list[str], tests: list[str], folder: Path,
                names: dict[str, str] | None = None) -> Path | None:
    """Mean frame AUC (%) per recipe and test set (by display name): the main table at a
    glance."""
    auc = summ[(summ["level"] == "frame") & (summ["metric"] == "auc")]
    if auc.empty:
        return None
    grid = (auc.pivot_table(index="label", columns="dataset", values="mean", aggfunc="first")
            .reindex(index=order, columns=[*tests, AVG]) * 100)
    grid = grid.rename(columns=names or {})
    fig, ax = plt.subplots(figsize=(1.2 * grid.shape[1] + 3, 0.4 * grid.shape[0] + 1.5))
    sns.heatmap(grid, annot=True, fmt=".1f", cmap="viridis", cbar_kws={"label": "AUC (%)"}, ax=ax)
    ax.set(xlabel="test set", ylabel="", title="Frame AUC (%), mean over seeds")
    return _save(fig, folder, "auc_heatmap.png")


def ablation_plot(abl: pd.DataFrame, folder: Path) -> Path | None:
    """ΔAUC with its 95% CI per slot variant (a forest plot); 0 = same as the reference."""
    auc = abl[abl["metric"] == "auc"]
    if auc.empty:
        return None
    names = [f"{r.factor}={r.variant}" for r in auc.itertuples()]
    y = np.arange(len(auc))
    mean = auc["mean"].to_numpy() * 100
    low = np.where(auc["ci_low"].notna(), mean - auc["ci_low"].to_numpy() * 100, 0)
    high = np.where(auc["ci_high"].notna(), auc["ci_high"].to_numpy() * 100 - mean, 0)
    colours = dict(zip(["paired", "unmatched"], sns.color_palette(n_colors=2), strict=True))
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(auc) + 1.5))
    for matching, colour in colours.items():
        sel = (auc["matching"] == matching).to_numpy()
        if sel.any():
            ax.errorbar(mean[sel], y[sel], xerr=[low[sel], high[sel]], fmt="o", color=colour,
                        capsize=3, label=matching)
    ax.axvline(0, color="black", lw=1)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set(xlabel="ΔAUC vs reference (points)", title="Ablation: variant - reference, 95% CI")
    ax.legend(loc="best")
    return _save(fig, folder, "ablation.png")


def importance_plot(table: pd.DataFrame, evaluator: str, folder: Path) -> Path | None:
    if table.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.45 * table["param"].nunique() * table["objective"].nunique()
                                    + 1.5))
    sns.barplot(table, x="importance", y="param", hue="objective", ax=ax)
    ax.set(xlabel=f"importance ({evaluator}, normalised)", ylabel="",
           title="Hyperparameter importance")
    return _save(fig, folder, "importance.png")


def pareto_plot(front: pd.DataFrame, names: list[str], maximize: list[bool],
                folder: Path) -> Path | None:
    """Every recipe's two objectives; the non-dominated ones highlighted and joined as the front."""
    points = front.dropna(subset=names)
    if points.empty:
        return None
    y_name, x_name = names
    points = points.assign(recipe=np.where(points["on_front"], "on the front", "dominated"))
    kinds = ["on the front", "dominated"]
    fig, ax = plt.subplots(figsize=(7, 5))
    sns.scatterplot(points, x=x_name, y=y_name, hue="recipe", style="recipe", s=70, ax=ax,
                    hue_order=kinds, style_order=kinds, palette=dict(zip(kinds, ["C3", "C7"],
                                                                         strict=True)))
    best = points[points["on_front"]].sort_values(x_name)
    # the staircase runs through the corners both neighbours dominate: the worse x of a
    # pair is the right one when x is minimised (steps-post), the left one when maximised
    ax.plot(best[x_name], best[y_name], color="C3", lw=1,
            drawstyle="steps-pre" if maximize[1] else "steps-post")
    for _, r in best.iterrows():
        ax.annotate(r["label"], (r[x_name], r[y_name]), fontsize=7, xytext=(4, 4),
                    textcoords="offset points")
    if x_name.startswith("params") and points[x_name].max() > 10 * max(points[x_name].min(), 1):
        ax.set_xscale("log")
    arrows = ["higher is better" if up else "lower is better" for up in maximize]
    ax.set(title=f"Pareto front: {y_name} vs {x_name} ({len(best)} of {len(points)} recipes)",
           xlabel=f"{x_name} ({arrows[1]})", ylabel=f"{y_name} ({arrows[0]})")
    ax.legend(title="recipe", loc="best")
    return _save(fig, folder, "pareto.png")


def curves_plot(curves: pd.DataFrame, highlight: list[str], folder: Path) -> Path | None:
    """Training curves per name (loss terms, val AUC); one line per trial, coloured by recipe."""
    if curves.empty:
        return None
    names = sorted(curves["name"].unique())
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    labels = list(dict.fromkeys(curves["label"]))
    many = len(labels) > MAX_CURVE_HUES
    shown = [lab for lab in highlight if lab in labels] if many else labels
    palette = dict(zip(shown, sns.color_palette(n_colors=max(len(shown), 1)), strict=False))
    for ax, name in zip(axes.flat, names, strict=False):
        part = curves[curves["name"] == name]
        for (_, label), trial in part.groupby(["trial_id", "label"], sort=False):
            colour = palette.get(label, "0.75")
            ax.plot(trial["step"], trial["value"], color=colour, lw=1.2 if label in palette else 0.7,
                    alpha=0.9)
        ax.set(title=name, xlabel="step")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=c, label=lab) for lab, c in palette.items()]
    if many:
        handles.append(plt.Line2D([], [], color="0.75", label="other recipes"))
    fig.suptitle("Training curves (one line per trial)")
    fig.tight_layout()
    fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 2), fontsize=8,
               bbox_to_anchor=(0.5, 0.0), frameon=False)
    return _save(fig, folder, "curves.png")


# ---------------------------------------------------------------- structure search


def _grid(n: int, width: float = 4.0, height: float = 3.2) -> tuple[plt.Figure, np.ndarray]:
    """A figure of `n` panels, at most 3 a row; the spare panels hidden."""
    cols = min(3, max(n, 1))
    rows = -(-max(n, 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    return fig, axes


def slice_plot(points: pd.DataFrame, params: list[Param], objective: str,
               folder: Path) -> Path | None:
    """One panel per searched param: the param's value (x) against `objective` (y), one
    point per trial that has the param. `points`: `structure.slice_data` (columns param,
    id, label, value, objective). Categorical: jittered strip per category, in the space's
    order; numeric: scatter, log x where the space samples on a log scale."""
    if points.empty:
        return None
    shown = [p for p in params if (points["param"] == p.key).any()]
    fig, axes = _grid(len(shown))
    rng = np.random.default_rng(0)  # the jitter: the same picture every build
    for ax, p in zip(axes.flat, shown, strict=False):
        part = points[points["param"] == p.key]
        y = part["objective"].to_numpy(dtype=float)
        if p.categorical:
            order = param_order(p, part["value"])
            where = {str(c): i for i, c in enumerate(order)}
            x = part["value"].map(lambda v, w=where: w[str(v)]).to_numpy(dtype=float)
            ax.scatter(x + rng.uniform(-0.15, 0.15, len(x)), y, s=22, alpha=0.75)
            ax.set_xticks(range(len(order)), [str(c) for c in order], rotation=30, ha="right",
                          rotation_mode="anchor")  # each label ends at its own tick
            ax.set_xlim(-0.5, len(order) - 0.5)
        else:
            ax.scatter(part["value"].to_numpy(dtype=float), y, s=22, alpha=0.75)
            if p.log:
                ax.set_xscale("log")
        ax.set(title=f"{p.key} ({len(part)} trials)", xlabel=p.key + (" (log)" if p.log else ""),
               ylabel=objective)
    fig.suptitle(f"Slices: {objective} by each searched param (one point per trial)")
    fig.tight_layout()
    return _save(fig, folder, "structure_slices.png")


def _axis_position(p: Param, values: pd.Series) -> tuple[np.ndarray, list[float], list[str]]:
    """A parallel-coordinates axis: each value's height (NaN -> ABSENT_AT), and its ticks.
    Categories evenly spaced in [0, 1]; numbers scaled to [0, 1] (log10 first when log)."""
    absent = values.isna().to_numpy()
    y = np.full(len(values), ABSENT_AT)
    if p.categorical:
        order = param_order(p, values)
        # one category sits mid-axis; none (every trial lacked the param) has no ticks
        spots = np.linspace(0, 1, len(order)) if len(order) > 1 else np.full(len(order), 0.5)
        where = {str(c): s for c, s in zip(order, spots, strict=True)}
        y[~absent] = [where[str(v)] for v in values[~absent]]
        ticks, labels = list(spots), [str(c) for c in order]
    else:
        x = values[~absent].to_numpy(dtype=float)
        t = np.log10(x) if p.log else x
        lo, hi = (float(t.min()), float(t.max())) if len(t) else (0.0, 1.0)
        y[~absent] = (t - lo) / (hi - lo) if hi > lo else 0.5
        raw = (x.min(), x.max()) if len(x) else (np.nan, np.nan)
        ticks, labels = ([0.0, 1.0], [f"{raw[0]:.3g}", f"{raw[1]:.3g}"]) if hi > lo else (
            [0.5], [f"{raw[0]:.3g}"])
    if absent.any():
        ticks, labels = [ABSENT_AT, *ticks], [ABSENT, *labels]
    return y, ticks, labels


def parallel_plot(wide: pd.DataFrame, params: list[Param], objective: str,
                  folder: Path) -> Path | None:
    """One line per trial across the searched params, `objective` the last axis, coloured by
    it. `wide`: `structure.trial_params` (one row per trial, one column per param, None
    where absent, and `objective`); trials without an objective value are left out."""
    rows = wide[wide[objective].notna()].reset_index(drop=True)
    if rows.empty or not params:
        return None
    score = rows[objective].to_numpy(dtype=float)
    axes_ = [*params, Param(objective, "float")]
    heights = [_axis_position(p, rows[p.key]) for p in axes_]
    ys = np.column_stack([h[0] for h in heights])  # (n_trials, n_axes)
    xs = np.arange(len(axes_))
    norm = plt.Normalize(score.min(), score.max() if score.max() > score.min() else score.min()
                         + 1e-9)
    cmap = plt.get_cmap("viridis")
    fig, ax = plt.subplots(figsize=(1.8 * len(axes_) + 2, 5))
    for i in np.argsort(score):  # the best drawn last, on top
        ax.plot(xs, ys[i], color=cmap(norm(score[i])), lw=1.1, alpha=0.8)
    for x, (_, ticks, labels) in zip(xs, heights, strict=True):
        ax.axvline(x, color="0.3", lw=0.8)
        for t, lab in zip(ticks, labels, strict=True):
            ax.annotate(lab, (x, t), xytext=(3, 0), textcoords="offset points", fontsize=7,
                        va="center")
    ax.set_xticks(xs, [p.key for p in axes_], rotation=20, ha="right")
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(axes_) - 0.5)
    ax.grid(False)
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=objective)
    ax.set_title(f"Parallel coordinates: {len(rows)} trials, coloured by {objective}")
    return _save(fig, folder, "structure_parallel.png")


def cost_front_plot(front: pd.DataFrame, folder: Path) -> Path | None:
    """One panel per cost: each confirmed recipe's mean Avg test AUC (%) with its 95% CI
    over seeds against the cost; the front (higher AUC, lower cost) in red, joined.
    `front`: `structure.confirmed_front` (label, cost, value, auc_mean, auc_low, auc_high,
    on_front)."""
    if front.empty:
        return None
    costs = list(dict.fromkeys(front["cost"]))
    fig, axes = _grid(len(costs), 4.8, 3.8)
    for ax, cost in zip(axes.flat, costs, strict=False):
        part = front[front["cost"] == cost].sort_values("value")
        mean = part["auc_mean"].to_numpy(dtype=float) * 100
        err = np.vstack([mean - part["auc_low"].to_numpy(dtype=float) * 100,
                         part["auc_high"].to_numpy(dtype=float) * 100 - mean])
        err = np.where(np.isfinite(err), err, 0)
        on = part["on_front"].to_numpy(dtype=bool)
        for sel, colour, name in ((on, "C3", "on the front"), (~on, "C7", "dominated")):
            if sel.any():
                ax.errorbar(part["value"].to_numpy(dtype=float)[sel], mean[sel],
                            yerr=err[:, sel], fmt="o", color=colour, capsize=3, label=name)
        best = part[on]
        ax.plot(best["value"], best["auc_mean"] * 100, color="C3", lw=1, drawstyle="steps-post")
        for _, r in best.iterrows():
            ax.annotate(r["label"], (r["value"], r["auc_mean"] * 100), fontsize=6,
                        xytext=(4, 4), textcoords="offset points")
        if cost in LOG_COSTS:
            ax.set_xscale("log")  # ticks at 1, 2, 5 x 10^k, in engineering units (500, 1k)
            ax.xaxis.set_major_locator(mticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(mticker.EngFormatter())
            ax.xaxis.set_minor_formatter(mticker.NullFormatter())
        ax.set(xlabel=f"{COST_NAMES.get(cost, cost)} (lower is better)",
               ylabel="Avg test AUC (%), 95% CI", title=f"AUC vs {cost}")
        ax.legend(loc="best", fontsize=7)
    fig.suptitle("Confirmed recipes: AUC vs cost (mean over confirmation seeds)")
    fig.tight_layout()
    return _save(fig, folder, "structure_front.png")
