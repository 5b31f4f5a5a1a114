"""Rows -> a CSV or JSON file (chosen by `--out`'s suffix), or a table for reading.

Why JSON carries more than the rows: a score file read months later should say which
detector, which threshold and which frame preparation made it.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from ablate.core.errors import AblateError
from ablate.core.files import write_atomic
from ablate.predict.rows import COLUMNS

OUT_SUFFIXES = (".csv", ".json")
SHOWN_DIGITS = 4  # score digits in the table (the files keep every digit)


def check_out(out: str | None) -> None:
    """A one-line error, before any work, for an --out predict cannot write."""
    if out is None:
        return
    path = Path(out).expanduser()
    if path.suffix.lower() not in OUT_SUFFIXES:
        raise AblateError(f"--out {out}: give a .csv or .json file (the suffix picks the format)")
    if path.is_dir():
        raise AblateError(f"--out {out} is a folder; give a file name ending .csv or .json")


def write_rows(out: str, rows: list[dict[str, Any]], about: dict[str, Any]) -> Path:
    """Write the rows to `out` (.csv: the rows; .json: {**about, "rows": rows})."""
    path = Path(out).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows([_cell(row[c]) for c in COLUMNS] for row in rows)
        write_atomic(path, buffer.getvalue().encode())
    else:
        text = json.dumps({**about, "columns": list(COLUMNS), "rows": rows}, indent=1)
        write_atomic(path, (text + "\n").encode())
    return path


def _cell(value: Any) -> str:
    return "" if value is None else repr(value) if isinstance(value, float) else str(value)


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as aligned columns; columns empty on every row are left out, a box is one
    column."""
    shown = []
    for row in rows:
        box = None if row["x1"] is None else ",".join(
            f"{row[k]:.0f}" for k in ("x1", "y1", "x2", "y2"))
        score = None if row["score"] is None else f"{row['score']:.{SHOWN_DIGITS}f}"
        shown.append({"file": row["file"], "level": row["level"], "frame": row["frame"],
                      "frames": row["frames"], "box": box, "P(fake)": score,
                      "label": row["label"], "status": row["status"]})
    columns = [c for c in shown[0] if any(r[c] is not None for r in shown)] if shown else []
    cells = [[("" if r[c] is None else str(r[c])) for c in columns] for r in shown]
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip()
              for line in cells]
    return "\n".join(lines)
