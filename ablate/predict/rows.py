"""File results -> the rows predict reports, one schema for the table, CSV and JSON.

Columns (`COLUMNS`; an empty cell is None in JSON):
    file    the image or video, as found
    kind    image | video
    level   file: the whole file (a video's score is the mean of its frames'), or frame
    frame   the frame's index in its video (0 for an image); empty on a file row
    frames  frames scored, on a file row (a video's frames without a face are not scored)
    x1, y1, x2, y2   the face box the crop was cut around, frame pixels; empty without
            detection (the run's training frames were not detected either) and on file rows
    score   P(fake), the sigmoid of the detector's logit
    label   fake when score >= the run's threshold (chosen on its source validation split),
            else real; empty when the run has no threshold or nothing was scored
    status  ok | no face | error: <one line>
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ablate.predict.status import NO_FACE, OK

if TYPE_CHECKING:
    from ablate.predict.run import FileResult

__all__ = ["COLUMNS", "LEVELS", "NO_FACE", "OK", "label", "to_rows"]

COLUMNS = ("file", "kind", "level", "frame", "frames", "x1", "y1", "x2", "y2", "score",
           "label", "status")
LEVELS = ("file", "frame", "both")


def label(score: float | None, threshold: float | None) -> str | None:
    if score is None or threshold is None:
        return None
    return "fake" if score >= threshold else "real"


def to_rows(results: list[FileResult], threshold: float | None,
            level: str = "file") -> list[dict[str, Any]]:
    """File rows, frame rows or both (each file's row, then its frames'). A file with no
    frame scored (no face, an error) gives its file row at every level."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    rows = []
    for result in results:
        if level != "frame" or result.status != OK:
            score = result.score
            rows.append(_row(result, "file", frames=len(result.frames), score=score,
                             label=label(score, threshold)))
        if level == "file":
            continue
        for frame in result.frames:
            box = dict(zip(("x1", "y1", "x2", "y2"), frame.box or (None,) * 4, strict=True))
            rows.append(_row(result, "frame", frame=frame.index, **box, score=frame.score,
                             label=label(frame.score, threshold)))
    return rows


def _row(result: FileResult, level: str, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(file=result.file, kind=result.kind, level=level, status=result.status, **values)
    return row
