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
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from ablate.report.tables import AVG  # noqa: E402

DPI = 110
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
