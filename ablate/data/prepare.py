"""Videos -> evenly spaced frames -> square face crops, the input every adapter reads.

Why this shape:
    - Output mirrors the input tree: VIDEOS/a/b/xyz.mp4 -> OUT/a/b/xyz/0042.png, the
      file name being the frame's index in the video. Adapters pair a fake's frame
      with its originals' frame by that index, so FF++ fakes and originals sampled
      with the same --frames line up. `frames_dir` renames a `videos` folder in the
      relative path (FF++/DFD: .../c23/videos/000.mp4 -> .../c23/frames/000/).
    - Detector: the LBP frontal-face cascade bundled with scikit-image (a dependency),
      so nothing is downloaded at run time and it works on OpenCV 4 and 5 (OpenCV 5
      dropped CascadeClassifier and its Haar files). "haar" uses OpenCV's Haar
      cascade where the installed OpenCV still has it; "none" centre-crops.
    - Crop: the largest face, its box side times (1 + margin), squared, shifted to lie
      inside the frame (shrunk to the frame's short side if larger), resized to size.
    - Resumable: each crop is written to a temp name and renamed; a per-video
      `prepared.json` (settings, sampled / written / no-face frame indices) is written
      last. A rerun skips videos with a marker and redoes the others.
    - Nothing is dropped silently: frames without a face are counted; videos without
      any face or that cannot be decoded are listed in the summary and in
      OUT/prepare_report.json; once more than `max_skip_fraction` of all videos are
      skipped the run stops with an AblateError (finished videos are kept).
"""

from __future__ import annotations

import glob
import json
import multiprocessing
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from ablate.errors import AblateError

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"}
)
DETECTORS = ("lbp", "haar", "none")
MARKER = "prepared.json"
REPORT = "prepare_report.json"
VIDEOS_DIR = "videos"  # the folder name `frames_dir` replaces
DETECT_SIDE = 480  # frames are shrunk to this short side for detection (speed)
MIN_FACE = 24  # pixels at detection scale (the cascades' window size)
SHOWN = 10  # names shown per kind in messages; the report file lists all
_OURS = re.compile(r"^(\d+\.png|\..+\.tmp)$")  # files a (half-done) run may have left

Box = tuple[int, int, int, int]  # x, y, w, h in frame pixels
Detector = Callable[[np.ndarray], list[Box]]


@dataclass(frozen=True)
class Settings:
    """What a crop depends on; stored in each marker so a rerun can tell if it is stale."""

    frames: int = 32  # 0 = every frame
    size: int = 256
    margin: float = 0.3
    detector: str = "lbp"


@dataclass(frozen=True)
class Job:
    """One video and the folder its crops go to."""

    video: str
    out: str
    name: str  # path relative to the videos root, for messages


@dataclass
class VideoResult:
    """What happened to one video."""

    name: str
    status: str  # prepared | already_done | no_face | unreadable
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
    stopped_early: bool = False
    out: str = ""

    @property
    def skipped(self) -> int:
        return len(self.no_face) + len(self.unreadable)

    def add(self, result: VideoResult) -> None:
        if result.status == "unreadable":
            self.unreadable[result.name] = result.reason
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
            f"{len(self.unreadable)} unreadable",
            f"frames: {self.frames_written} face crops written, "
            f"{self.frames_no_face} sampled frames without a face (skipped)",
        ]
        if self.no_face:
            lines.append(f"no face in any sampled frame: {_examples(self.no_face)}")
        if self.unreadable:
            items = [f"{k} ({v})" for k, v in self.unreadable.items()]
            lines.append(f"unreadable: {_examples(items)}")
        lines.append(f"report: {Path(self.out) / REPORT}")
        return lines


def _examples(items: list[str]) -> str:
    more = f", ... {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return ", ".join(items[:SHOWN]) + more


# ---------------------------------------------------------------- entry point


