"""What a run writes next to the crops, and reads back on a rerun.

Each crop is written to a temp name and renamed; a per-video `prepared.json`
(settings, detector version, sampled / written / no-face frame indices, the face
used per frame) is written last, so a folder with a marker is finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ablate.core.files import write_atomic

MARKER = "prepared.json"
_OURS = re.compile(r"^(\d+\.png|\..+\.tmp)$")  # files a (half-done) run may have left


def read_marker(folder: Path) -> dict[str, Any] | None:
    """A video's done-marker, or None when absent or unreadable (then it is redone)."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    lists = isinstance(marker, dict) and all(
        isinstance(marker.get(key), list) for key in ("written", "no_face")
    )
    return marker if lists else None


def faces_digest(marker: dict[str, Any]) -> str:
    """A short hash of the frames and faces a marker holds (what a matched fake was cut with)."""
    used = {"sampled": marker.get("sampled"), "faces": marker.get("faces")}
    return hashlib.sha1(json.dumps(used, sort_keys=True).encode()).hexdigest()[:16]


def write_png(path: Path, image: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"could not encode {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data.tobytes())


def remove_ours(folder: Path) -> None:
    """Delete what an earlier, unfinished run left (crops, temp files, marker), nothing else."""
    if not folder.is_dir():
        return
    for entry in os.scandir(folder):
        if entry.is_file() and (_OURS.match(entry.name) or entry.name == MARKER):
            os.remove(entry.path)
