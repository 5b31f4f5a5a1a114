"""Videos -> evenly spaced frames -> square face crops, the input every adapter reads.

Why this shape:
    - Output mirrors the input tree: VIDEOS/a/b/xyz.mp4 -> OUT/a/b/xyz/0042.png, the
      file name being the frame's index in the video. Adapters pair a fake's frame
      with its originals' frame by that index, so FF++ fakes and originals sampled
      with the same --frames line up. `frames_dir` renames a `videos` folder in the
      relative path (FF++/DFD: .../c23/videos/000.mp4 -> .../c23/frames/000/).
    - Frames are read by seeking (decode.py, exact); detection, tracking and smoothing
      live in faces.py, crop geometry in crops.py. Per video: detect on every sampled
      frame, pick the tracked face, smooth over the sampled frames, then crop.
    - Matching crops: an FF++ fake .../manipulated_sequences/<M>/<comp>/<dir>/A_B is
      target A's video with B's face, so its frame i is cut with the face found on
      original A's frame i (read from A's prepared.json), not with its own detection:
      fake and target crops then cover the same pixels. Originals run first.
    - Resumable: each crop is written to a temp name and renamed; a per-video
      `prepared.json` (settings, detector version, sampled / written / no-face frame
      indices, the face used per frame) is written last. A rerun skips videos with a
      marker and redoes the others.
    - Nothing is dropped silently: frames without a face are counted; videos without
      any face, that cannot be decoded, or whose original is missing are listed in the
      summary and in OUT/prepare_report.json; once more than `max_skip_fraction` of all
      videos are skipped the run stops with an AblateError (finished videos are kept).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import multiprocessing
import os
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from ablate.core.errors import AblateError
from ablate.data import decode
from ablate.data.crops import ALIGNS, centre_crop, crop_face
from ablate.data.faces import (
    DETECTORS,
    WITH_LANDMARKS,
    Face,
    detect_faces,
    detector_version,
    make_detector,
    pick_track,
    smooth,
)

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"}
)
MARKER = "prepared.json"
REPORT = "prepare_report.json"
VIDEOS_DIR = "videos"  # the folder name `frames_dir` replaces
SHOWN = 10  # names shown per kind in messages; the report file lists all
CACHE_BYTES = 512 << 20  # sampled frames kept in memory between detection and cropping
_OURS = re.compile(r"^(\d+\.png|\..+\.tmp)$")  # files a (half-done) run may have left
_FFPP_FAKE = re.compile(r"^(\d+)_(\d+)$")  # FF++ fake A_B: target A's video, B's face


@dataclass(frozen=True)
class Settings:
    """What a crop depends on; stored in each marker so a rerun can tell if it is stale.

    The defaults are DeepfakeBench's convention (aligned, scale 1.3, 256 px, 32 frames).
    """

    frames: int = 32  # 0 = every frame
    size: int = 256
    scale: float = 1.3  # crop side = scale x face size (template span or box side)
    align: str = "similarity"  # similarity | none
    detector: str = "mtcnn"
    min_face_score: float = 0.9  # a detection below this is a miss
    smooth: int = 3  # centred moving-average window over sampled frames; 1 = off
    match_crops: bool = True  # FF++ fakes cut with their target original's faces


# Named conventions; explicit settings override them. See docs/data.md.
PRESETS: dict[str, dict[str, Any]] = {
    "deepfakebench": {"frames": 32, "size": 256, "scale": 1.3, "align": "similarity",
                      "detector": "mtcnn"},
    "diffusionfake": {"frames": 270, "size": 256, "scale": 1.3, "align": "none",
                      "detector": "mtcnn"},
}


def resolve_settings(preset: str | None = None, **given: Any) -> Settings:
    """Defaults, then the preset's values, then every setting given (not None)."""
    names = {f.name for f in fields(Settings)}
    unknown = sorted(set(given) - names)
    if unknown:
        raise AblateError(f"unknown prepare setting(s) {', '.join(unknown)}; known: "
                          f"{', '.join(sorted(names))}")
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise AblateError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        values.update(PRESETS[preset])
    values.update({k: v for k, v in given.items() if v is not None})
    return replace(Settings(), **values)


