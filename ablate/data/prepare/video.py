"""One video: sample its frames, find the face on each, cut the crops, write the marker.

Frames are read by seeking (decode.py, exact); detection, tracking and smoothing
live in faces.py, crop geometry in crops.py. Per video: detect on every sampled
frame, pick the tracked face, smooth over the sampled frames, then crop.

Matching crops: an FF++ fake .../manipulated_sequences/<M>/<comp>/<dir>/A_B is
target A's video with B's face, so its frame i is cut with the face found on
original A's frame i (read from A's prepared.json), not with its own detection:
fake and target crops then cover the same pixels. Originals run first.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np

from ablate.data import decode
from ablate.data.crops import centre_crop, crop_face
from ablate.data.faces import (
    Detector,
    Face,
    detect_faces,
    detector_version,
    make_detector,
    pick_track,
    smooth,
)
from ablate.data.prepare.files import (
    MARKER,
    faces_digest,
    read_marker,
    remove_ours,
    write_atomic,
    write_png,
)
from ablate.data.prepare.jobs import Job
from ablate.data.prepare.settings import Settings
from ablate.data.prepare.summary import VideoResult

CACHE_BYTES = 512 << 20  # sampled frames kept in memory between detection and cropping


class _NoOriginal(Exception):
    """A matched fake whose original has no usable marker (e.g. it was unreadable)."""


def prepare_video(job: Job, settings: Settings, preset: str | None = None) -> VideoResult:
    """Crop the sampled frames of one video, then write its marker (never raises on bad video)."""
    folder = Path(job.out)
    try:
        remove_ours(folder)
        count = decode.frame_count(job.video)  # from packets: headers can be wrong
        original = None
        if job.original is not None:
            original = read_marker(Path(job.original))
            if original is None:
                raise _NoOriginal(f"{Path(job.original) / MARKER} missing: its original "
                                  "was not prepared (see above); fix it and rerun")
            wanted = [i for i in original["sampled"] if i < count]
            found = {int(k): Face.from_json(v) for k, v in (original.get("faces") or {}).items()}
            faces, cache = [found.get(i) for i in wanted], {}
        else:
            wanted = sample_indices(count, settings.frames)
            faces, cache = find_faces(job.video, wanted, settings)
        written, no_face = write_crops(job.video, wanted, faces, cache, folder, settings)
    except decode.Undecodable as err:
        remove_ours(folder)
        return VideoResult(job.name, "unreadable", reason=_one_line(err))
    except _NoOriginal as err:
        remove_ours(folder)
        return VideoResult(job.name, "no_original", reason=_one_line(err))
    folder.mkdir(parents=True, exist_ok=True)
    used = {i: f for i, f in zip(wanted, faces, strict=True) if f is not None and i in written}
    marker = {
        "video": job.video,
        "frame_count": count,
        "settings": asdict(settings),
        "preset": preset,
        "detector_version": detector_version(settings.detector),
        "sampled": wanted,
        "written": written,
        "no_face": no_face,
        "faces": {str(i): f.to_json() for i, f in used.items()},  # the face each crop used
        "matched_to": job.original,
        "original_faces": None if original is None else faces_digest(original),
    }
    write_atomic(folder / MARKER, json.dumps(marker).encode())
    status = "no_face" if not written and settings.detector != "none" else "prepared"
    return VideoResult(job.name, status, len(written), len(no_face))


def _one_line(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(err).__name__


def read_frames(video: str, indices: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
    """(index, RGB uint8 (H, W, 3)) of each wanted frame, ascending, every one or an error.

    The one place frames are read: seek-based and exact (decode.read_frames).
    """
    got = 0
    for index, frame in decode.read_frames(video, indices):
        got += 1
        yield index, frame
    if got < len(indices):
        raise decode.Undecodable(
            f"cannot decode video {video}: {got} of its {len(indices)} sampled frames came "
            "out; check the file plays (e.g. with ffprobe), re-encode or remove it, then rerun"
        )


def sample_indices(count: int, k: int) -> list[int]:
    """`k` frame indices evenly spaced over [0, count) with both ends (all if k is 0 or >= count)."""
    if k <= 0 or k >= count:
        return list(range(count))
    return np.unique(np.linspace(0, count - 1, k).round().astype(int)).tolist()


def find_faces(
    video: str, wanted: list[int], settings: Settings
) -> tuple[list[Face | None], dict[int, np.ndarray]]:
    """The tracked, smoothed face of each wanted frame (None: a miss), and the frames kept.

    Frames are kept in memory (up to CACHE_BYTES) so that cropping need not decode again.
    """
    detector = make_detector(settings.detector)
    if detector is None:  # centre crops: nothing to find
        return [None] * len(wanted), {}
    return track_faces(read_frames(video, wanted), detector, settings)


def track_faces(
    frames: Iterable[tuple[int, np.ndarray]], detector: Detector, settings: Settings
) -> tuple[list[Face | None], dict[int, np.ndarray]]:
    """`find_faces` on frames already read ((index, RGB) in order): one place that detects,
    tracks and smooths, whether the frames come from a video or (`ablate predict`) an image."""
    found: list[list[Face]] = []
    cache: dict[int, np.ndarray] = {}
    kept = 0
    for index, frame in frames:
        found.append(detect_faces(frame, detector))
        kept += frame.nbytes
        if kept <= CACHE_BYTES:
            cache[index] = frame
    return smooth(pick_track(found, settings.min_face_score), settings.smooth), cache


def write_crops(
    video: str,
    wanted: list[int],
    faces: list[Face | None],
    cache: dict[int, np.ndarray],
    folder: Path,
    settings: Settings,
) -> tuple[list[int], list[int]]:
    """Cut and write the crop of each wanted frame that has a face: (written, no face).

    With no detector every frame is centre-cropped; otherwise a frame whose face is
    None is a miss and gets no crop.
    """
    centre = settings.detector == "none"
    written = []
    no_face = [i for i, f in zip(wanted, faces, strict=True) if not centre and f is None]
    for index, crop in cut_crops(video, wanted, faces, cache, settings):
        if crop is None:  # degenerate landmarks: no crop, counted
            no_face.append(index)
            continue
        write_png(folder / f"{index:04d}.png", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
        written.append(index)
    return written, sorted(no_face)


def cut_crops(
    video: str,
    wanted: list[int],
    faces: list[Face | None],
    cache: dict[int, np.ndarray],
    settings: Settings,
) -> Iterator[tuple[int, np.ndarray | None]]:
    """(index, RGB crop) of each wanted frame to crop, in order: every frame with no
    detector, else those with a face; the crop is None where the landmarks are degenerate.

    Frames not in `cache` are read again. Shared by `write_crops` and `ablate predict`,
    so a crop scored is cut exactly as a crop trained on.
    """
    centre = settings.detector == "none"
    face_of = dict(zip(wanted, faces, strict=True))
    todo = [i for i in wanted if centre or face_of[i] is not None]
    reread = [i for i in todo if i not in cache]
    frames = read_frames(video, reread) if reread else iter(())
    for index in todo:
        frame = cache.pop(index) if index in cache else _next_frame(frames, index)
        yield index, cut_crop(frame, face_of[index], settings)


def cut_crop(frame: np.ndarray, face: Face | None, settings: Settings) -> np.ndarray | None:
    """The (size, size, 3) crop of one frame: centred with no detector, else around `face`
    (None when its landmarks are degenerate)."""
    if settings.detector == "none":
        return centre_crop(frame, settings.size)
    if face is None:
        raise ValueError("a detector was used but this frame has no face to crop")
    return crop_face(frame, face, settings.align, settings.scale, settings.size)


def _next_frame(frames: Iterator[tuple[int, np.ndarray]], index: int) -> np.ndarray:
    got, frame = next(frames)
    if got != index:  # read_frames yields the asked indices in order; anything else is a bug
        raise RuntimeError(f"asked frame {index}, got {got}")
    return frame
