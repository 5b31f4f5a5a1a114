"""Demšar's (2006) critical-difference diagram of mean ranks across test sets.

An axis of ranks 1..k (best on the left); each recipe's name is joined to its mean
rank; thick bars join the groups of recipes whose mean ranks differ by less than the
Nemenyi critical difference (so the test cannot tell them apart), and the CD itself is
drawn as a segment at the top so any gap can be judged by eye.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import pandas as pd  # noqa: E402

DPI = 110
_ROW = 0.32  # vertical step between label rows (axes units; y grows downward)
_BAR = 0.2  # vertical step between clique bars


def cd_groups(mean_ranks: pd.Series, cd: float) -> list[list[str]]:
    """Maximal groups of recipes (best first) whose mean ranks all differ by less than cd.

    Over the sorted ranks the "within CD" relation makes contiguous runs, so the maximal
    cliques are the runs i..j(i) (j(i) the last rank < r_i + cd) not inside an earlier
    one. Single recipes (differing from all others) form no group.
    """
    order = mean_ranks.sort_values(kind="stable")
    r = order.to_numpy(dtype=float)
    groups: list[list[str]] = []
    last_end = -1
    for i in range(len(r)):
        j = i
        while j + 1 < len(r) and r[j + 1] - r[i] < cd:
            j += 1
        if j > i and j > last_end:
            groups.append([str(x) for x in order.index[i:j + 1]])
            last_end = j
    return groups


def cd_diagram(mean_ranks: pd.Series, cd: float, folder: Path,
               name: str = "cd_diagram.png") -> Path | None:
    """Draw the CD diagram into folder/name; None when fewer than 2 recipes."""
    if len(mean_ranks) < 2:
        return None
    order = mean_ranks.sort_values(kind="stable")
    k = len(order)
    groups = cd_groups(order, cd)
    n_left = math.ceil(k / 2)
    first_row = 0.3 + _BAR * len(groups) + 0.15
    depth = first_row + _ROW * max(n_left, k - n_left)

    fig, ax = plt.subplots(figsize=(7.0, 1.0 + 0.55 * depth))
    ax.set_axis_off()
    lo, hi = 1.0, float(max(k, 2))
    ax.set_xlim(lo - 0.9, hi + 0.9)
    ax.set_ylim(depth + 0.1, -0.9)  # y grows downward

    ax.plot([lo, hi], [0, 0], color="k", lw=1)
    for tick in range(1, k + 1):
        ax.plot([tick, tick], [-0.08, 0], color="k", lw=1)
        ax.text(tick, -0.12, str(tick), ha="center", va="bottom", fontsize=9)
    for half in (0.5 + t for t in range(1, k)):
        ax.plot([half, half], [-0.04, 0], color="k", lw=0.6)

    if math.isfinite(cd) and cd > 0:
        end = lo + min(cd, hi - lo)
        ax.plot([lo, end], [-0.6, -0.6], color="k", lw=1.2)
        for x in (lo, end):
            ax.plot([x, x], [-0.65, -0.55], color="k", lw=1.2)
        ax.text((lo + end) / 2, -0.68, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=9)

    for i, (label, rank) in enumerate(order.items()):
        left = i < n_left
        row = i if left else k - 1 - i
        y = first_row + _ROW * row
        edge = lo - 0.25 if left else hi + 0.25
        ax.plot([rank, rank, edge], [0, y, y], color="0.25", lw=0.9)
        text = f"{label} ({rank:.2f})" if left else f"({rank:.2f}) {label}"
        ax.text(edge - 0.05 if left else edge + 0.05, y, text, va="center",
                ha="right" if left else "left", fontsize=9)

    for g, members in enumerate(groups):
        y = 0.3 + _BAR * g
        ranks = order[members]
        ax.plot([float(ranks.min()) - 0.04, float(ranks.max()) + 0.04], [y, y], color="k",
                lw=3.5, solid_capstyle="butt")

    path = Path(folder) / name
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path