@dataclass(frozen=True)
class Job:
    """One video and the folder its crops go to."""

    video: str
    out: str
    name: str  # path relative to the videos root, for messages
    original: str | None = None  # FF++ fake: its target original's crop folder


@dataclass
class VideoResult:
    """What happened to one video."""

    name: str
    status: str  # prepared | already_done | no_face | unreadable | no_original
    frames_written: int = 0
    frames_no_face: int = 0
    reason: str = ""
    was_done: bool = False  # no_face read from an earlier run's marker


@dataclass
class PrepareSummary:
    """Counts over a run, with every skipped video named."""

    videos: int = 0
    prepared: int = 0
    already_done: int = 0
    frames_written: int = 0
    frames_no_face: int = 0
    no_face: list[str] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)
    no_original: dict[str, str] = field(default_factory=dict)
    matched: int = 0  # fakes cut with their original's faces
    stopped_early: bool = False
    out: str = ""

    @property
    def skipped(self) -> int:
        return len(self.no_face) + len(self.unreadable) + len(self.no_original)

    def add(self, result: VideoResult) -> None:
        if result.status == "unreadable":
            self.unreadable[result.name] = result.reason
            return
        if result.status == "no_original":
            self.no_original[result.name] = result.reason
            return
        if result.was_done or result.status == "already_done":
            self.already_done += 1
        else:
            self.prepared += 1
        if result.status == "no_face":
            self.no_face.append(result.name)
        self.frames_written += result.frames_written
        self.frames_no_face += result.frames_no_face

    def format(self) -> list[str]:
        """Summary lines for the terminal."""
        lines = [
            f"videos: {self.videos} found, {self.prepared} processed now, "
            f"{self.already_done} already done, {len(self.no_face)} without a face, "
            f"{len(self.unreadable)} unreadable"
            + (f", {len(self.no_original)} without their original" if self.no_original else ""),
            f"frames: {self.frames_written} face crops written, "
            f"{self.frames_no_face} sampled frames without a face (skipped)",
        ]
        if self.matched:
            lines.append(f"matching crops: {self.matched} FF++ fakes cut with their target "
                         "original's faces")
        if self.no_face:
            lines.append(f"no face in any sampled frame: {_examples(self.no_face)}")
        if self.unreadable:
            items = [f"{k} ({v})" for k, v in self.unreadable.items()]
            lines.append(f"unreadable: {_examples(items)}")
        if self.no_original:
            items = [f"{k} ({v})" for k, v in self.no_original.items()]
            lines.append(f"original not prepared: {_examples(items)}")
        lines.append(f"report: {Path(self.out) / REPORT}")
        return lines


def _examples(items: list[str]) -> str:
    more = f", ... {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return ", ".join(items[:SHOWN]) + more


# ---------------------------------------------------------------- entry point


