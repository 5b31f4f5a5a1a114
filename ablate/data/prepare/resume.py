"""Resuming: which videos an earlier run finished, and whether matched fakes can run.

A rerun skips videos whose marker says they are done with the same settings and
redoes the others; a marker written with other settings is an error (use
--overwrite), never silently mixed. A matched fake is redone whenever its original
is.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from ablate.core.errors import AblateError
from ablate.data.prepare.files import MARKER, faces_digest, read_marker
from ablate.data.prepare.jobs import Job
from ablate.data.prepare.settings import Settings
from ablate.data.prepare.summary import VideoResult


def finished_jobs(jobs: list[Job], settings: Settings) -> dict[str, VideoResult]:
    """Jobs whose marker says they are done with these settings; other settings -> error.

    A matched fake counts as done only while its original is done and still holds the
    faces the fake was cut with (an original redone now means its fakes are redone).
    """
    done, stale = {}, []
    for job in jobs:
        marker = read_marker(Path(job.out))
        if marker is None:
            continue
        if marker.get("settings") != asdict(settings):
            stale.append((job.name, marker.get("settings")))
            continue
        written, missing = len(marker["written"]), len(marker["no_face"])
        status = "no_face" if not written and settings.detector != "none" else "already_done"
        done[job.out] = VideoResult(job.name, status, written, missing, was_done=True)
    if stale:
        name, old = stale[0]
        raise AblateError(
            f"{len(stale)} video(s) in the output were prepared with other settings "
            f"(e.g. {name}: {_differences(old, asdict(settings))}); use another --out, the "
            "same settings, or --overwrite to redo them"
        )
    for job in jobs:
        if job.original is None or job.out not in done:
            continue
        original = read_marker(Path(job.original))  # None: the original is redone now
        used = (read_marker(Path(job.out)) or {}).get("original_faces")
        if original is None or used != faces_digest(original):
            del done[job.out]
    return done


def _differences(old: Any, new: dict[str, Any]) -> str:
    """`key old -> new` for each setting that differs (old: a marker's settings)."""
    if not isinstance(old, dict):
        return f"{old!r}"
    keys = sorted(set(old) | set(new))
    diff = [f"{k} {old.get(k, '-')!r} -> {new.get(k, '-')!r}" for k in keys
            if old.get(k) != new.get(k)]
    return ", ".join(diff)


def check_originals(jobs: list[Job], done: dict[str, VideoResult], settings: Settings) -> None:
    """Every fake to be matched has its original in this run or prepared with these settings."""
    in_run = {j.out for j in jobs}
    missing, other = [], []
    for job in jobs:
        if job.original is None or job.out in done or job.original in in_run:
            continue
        marker = read_marker(Path(job.original))
        if marker is None:
            missing.append(job)
        elif marker.get("settings") != asdict(settings):
            other.append((job, marker.get("settings")))
    if missing:
        job = missing[0]
        raise AblateError(
            f"{len(missing)} FF++ fake(s) need their target original's crops for matching "
            f"crops, which are not prepared (e.g. {job.name} needs "
            f"{Path(job.original) / MARKER}); prepare the originals first (or together: "
            "--videos 'ROOT/*_sequences/*/c23/videos/*.mp4'), or pass --no-match-crops"
        )
    if other:
        job, old = other[0]
        raise AblateError(
            f"{len(other)} FF++ fake(s) have a target original prepared with other settings "
            f"(e.g. {job.original}: {_differences(old, asdict(settings))}); prepare the "
            "originals with the same settings (--overwrite) or pass --no-match-crops"
        )
