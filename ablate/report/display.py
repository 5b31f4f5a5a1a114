"""A format-neutral table (text cells + which ones are bold) and number formatting.

Tables are computed once as numbers (pandas, written to CSV) and shown through
this one structure, so Markdown, HTML and LaTeX always show the same cells.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Table:
    """Rows of text cells; `bold[i][j]` marks a cell (the best value of its column)."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    bold: list[list[bool]] = field(default_factory=list)
    note: str = ""
    align: str = ""  # one letter per column, l or r; default: first l, rest r
    slug: str = ""  # file name for formats with one file per table (LaTeX)
    # rows typeset apart: reported by a source, not measured here (grey / dagger / italics)
    apart: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.bold:
            self.bold = [[False] * len(r) for r in self.rows]
        if not self.apart:
            self.apart = [False] * len(self.rows)
        if not self.align:
            self.align = "l" + "r" * (len(self.columns) - 1)

    @property
    def empty(self) -> bool:
        return not self.rows


def _finite(x: float | None) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def pm(mean: float, low: float | None, high: float | None, scale: float = 100.0,
       digits: int = 2, signed: bool = False) -> str:
    """`83.17 ± 1.20`: the mean and half the width of its interval (scaled); `-` when missing."""
    if not _finite(mean):
        return "-"
    sign = "+" if signed else ""
    text = f"{mean * scale:{sign}.{digits}f}"
    if _finite(low) and _finite(high):
        text += f" ± {(high - low) / 2 * scale:.{digits}f}"
    return text


def number(value: float | int | None, digits: int = 3) -> str:
    """A compact number: integers with thousands separators, floats to `digits` significant."""
    if not _finite(value):
        return "-"
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 1000:
        return f"{int(value):,}"
    return f"{value:.{digits}g}"