def prepare(
    videos: str,
    out: str,
    frames: int | None = None,
    size: int | None = None,
    scale: float | None = None,
    align: str | None = None,
    detector: str | None = None,
    min_face_score: float | None = None,
    smooth: int | None = None,
    match_crops: bool | None = None,
    preset: str | None = None,
    max_skip_fraction: float = 0.05,
    workers: int = 1,
    frames_dir: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> PrepareSummary:
    """Extract face crops of every video under `videos` (folder, file or glob) into `out`.

    Settings left None come from `preset` (see PRESETS), else from Settings' defaults.
    """
    settings = resolve_settings(
        preset, frames=frames, size=size, scale=scale, align=align, detector=detector,
        min_face_score=min_face_score, smooth=smooth, match_crops=match_crops,
    )
    _check_args(settings, max_skip_fraction, workers)
    make_detector(settings.detector)  # fail before any work if the backend is missing
    jobs = plan_jobs(videos, Path(out).expanduser(), frames_dir, settings)
    done = {} if overwrite else _finished(jobs, settings)
    _check_originals(jobs, done, settings)
    summary = PrepareSummary(videos=len(jobs), out=str(Path(out).expanduser()))
    summary.matched = sum(1 for j in jobs if j.original is not None)
    allowed = max_skip_fraction * len(jobs)
    # originals (and everything else) first, then the fakes that read their faces
    phases = [[j for j in jobs if j.out not in done and j.original is None],
              [j for j in jobs if j.out not in done and j.original is not None]]
    with tqdm(total=len(jobs), unit="video", desc="prepare", disable=not progress) as bar:
        for job in jobs:
            if job.out in done:
                summary.add(done[job.out])
                bar.update()
        todo = sum(len(p) for p in phases)
        n = 0
        for phase in phases:
            if summary.skipped > allowed:
                break
            for result in _run(phase, settings, workers, preset):
                n += 1
                summary.add(result)
                bar.update()
                bar.set_postfix(skipped=summary.skipped)
                if summary.skipped > allowed:
                    summary.stopped_early = n < todo
                    break
    write_report(summary)
    if summary.skipped > allowed:
        raise _too_many_skipped(summary, max_skip_fraction)
    return summary


def _check_args(settings: Settings, max_skip_fraction: float, workers: int) -> None:
    if settings.frames < 0:
        raise AblateError(f"--frames must be >= 0 (0 = every frame), got {settings.frames}")
    if settings.size < 8:
        raise AblateError(f"--size must be at least 8 pixels, got {settings.size}")
    if not 0 < settings.scale <= 10:
        raise AblateError(f"--scale must be in (0, 10] (1.3 = crop side 1.3 x the face), "
                          f"got {settings.scale}")
    if settings.align not in ALIGNS:
        raise AblateError(f"--align must be one of {', '.join(ALIGNS)}, got {settings.align!r}")
    if settings.detector not in DETECTORS:
        raise AblateError(f"--detector must be one of {', '.join(DETECTORS)}, "
                          f"got {settings.detector!r}")
    needs_points = settings.align == "similarity" and settings.detector != "none"
    if needs_points and settings.detector not in WITH_LANDMARKS:
        raise AblateError(f"--align similarity needs landmarks, which --detector "
                          f"{settings.detector} does not give; add --align none or use "
                          "--detector mtcnn")
    if not 0 <= settings.min_face_score <= 1:
        raise AblateError(f"--min-face-score must be in [0, 1], got {settings.min_face_score}")
    if settings.smooth < 1:
        raise AblateError(f"--smooth must be >= 1 (1 = no smoothing), got {settings.smooth}")
    if not 0 <= max_skip_fraction <= 1:
        raise AblateError(f"--max-skip-fraction must be in [0, 1], got {max_skip_fraction}")
    if workers < 1:
        raise AblateError(f"--workers must be >= 1, got {workers}")


def _too_many_skipped(summary: PrepareSummary, fraction: float) -> AblateError:
    where = "stopped early: " if summary.stopped_early else ""
    items = summary.no_face[:3] + [
        f"{k} ({v})" for k, v in [*summary.unreadable.items(), *summary.no_original.items()][:3]
    ]
    extra = f", {len(summary.no_original)} without their original" if summary.no_original else ""
    return AblateError(
        f"{where}{summary.skipped} of {summary.videos} videos skipped "
        f"({len(summary.no_face)} without a face, {len(summary.unreadable)} unreadable{extra}), "
        f"more than --max-skip-fraction {fraction:g}; e.g. {', '.join(items)}; "
        f"all listed in {Path(summary.out) / REPORT}. Check those videos, try --detector none "
        "for videos that are already face crops, or raise --max-skip-fraction; "
        "finished videos are kept and a rerun resumes"
    )


def write_report(summary: PrepareSummary) -> None:
    """Full lists of what was skipped, next to the crops (the terminal shows a few)."""
    path = Path(summary.out) / REPORT
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, json.dumps(asdict(summary), indent=1).encode())