def prepare(
    videos: str,
    out: str,
    frames: int = 32,
    size: int = 256,
    margin: float = 0.3,
    detector: str = "lbp",
    max_skip_fraction: float = 0.05,
    workers: int = 1,
    frames_dir: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> PrepareSummary:
    """Extract face crops of every video under `videos` (folder, file or glob) into `out`."""
    settings = Settings(frames, size, margin, detector)
    _check_args(settings, max_skip_fraction, workers)
    make_detector(detector)  # fail before any work if the backend is missing
    jobs = plan_jobs(videos, Path(out).expanduser(), frames_dir)
    done = {} if overwrite else _finished(jobs, settings)
    summary = PrepareSummary(videos=len(jobs), out=str(Path(out).expanduser()))
    allowed = max_skip_fraction * len(jobs)
    todo = [j for j in jobs if j.out not in done]
    with tqdm(total=len(jobs), unit="video", desc="prepare", disable=not progress) as bar:
        for job in jobs:
            if job.out in done:
                summary.add(done[job.out])
                bar.update()
        if summary.skipped <= allowed:
            for n, result in enumerate(_run(todo, settings, workers), 1):
                summary.add(result)
                bar.update()
                bar.set_postfix(skipped=summary.skipped)
                if summary.skipped > allowed:
                    summary.stopped_early = n < len(todo)
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
    if settings.margin < 0:
        raise AblateError(f"--margin must be >= 0 (0.3 = box side x 1.3), got {settings.margin}")
    if not 0 <= max_skip_fraction <= 1:
        raise AblateError(f"--max-skip-fraction must be in [0, 1], got {max_skip_fraction}")
    if workers < 1:
        raise AblateError(f"--workers must be >= 1, got {workers}")


def _too_many_skipped(summary: PrepareSummary, fraction: float) -> AblateError:
    where = "stopped early: " if summary.stopped_early else ""
    items = summary.no_face[:3] + [f"{k} ({v})" for k, v in list(summary.unreadable.items())[:3]]
    return AblateError(
        f"{where}{summary.skipped} of {summary.videos} videos skipped "
        f"({len(summary.no_face)} without a face, {len(summary.unreadable)} unreadable), "
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


def plan_jobs(videos: str, out: Path, frames_dir: str | None = None) -> list[Job]:
    """One job per video file, its output folder mirroring its path below the videos root."""
    base, files = find_videos(videos)
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
        jobs.append(Job(str(path), key, rel.as_posix()))
    return jobs


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
    """Jobs whose marker says they are done with these settings; other settings -> error."""
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
            f"(e.g. {name}: {old}, now {asdict(settings)}); use another --out, the same "
            "settings, or --overwrite to redo them"
        )
    return done


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


# ---------------------------------------------------------------- running


def _run(jobs: list[Job], settings: Settings, workers: int) -> Iterator[VideoResult]:
    """Results as videos finish; with workers > 1, in worker processes (spawned).

    Closing the iterator early cancels the videos not yet started.
    """
    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            yield prepare_video(job, settings)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init) as pool:
        pending = [pool.submit(prepare_video, job, settings) for job in jobs]
        try:
            for future in as_completed(pending):
                yield future.result()
        finally:
            for future in pending:
                future.cancel()


def _worker_init() -> None:
    cv2.setNumThreads(1)  # one video per process; threads would only contend


def prepare_video(job: Job, settings: Settings) -> VideoResult:
    """Crop the sampled frames of one video, then write its marker (never raises on bad video)."""
    folder = Path(job.out)
    try:
        _remove_ours(folder)
        count = frame_count(job.video)
        wanted = sample_indices(count, settings.frames)
        written, no_face, decoded = _extract(job.video, wanted, folder, settings)
        if decoded < count and decoded <= wanted[-1]:  # the header over-counted: resample
            if decoded == 0:
                raise _Unreadable("no frame could be decoded")
            _remove_ours(folder)
            wanted = sample_indices(decoded, settings.frames)
            written, no_face, decoded = _extract(job.video, wanted, folder, settings)
    except (_Unreadable, cv2.error) as err:
        _remove_ours(folder)
        lines = str(err).strip().splitlines() or [type(err).__name__]
        return VideoResult(job.name, "unreadable", reason=lines[-1].strip())
    folder.mkdir(parents=True, exist_ok=True)
    marker = {
        "video": job.video,
        "frame_count": decoded,
        "settings": asdict(settings),
        "sampled": wanted,
        "written": written,
        "no_face": no_face,
    }
    _write_atomic(folder / MARKER, json.dumps(marker).encode())
    status = "no_face" if not written and settings.detector != "none" else "prepared"
    return VideoResult(job.name, status, len(written), len(no_face))


class _Unreadable(Exception):
    """A video OpenCV cannot open or decode."""


def frame_count(video: str) -> int:
    """Frames in the video: the header's count, or a full decode where it has none."""
    cap = _open(video)
    try:
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if count <= 0:
            count = 0
            while cap.grab():
                count += 1
    finally:
        cap.release()
    if count <= 0:
        raise _Unreadable("no frames")
    return count


def _open(video: str) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(video)
    if not cap.isOpened():
        cap.release()
        raise _Unreadable("OpenCV cannot open it")
    return cap


def sample_indices(count: int, k: int) -> list[int]:
    """`k` frame indices evenly spaced over [0, count) with both ends (all if k is 0 or >= count)."""
    if k <= 0 or k >= count:
        return list(range(count))
    return np.unique(np.linspace(0, count - 1, k).round().astype(int)).tolist()


def _extract(
    video: str, wanted: list[int], folder: Path, settings: Settings
) -> tuple[list[int], list[int], int]:
    """Decode up to the last wanted frame; crop and write each wanted one.

    Returns (indices written, indices without a face, frames decoded).
    Frames are read in order (grab/retrieve), which is exact where seeking is not.
    """
    detector = make_detector(settings.detector)
    todo = set(wanted)
    written, no_face = [], []
    cap = _open(video)
    index = 0
    try:
        while index <= wanted[-1] and cap.grab():
            if index in todo:
                ok, frame = cap.retrieve()
                if not ok or frame is None:
                    break
                crop = face_crop(frame, detector, settings.margin, settings.size)
                if crop is None:
                    no_face.append(index)
                else:
                    _write_png(folder / f"{index:04d}.png", crop)
                    written.append(index)
            index += 1
    finally:
        cap.release()
    return written, no_face, index


# ---------------------------------------------------------------- detection and cropping


_DETECTORS: dict[str, Detector | None] = {}


def make_detector(name: str) -> Detector | None:
    """The face detector `name` (built once per process); None for "none"."""
    if name not in _DETECTORS:
        builders = {"lbp": _lbp_detector, "haar": _haar_detector, "none": lambda: None}
        if name not in builders:
            raise AblateError(f"--detector must be one of {', '.join(DETECTORS)}, got {name!r}")
        _DETECTORS[name] = builders[name]()
    return _DETECTORS[name]


def _lbp_detector() -> Detector:
    """scikit-image's bundled copy of OpenCV's LBP frontal-face cascade."""
    import skimage.data
    from skimage.feature import Cascade

    xml = Path(skimage.data.__file__).parent / "lbpcascade_frontalface_opencv.xml"
    if not xml.is_file():
        raise AblateError(f"{xml} is missing from scikit-image; reinstall scikit-image")
    cascade = Cascade(str(xml))

    def detect(gray: np.ndarray) -> list[Box]:
        side = min(gray.shape)
        found = cascade.detect_multi_scale(
            img=gray,
            scale_factor=1.2,
            step_ratio=1,
            min_size=(MIN_FACE, MIN_FACE),
            max_size=(side, side),
        )
        return [(d["c"], d["r"], d["width"], d["height"]) for d in found]

    return detect


def _haar_detector() -> Detector:
    """OpenCV's Haar cascade, present in OpenCV 4 wheels only."""
    path = Path(getattr(cv2.data, "haarcascades", "")) / "haarcascade_frontalface_default.xml"
    if not hasattr(cv2, "CascadeClassifier") or not path.is_file():
        raise AblateError(
            f"--detector haar needs OpenCV's Haar cascades, which OpenCV {cv2.__version__} "
            "does not ship (OpenCV 5 removed them); use --detector lbp (bundled with "
            "scikit-image) or install opencv-python-headless<5"
        )
    cascade = cv2.CascadeClassifier(str(path))

    def detect(gray: np.ndarray) -> list[Box]:
        found = cascade.detectMultiScale(
            gray, scaleFactor=1.1, minNeighbors=5, minSize=(MIN_FACE, MIN_FACE)
        )
        return [tuple(int(v) for v in box) for box in found]

    return detect


def detect_face(frame: np.ndarray, detector: Detector) -> Box | None:
    """The largest face in a BGR frame, detected on a copy shrunk to DETECT_SIDE."""
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
    scale = min(1.0, DETECT_SIDE / min(gray.shape))
    if scale < 1:
        gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    boxes = detector(gray)
    if not boxes:
        return None
    x, y, w, h = max(boxes, key=lambda b: b[2] * b[3])
    return tuple(int(round(v / scale)) for v in (x, y, w, h))


def square_box(box: Box, margin: float, height: int, width: int) -> Box:
    """The face box grown by `margin`, made square, and moved (or shrunk) into the frame."""
    x, y, w, h = box
    side = min(int(round(max(w, h) * (1 + margin))), height, width)
    cx, cy = x + w / 2, y + h / 2
    left = int(round(min(max(cx - side / 2, 0), width - side)))
    top = int(round(min(max(cy - side / 2, 0), height - side)))
    return left, top, side, side


def centre_box(height: int, width: int) -> Box:
    """The largest centred square: the crop when no detector is used."""
    side = min(height, width)
    return (width - side) // 2, (height - side) // 2, side, side


def face_crop(
    frame: np.ndarray, detector: Detector | None, margin: float, size: int
) -> np.ndarray | None:
    """The `size` x `size` crop of a frame, or None when the detector finds no face."""
    height, width = frame.shape[:2]
    if detector is None:
        x, y, w, h = centre_box(height, width)
    else:
        face = detect_face(frame, detector)
        if face is None:
            return None
        x, y, w, h = square_box(face, margin, height, width)
    crop = frame[y : y + h, x : x + w]
    interpolation = cv2.INTER_AREA if w > size else cv2.INTER_CUBIC
    return cv2.resize(crop, (size, size), interpolation=interpolation)


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