# ---------------------------------------------------------------- finding videos


def plan_jobs(
    videos: str, out: Path, frames_dir: str | None = None, settings: Settings | None = None
) -> list[Job]:
    """One job per video file, its output folder mirroring its path below the videos root.

    With `settings.match_crops` (and a detector), an FF++ fake's job names the crop
    folder of its target original (see `ffpp_original`).
    """
    base, files = find_videos(videos)
    match = settings is not None and settings.match_crops and settings.detector != "none"
    jobs, seen = [], {}
    for path in files:
        rel = path.relative_to(base)
        parts = list(rel.parent.parts)
        if frames_dir is not None:
            if VIDEOS_DIR not in parts:
                raise AblateError(
                    f"--frames-dir {frames_dir} renames a '{VIDEOS_DIR}' folder, but {rel} has "
                    f"none below {base}; drop --frames-dir or point --videos higher up"
                )
            parts = [frames_dir if p == VIDEOS_DIR else p for p in parts]
        target = out.joinpath(*parts, rel.stem)
        key = str(target)
        if key in seen:
            raise AblateError(
                f"{seen[key]} and {rel} would both write to {target}; "
                "rename one (videos in a folder need distinct names without the extension)"
            )
        seen[key] = rel.as_posix()
        original = ffpp_original(target) if match else None
        if match and original is None and ffpp_original(path.parent / path.stem) is not None:
            raise AblateError(
                f"{path} is an FF++ fake, but --videos starts below its "
                "manipulated_sequences folder, so the crops do not mirror FF++ and it cannot "
                "find its target original's crops; give a glob from the dataset root (e.g. "
                "'ROOT/*_sequences/*/c23/videos/*.mp4') or pass --no-match-crops"
            )
        jobs.append(Job(str(path), key, rel.as_posix(), None if original is None else str(original)))
    return jobs


def ffpp_original(folder: Path) -> Path | None:
    """FF++ fake crops .../manipulated_sequences/<M>/<comp>/<dir>/A_B -> .../original_sequences/
    youtube/<comp>/<dir>/A (target A's video, into which B's face was put); else None."""
    parts = folder.parts
    if len(parts) < 5 or parts[-5] != "manipulated_sequences":
        return None
    found = _FFPP_FAKE.match(parts[-1])
    if found is None:
        return None
    comp, where = parts[-3], parts[-2]  # compression level, frames folder
    return Path(*parts[:-5], "original_sequences", "youtube", comp, where, found.group(1))


def find_videos(spec: str) -> tuple[Path, list[Path]]:
    """(root that relative paths start from, sorted video files) for a folder, file or glob."""
    spec = os.path.expanduser(spec)
    if glob.has_magic(spec):
        base = _glob_base(spec)
        files = [Path(p) for p in glob.glob(spec, recursive=True)]
    elif os.path.isdir(spec):
        base = Path(spec)
        files = [Path(d, f) for d, _, names in os.walk(spec) for f in names]
    elif os.path.isfile(spec):
        base, files = Path(spec).parent, [Path(spec)]
    else:
        raise AblateError(f"--videos {spec}: no such folder or file (a glob needs * ? or [)")
    files = sorted(p for p in files if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    if not files:
        kinds = ", ".join(sorted(VIDEO_EXTENSIONS))
        raise AblateError(f"--videos {spec}: no video files found (looked for {kinds})")
    return base, files


def _glob_base(pattern: str) -> Path:
    """The folders of a glob before its first wildcard: where relative paths start."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _finished(jobs: list[Job], settings: Settings) -> dict[str, VideoResult]:
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
        if original is None or used != _faces_digest(original):
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


def _check_originals(jobs: list[Job], done: dict[str, VideoResult], settings: Settings) -> None:
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


def _faces_digest(marker: dict[str, Any]) -> str:
    """A short hash of the frames and faces a marker holds (what a matched fake was cut with)."""
    used = {"sampled": marker.get("sampled"), "faces": marker.get("faces")}
    return hashlib.sha1(json.dumps(used, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- running


def _run(
    jobs: list[Job], settings: Settings, workers: int, preset: str | None = None
) -> Iterator[VideoResult]:
    """Results as videos finish; with workers > 1, in worker processes (spawned).

    Closing the iterator early cancels the videos not yet started.
    """
    if workers == 1 or len(jobs) <= 1:
        for job in jobs:  # one thread, as in a worker: the face detector's float sums (and
            with _one_thread():  # so its boxes) then match whatever --workers is
                result = prepare_video(job, settings, preset)
            yield result
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init) as pool:
        pending = [pool.submit(prepare_video, job, settings, preset) for job in jobs]
        try:
            for future in as_completed(pending):
                yield future.result()
        finally:
            for future in pending:
                future.cancel()


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """torch and OpenCV on one thread for the block, then as they were."""
    import torch

    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv_threads)


def _worker_init() -> None:
    """One video per process; threads would only contend."""
    cv2.setNumThreads(1)
    import torch

    torch.set_num_threads(1)


class _NoOriginal(Exception):
    """A matched fake whose original has no usable marker (e.g. it was unreadable)."""


def prepare_video(job: Job, settings: Settings, preset: str | None = None) -> VideoResult:
    """Crop the sampled frames of one video, then write its marker (never raises on bad video)."""
    folder = Path(job.out)
    try:
        _remove_ours(folder)
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
        _remove_ours(folder)
        return VideoResult(job.name, "unreadable", reason=_one_line(err))
    except _NoOriginal as err:
        _remove_ours(folder)
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
        "original_faces": None if original is None else _faces_digest(original),
    }
    _write_atomic(folder / MARKER, json.dumps(marker).encode())
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
    found: list[list[Face]] = []
    cache: dict[int, np.ndarray] = {}
    kept = 0
    for index, frame in read_frames(video, wanted):
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
    face_of = dict(zip(wanted, faces, strict=True))
    todo = [i for i in wanted if centre or face_of[i] is not None]
    written, no_face = [], [i for i in wanted if not centre and face_of[i] is None]
    reread = [i for i in todo if i not in cache]
    frames = read_frames(video, reread) if reread else iter(())
    for index in todo:
        frame = cache.pop(index) if index in cache else _next_frame(frames, index)
        crop = centre_crop(frame, settings.size) if centre else crop_face(
            frame, face_of[index], settings.align, settings.scale, settings.size
        )
        if crop is None:  # degenerate landmarks: no crop, counted
            no_face.append(index)
            continue
        _write_png(folder / f"{index:04d}.png", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
        written.append(index)
    return written, sorted(no_face)


def _next_frame(frames: Iterator[tuple[int, np.ndarray]], index: int) -> np.ndarray:
    got, frame = next(frames)
    if got != index:  # read_frames yields the asked indices in order; anything else is a bug
        raise RuntimeError(f"asked frame {index}, got {got}")
    return frame


# ---------------------------------------------------------------- files


def _write_png(path: Path, image: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"could not encode {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, data.tobytes())


def _write_atomic(path: Path, data: bytes) -> None:
    """Write to a temp name, then rename: an interrupted run never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _remove_ours(folder: Path) -> None:
    """Delete what an earlier, unfinished run left (crops, temp files, marker), nothing else."""
    if not folder.is_dir():
        return
    for entry in os.scandir(folder):
        if entry.is_file() and (_OURS.match(entry.name) or entry.name == MARKER):
            os.remove(entry.path)
