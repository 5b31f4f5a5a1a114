"""Dataset-layout adapters: folders of extracted face frames -> a manifest table.

Every adapter reads the layout *after* face extraction: one folder per video
holding that video's face crops as images (png/jpg/jpeg/bmp/webp). A frame's
index is the last run of digits in its file name (`0042.png`, `frame_42.jpg`),
else its position in name order. Extraction scripts disagree on the name of the
frames folder ("frames", "images", "faces", ...), hence the `frames_dir` setting.

Settings shared by all adapters (see `Sampling`):
    frames_per_video       frames kept per train video, evenly spaced (paper: 270)
    frames_per_video_eval  frames kept per val/test video (paper: 100)
    frames_per_real_video, frames_per_fake_video
                           per-label overrides for every split (released code: 50 / 16)
    fake_real_ratio        None keeps all; a number r subsamples fakes (seeded) so that
                           fakes <= r * reals in each split of balance_splits (released
                           code: 1.0, train only)
    balance_splits         splits that fake_real_ratio balances (default: train only; val
                           and test keep every sampled frame, as in the released code)
    seed                   for fake subsampling and val selection
    splits                 splits to keep; each must be non-empty (default: the
                           adapter's own required splits, extra ones kept if found)
    preset                 "paper" or "official_code": sampling defaults above;
                           explicit settings win over the preset

None for a frame count keeps every frame. Nothing is dropped silently: what an
adapter skips is counted in `df.attrs["notes"]` (examples in
`df.attrs["note_examples"]`) and logged.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ablate.data.manifest import COLUMNS, SPLITS, save_manifest
from ablate.errors import AblateError
from ablate.registry import Registry

log = logging.getLogger(__name__)

DATASETS = Registry("dataset")

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})
REAL = "real"  # method name of every real frame
PRESETS: dict[str, dict[str, Any]] = {
    # NeurIPS paper text: 270 train / 100 val-test frames per video, all fakes kept (~4x reals)
    "paper": {"frames_per_video": 270, "frames_per_video_eval": 100, "fake_real_ratio": None},
    # released code: 50 frames per real and 16 per fake video, balanced 1:1 on train only
    "official_code": {
        "frames_per_real_video": 50,
        "frames_per_fake_video": 16,
        "fake_real_ratio": 1.0,
    },
}


# ---------------------------------------------------------------- shared settings


@dataclass(frozen=True)
class Sampling:
    """How many frames to keep per video and how to balance fakes against reals."""

    frames_per_video: int | None = 270
    frames_per_video_eval: int | None = 100
    frames_per_real_video: int | None = None
    frames_per_fake_video: int | None = None
    fake_real_ratio: float | None = None
    balance_splits: tuple[str, ...] = ("train",)
    seed: int = 0
    splits: tuple[str, ...] | None = None

    def frames(self, split: str, label: int) -> int | None:
        """Frames to keep for one video: a per-label override, else the split's count."""
        override = self.frames_per_fake_video if label else self.frames_per_real_video
        if override is not None:
            return override
        return self.frames_per_video if split == "train" else self.frames_per_video_eval


def sampling_from(adapter: str, settings: dict[str, Any]) -> Sampling:
    """Shared settings (after an optional preset) -> Sampling; unknown names fail loudly."""
    settings = dict(settings)
    preset = settings.pop("preset", None)
    merged: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise AblateError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
        merged.update(PRESETS[preset])
    known = {f.name for f in fields(Sampling)}
    unknown = sorted(set(settings) - known)
    if unknown:
        own = [a for a in DATASETS.get(adapter).arguments() if a != "root"]
        raise AblateError(
            f"dataset {adapter!r} has no setting(s) {', '.join(unknown)}; "
            f"it takes: {', '.join(sorted(own + sorted(known) + ['preset']))}"
        )
    merged.update(settings)
    for key in (
        "frames_per_video",
        "frames_per_video_eval",
        "frames_per_real_video",
        "frames_per_fake_video",
    ):
        merged[key] = _count_or_none(key, merged.get(key, getattr(Sampling, key)))
    ratio = merged.get("fake_real_ratio")
    if ratio is not None and (not isinstance(ratio, int | float) or ratio <= 0):
        raise AblateError(f"fake_real_ratio must be a positive number or null, got {ratio!r}")
    if merged.get("splits") is not None:
        merged["splits"] = tuple(_split_names(merged["splits"]))
    if merged.get("balance_splits") is not None:
        merged["balance_splits"] = tuple(_split_names(merged["balance_splits"]))
    return Sampling(**merged)


def _count_or_none(key: str, value: Any) -> int | None:
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "all")):
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise AblateError(f"{key} must be a positive integer or null (all frames), got {value!r}")
    return value


def _split_names(value: Any) -> list[str]:
    names = _as_list(value)
    bad = [s for s in names if s not in SPLITS]
    if bad or not names:
        raise AblateError(f"splits must be a list drawn from {', '.join(SPLITS)}, got {value!r}")
    return names


def _as_list(value: Any) -> list[str]:
    """A list setting given as a list, tuple, or comma-separated string (CLI --set)."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


# ---------------------------------------------------------------- notes


class Notes:
    """Counts of what an adapter skipped or approximated, with a few examples each."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = defaultdict(list)

    def add(self, kind: str, example: str, n: int = 1) -> None:
        self.counts[kind] += n
        if len(self.examples[kind]) < 5:
            self.examples[kind].append(example)

    def attach(self, df: pd.DataFrame, dataset: str) -> pd.DataFrame:
        df.attrs["notes"] = dict(self.counts)
        df.attrs["note_examples"] = dict(self.examples)
        for line in format_notes(df):
            log.warning("%s: %s", dataset, line)
        return df


def format_notes(df: pd.DataFrame) -> list[str]:
    """One line per note an adapter attached to its table."""
    examples = df.attrs.get("note_examples", {})
    return [
        f"{kind}: {n} (e.g. {', '.join(examples.get(kind, []))})"
        for kind, n in df.attrs.get("notes", {}).items()
    ]


# ---------------------------------------------------------------- frames and pairing


def list_frames(folder: str | Path) -> list[tuple[int, str]]:
    """(frame index, absolute path) of the images directly in `folder`, in frame order."""
    try:
        names = [e.name for e in os.scandir(folder) if e.is_file()]
    except (FileNotFoundError, NotADirectoryError):
        return []
    images = sorted(n for n in names if Path(n).suffix.lower() in IMAGE_EXTENSIONS)
    indexed = [(_frame_index(n, pos), n) for pos, n in enumerate(images)]
    folder = os.path.abspath(folder)
    return [(i, os.path.join(folder, n)) for i, n in sorted(indexed)]


def _frame_index(name: str, position: int) -> int:
    digits = re.findall(r"\d+", Path(name).stem)
    return int(digits[-1]) if digits else position


def sample_evenly(items: Sequence, k: int | None) -> list:
    """`k` items evenly spaced over the sequence (all of them if k is None or >= len)."""
    if k is None or k >= len(items):
        return list(items)
    picks = np.unique(np.linspace(0, len(items) - 1, k).round().astype(int))
    return [items[i] for i in picks]


class FramePairer:
    """Finds the partner video's frame for a fake frame: same index, else the nearest."""

    def __init__(self, notes: Notes) -> None:
        self.notes = notes
        self._cache: dict[str, tuple[list[int], list[str]]] = {}

    def frames(self, folder: Path | None) -> tuple[list[int], list[str]]:
        if folder is None:
            return [], []
        key = str(folder)
        if key not in self._cache:
            frames = list_frames(folder)
            self._cache[key] = ([i for i, _ in frames], [p for _, p in frames])
        return self._cache[key]

    def pair(self, folder: Path | None, index: int, role: str, fake: str) -> str | None:
        """Path of the partner frame for frame `index` of `fake`, or None if none exist."""
        indices, paths = self.frames(folder)
        if not indices:
            return None
        pos = bisect.bisect_left(indices, index)
        if pos < len(indices) and indices[pos] == index:
            return paths[pos]
        near = min(
            (p for p in (pos - 1, pos) if 0 <= p < len(indices)),
            key=lambda p: abs(indices[p] - index),
        )
        self.notes.add(
            f"fake frames paired with the nearest {role} frame (same index absent)",
            f"{fake}#{index}->{indices[near]}",
        )
        return paths[near]


# ---------------------------------------------------------------- videos -> table


@dataclass
class Video:
    """One video folder with everything its rows share."""

    video_id: str
    folder: Path
    label: int
    split: str
    method: str
    source: Path | None = None  # partner video folders (fakes only, where known)
    target: Path | None = None


def build_table(
    dataset: str,
    videos: Iterable[Video],
    sampling: Sampling,
    required: Sequence[str],
    layout: str,
    notes: Notes,
) -> pd.DataFrame:
    """Sample frames of every video, pair fakes, balance, and check required splits."""
    pairer = FramePairer(notes)
    rows: list[dict[str, Any]] = []
    for video in videos:
        rows.extend(_video_rows(dataset, video, sampling, pairer, notes))
    df = pd.DataFrame(rows, columns=COLUMNS)
    if sampling.splits is not None:
        df = df[df["split"].isin(sampling.splits)]
    df = _balance(df, sampling, notes)
    _require_splits(dataset, df, sampling.splits or required, layout)
    df = df.sort_values(["split", "label", "video_id", "frame"], kind="stable")
    return notes.attach(df.reset_index(drop=True), dataset)


def _video_rows(
    dataset: str, video: Video, sampling: Sampling, pairer: FramePairer, notes: Notes
) -> list[dict[str, Any]]:
    frames = list_frames(video.folder)
    if not frames:
        notes.add("video folders without frame images (skipped)", str(video.folder))
        return []
    rows = []
    fake = video.label == 1
    if fake and video.source is not None and not pairer.frames(video.source)[0]:
        notes.add("fakes whose source video has no frames (no source_path)", video.video_id)
    if fake and video.target is not None and not pairer.frames(video.target)[0]:
        notes.add("fakes whose target video has no frames (no target_path)", video.video_id)
    for index, path in sample_evenly(frames, sampling.frames(video.split, video.label)):
        if fake:
            source = pairer.pair(video.source, index, "source", video.video_id)
            target = pairer.pair(video.target, index, "target", video.video_id)
        else:
            source = target = path
        rows.append(
            {
                "path": path,
                "label": video.label,
                "video_id": video.video_id,
                "dataset": dataset,
                "split": video.split,
                "method": video.method,
                "frame": index,
                "source_path": source,
                "target_path": target,
            }
        )
    return rows


def _balance(df: pd.DataFrame, sampling: Sampling, notes: Notes) -> pd.DataFrame:
    """Subsample fakes per balanced split so that fakes <= ratio * reals (seeded, row level);
    other splits keep every sampled frame."""
    ratio = sampling.fake_real_ratio
    if ratio is None or df.empty:
        return df
    keep = []
    for split, part in df.groupby("split", sort=True):
        if split not in sampling.balance_splits:
            keep.append(part)
            continue
        fakes = part[part["label"] == 1]
        n_real = int((part["label"] == 0).sum())
        allowed = int(round(ratio * n_real))
        if n_real == 0:
            notes.add("splits with no real frames (not balanced)", str(split))
        elif len(fakes) > allowed:
            notes.add(
                f"fake frames dropped to reach fake:real = {ratio:g}",
                f"{split}: {len(fakes)}->{allowed}",
                len(fakes) - allowed,
            )
            drop = fakes.sample(n=len(fakes) - allowed, random_state=sampling.seed).index
            part = part.drop(drop)
        keep.append(part)
    return pd.concat(keep)


def _require_splits(dataset: str, df: pd.DataFrame, required: Iterable[str], layout: str) -> None:
    for split in required:
        if not (df["split"] == split).any():
            raise AblateError(
                f"dataset {dataset!r}: no {split} frames found; expected frame folders at "
                f"{layout} (or choose other splits with splits=[...])"
            )


def _assign_val(videos: list[Video], fraction: float, seed: int) -> None:
    """Move a seeded `fraction` of train videos to val (datasets without an official val)."""
    if not 0 <= fraction < 1:
        raise AblateError(f"val_fraction must be in [0, 1), got {fraction!r}")
    train = sorted((v for v in videos if v.split == "train"), key=lambda v: v.video_id)
    random.Random(seed).shuffle(train)
    for video in train[: int(round(fraction * len(train)))]:
        video.split = "val"


def _require_dir(path: Path, what: str, hint: str = "") -> Path:
    if not path.is_dir():
        raise AblateError(f"{what} not found: expected a folder at {path}{hint and '; ' + hint}")
    return path


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir())


def _leaf_video_folders(folder: Path) -> list[Path]:
    """Every folder below `folder` that directly holds at least one image."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        if any(Path(f).suffix.lower() in IMAGE_EXTENSIONS for f in filenames):
            found.append(Path(dirpath))
    return found


def _no_videos(dataset: str, layout: str) -> AblateError:
    return AblateError(f"dataset {dataset!r}: no video folders found; expected {layout}")


# ---------------------------------------------------------------- FaceForensics++

FFPP_METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "FaceShifter")
FFPP_TRAIN_METHODS = FFPP_METHODS[:4]
COMPRESSIONS = ("c23", "c40", "raw")


@DATASETS.register(
    "ffpp",
    "FaceForensics++ originals + manipulations, official JSON splits, fakes paired with "
    "their source/target originals frame by frame",
)
def ffpp(
    root: str,
    compression: str = "c23",
    methods: Sequence[str] = FFPP_TRAIN_METHODS,
    frames_dir: str = "frames",
    source_is: str = "B",
    splits_dir: str | None = None,
    **common: Any,
) -> pd.DataFrame:
    """FaceForensics++ frames with official splits and source/target pairing.

    Layout (<comp> = compression, <fd> = frames_dir):
        root/original_sequences/youtube/<comp>/<fd>/<vid>/*.png           reals, vid = "000"
        root/manipulated_sequences/<Method>/<comp>/<fd>/<A>_<B>/*.png     fakes, "000_003"
        root/splits/{train,val,test}.json   (or splits_dir/...)  official FF++ splits:
            a JSON list of [A, B] id pairs; originals A and B and fakes A_B and B_A
            belong to that split.

    Source/target: FF++ names a fake `A_B` for *target* video A carrying the face of
    B, so with the default source_is="B" the source (identity donor) frame comes from
    original B and the target frame from original A; source_is="A" swaps them (the
    reading some code uses). Fake frames pair with originals by frame index; when
    that index is missing in the original, the nearest index is used and counted
    in the notes. Real frames: source = target = the frame itself.
    video_id: "original/<vid>" for reals, "<Method>/<A>_<B>" for fakes.
    """
    base = _require_dir(Path(root).expanduser(), "FaceForensics++ root")
    sampling = sampling_from("ffpp", common)
    if compression not in COMPRESSIONS:
        raise AblateError(
            f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}"
        )
    if source_is not in ("A", "B"):
        raise AblateError(
            f"source_is must be 'A' or 'B' (fake A_B = target A, face of B), got {source_is!r}"
        )
    methods = _ffpp_methods(methods)
    split_of = _ffpp_splits(Path(splits_dir).expanduser() if splits_dir else base / "splits")
    originals = _require_dir(
        base / "original_sequences" / "youtube" / compression / frames_dir,
        f"FF++ original frames (compression={compression}, frames_dir={frames_dir})",
    )
    notes = Notes()
    videos = _ffpp_reals(originals, split_of, notes)
    for method in methods:
        folder = _require_dir(
            base / "manipulated_sequences" / method / compression / frames_dir,
            f"FF++ {method} frames",
            f"extract them there, or leave {method} out of methods=[...]",
        )
        videos += _ffpp_fakes(method, folder, originals, split_of, source_is, notes)
    layout = (
        f"{base}/original_sequences/youtube/{compression}/{frames_dir}/<vid>/ and "
        f"{base}/manipulated_sequences/<Method>/{compression}/{frames_dir}/<A>_<B>/"
    )
    if not videos:
        raise _no_videos("ffpp", layout)
    return build_table("ffpp", videos, sampling, SPLITS, layout, notes)


def _ffpp_methods(methods: Sequence[str] | str) -> list[str]:
    names = _as_list(methods)
    by_lower = {m.lower(): m for m in FFPP_METHODS}
    bad = [m for m in names if m.lower() not in by_lower]
    if bad or not names:
        raise AblateError(
            f"unknown FF++ method(s) {bad or names}; valid: {', '.join(FFPP_METHODS)}"
        )
    return [by_lower[m.lower()] for m in names]


def _ffpp_splits(folder: Path) -> dict[str, str]:
    """Original video id -> split, from the official train/val/test JSON pair lists."""
    split_of: dict[str, str] = {}
    for split in SPLITS:
        path = folder / f"{split}.json"
        if not path.is_file():
            raise AblateError(
                f"FF++ split file {path} not found; put the official train/val/test.json "
                "(lists of [A, B] id pairs) there or set splits_dir"
            )
        for vid in _ffpp_pair_ids(path):
            if split_of.setdefault(vid, split) != split:
                raise AblateError(
                    f"FF++ video {vid} is in both {split_of[vid]}.json and {path.name}"
                )
    return split_of


def _ffpp_pair_ids(path: Path) -> list[str]:
    try:
        pairs = json.loads(path.read_text())
        if not isinstance(pairs, list) or not all(
            isinstance(p, list) and len(p) == 2 for p in pairs
        ):
            raise ValueError("not a list of pairs")
        ids = [str(v) for pair in pairs for v in pair]
    except (ValueError, TypeError) as err:
        raise AblateError(
            f"{path} is not an FF++ split file (JSON list of [A, B] pairs): {err}"
        ) from None
    return ids


def _ffpp_reals(originals: Path, split_of: dict[str, str], notes: Notes) -> list[Video]:
    videos = []
    for folder in _subfolders(originals):
        split = split_of.get(folder.name)
        if split is None:
            notes.add("videos in no split file (skipped)", str(folder))
            continue
        videos.append(Video(f"original/{folder.name}", folder, 0, split, REAL))
    return videos


def _ffpp_fakes(
    method: str,
    folder: Path,
    originals: Path,
    split_of: dict[str, str],
    source_is: str,
    notes: Notes,
) -> list[Video]:
    videos = []
    for video in _subfolders(folder):
        match = re.fullmatch(r"(\d+)_(\d+)", video.name)
        if not match:
            notes.add("fake folders not named <A>_<B> (skipped)", str(video))
            continue
        a, b = match.groups()
        split = split_of.get(a)
        if split is None or split_of.get(b) != split:
            notes.add(
                "fakes whose originals are in no common split (skipped)", f"{method}/{video.name}"
            )
            continue
        source, target = (b, a) if source_is == "B" else (a, b)
        videos.append(
            Video(
                f"{method}/{video.name}",
                video,
                1,
                split,
                method,
                originals / source,
                originals / target,
            )
        )
    return videos


# ---------------------------------------------------------------- Celeb-DF v2

CELEB_REAL = ("Celeb-real", "YouTube-real")
CELEB_FAKE = "Celeb-synthesis"


@DATASETS.register("celebdf", "Celeb-DF v2; the official test list is the test split")
def celebdf(
    root: str,
    frames_dir: str = "frames",
    layout: str = "frames_first",
    test_list: str = "List_of_testing_videos.txt",
    val_fraction: float = 0.1,
    **common: Any,
) -> pd.DataFrame:
    """Celeb-DF v2 frames; videos in the official test list form the test split.

    Layout (<fd> = frames_dir, <sub> = Celeb-real | YouTube-real | Celeb-synthesis):
        layout="frames_first"    root/<fd>/<sub>/<video stem>/*.png   (default)
        layout="subfolder_first" root/<sub>/<fd>/<video stem>/*.png
        root/List_of_testing_videos.txt   lines "<flag> <sub>/<stem>.mp4"

    In that list flag 1 means REAL and 0 means FAKE (the reverse of our labels);
    a flag that contradicts the video's folder is an error. Other videos are
    train, with a seeded `val_fraction` of them moved to val.
    Fake `idX_idY_NNNN` is target video idX_NNNN with the face of identity idY:
    target = Celeb-real/idX_NNNN, source = Celeb-real/idY_NNNN (a video of the
    donor identity; Celeb-DF does not name the exact donor clip), each only if
    its frames exist. video_id: "<sub>/<stem>". Required split: test.
    """
    base = _require_dir(Path(root).expanduser(), "Celeb-DF root")
    sampling = sampling_from("celebdf", common)
    folder_of = _celeb_layout(base, frames_dir, layout)
    tests = _celeb_test_list(base / test_list)
    notes = Notes()
    videos = []
    for sub in (*CELEB_REAL, CELEB_FAKE):
        if folder_of(sub).is_dir():
            videos += _celeb_videos(sub, folder_of, tests, notes)
    where = f"{folder_of('<sub>')}/<video stem>/*.png"
    if not videos:
        raise _no_videos("celebdf", where)
    found = {v.video_id for v in videos}
    for key in sorted(set(tests) - found):
        notes.add("test-list videos without frames (missing from test)", key)
    _assign_val(videos, val_fraction, sampling.seed)
    return build_table("celebdf", videos, sampling, ("test",), where, notes)


def _celeb_layout(base: Path, frames_dir: str, layout: str):
    if layout == "frames_first":
        return lambda sub: base / frames_dir / sub
    if layout == "subfolder_first":
        return lambda sub: base / sub / frames_dir
    raise AblateError(f"layout must be 'frames_first' or 'subfolder_first', got {layout!r}")


def _celeb_test_list(path: Path) -> dict[str, int]:
    """'<sub>/<stem>' -> label in OUR convention (the file's 1 = real becomes 0)."""
    if not path.is_file():
        raise AblateError(
            f"Celeb-DF test list not found at {path}; copy List_of_testing_videos.txt there"
        )
    tests = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in ("0", "1"):
            raise AblateError(
                f"{path}:{n}: expected '<1 real|0 fake> <sub>/<video>.mp4', got {line!r}"
            )
        key = str(Path(parts[1]).with_suffix("").as_posix())
        tests[key] = 1 - int(parts[0])
    return tests


def _celeb_videos(sub: str, folder_of, tests: dict[str, int], notes: Notes) -> list[Video]:
    label = 1 if sub == CELEB_FAKE else 0
    videos = []
    for folder in _subfolders(folder_of(sub)):
        key = f"{sub}/{folder.name}"
        if key in tests and tests[key] != label:
            raise AblateError(
                f"Celeb-DF test list marks {key} as {'fake' if tests[key] else 'real'} but it is in "
                f"{sub}; the list's first column is 1 for real, 0 for fake"
            )
        split = "test" if key in tests else "train"
        source = target = None
        match = re.fullmatch(r"(id\d+)_(id\d+)_(\d+)", folder.name)
        if label and match:
            x, y, n = match.groups()
            real = folder_of("Celeb-real")
            target, source = real / f"{x}_{n}", real / f"{y}_{n}"
            target = target if target.is_dir() else None
            source = source if source.is_dir() else None
            if source is None or target is None:
                notes.add("fakes whose source/target real video is absent (left empty)", key)
        videos.append(
            Video(key, folder, label, split, CELEB_FAKE if label else REAL, source, target)
        )
    return videos


# ---------------------------------------------------------------- WildDeepfake

WILD_FOLDERS = {
    "real_train": (0, "train"),
    "fake_train": (1, "train"),
    "real_test": (0, "test"),
    "fake_test": (1, "test"),
}


@DATASETS.register("wilddeepfake", "WildDeepfake (real/fake x train/test folders of frames)")
def wilddeepfake(root: str, val_fraction: float = 0.1, **common: Any) -> pd.DataFrame:
    """WildDeepfake frames: labels and splits come from the four top folders.

    Assumed layout of the extracted archives:
        root/{real_train,fake_train,real_test,fake_test}/<video>/*.png
    A video is any folder below one of those that directly holds images, so the
    archives' nested form root/fake_test/<n>/fake/<k>/*.png works too (video_id
    "fake_test/<n>/fake/<k>"). No source/target (not a paired dataset). A seeded
    `val_fraction` of train videos becomes val. Required split: test.
    """
    base = _require_dir(Path(root).expanduser(), "WildDeepfake root")
    sampling = sampling_from("wilddeepfake", common)
    videos = []
    for name, (label, split) in WILD_FOLDERS.items():
        if (base / name).is_dir():
            for folder in _leaf_video_folders(base / name):
                vid = folder.relative_to(base).as_posix()
                videos.append(Video(vid, folder, label, split, "fake" if label else REAL))
    where = f"{base}/{{real_train,fake_train,real_test,fake_test}}/<video>/*.png"
    if not videos:
        raise _no_videos("wilddeepfake", where)
    _assign_val(videos, val_fraction, sampling.seed)
    return build_table("wilddeepfake", videos, sampling, ("test",), where, Notes())


# ---------------------------------------------------------------- DFDC Preview


@DATASETS.register("dfdc_preview", "DFDC Preview (dataset.json labels and train/test sets)")
def dfdc_preview(
    root: str,
    frames_dir: str = "frames",
    layout: str = "stem",
    metadata: str = "dataset.json",
    val_fraction: float = 0.1,
    **common: Any,
) -> pd.DataFrame:
    """DFDC Preview frames labelled by the release's dataset.json.

    root/dataset.json maps "<dir>/.../<name>.mp4" -> {"label": "real"|"fake",
    "set": "train"|"test", ...}. Frames of that video:
        layout="stem"    root/<frames_dir>/<name>/*.png            (default)
        layout="mirror"  root/<frames_dir>/<dir>/.../<name>/*.png  (the json key)
    "stem" fails if two json keys share a file name: use "mirror" then.
    method = the key's first folder (method_A, method_B) for fakes, "real" for reals.
    video_id = the json key without ".mp4". No source/target. A seeded
    `val_fraction` of train videos becomes val. Required split: test.
    """
    base = _require_dir(Path(root).expanduser(), "DFDC Preview root")
    sampling = sampling_from("dfdc_preview", common)
    entries = _dfdc_entries(base / metadata)
    if layout not in ("stem", "mirror"):
        raise AblateError(f"layout must be 'stem' or 'mirror', got {layout!r}")
    frames = base / frames_dir
    if layout == "stem":
        _require_unique_stems(entries)
    notes = Notes()
    videos = []
    for key, (label, split) in sorted(entries.items()):
        vid = Path(key).with_suffix("").as_posix()
        folder = frames / (Path(key).stem if layout == "stem" else vid)
        if not folder.is_dir():
            notes.add("dataset.json videos without a frame folder (skipped)", str(folder))
            continue
        method = key.split("/")[0] if label and "/" in key else ("fake" if label else REAL)
        videos.append(Video(vid, folder, label, split, method))
    where = f"{frames}/<video {'name' if layout == 'stem' else 'json key'}>/*.png"
    if not videos:
        raise _no_videos("dfdc_preview", where)
    _assign_val(videos, val_fraction, sampling.seed)
    return build_table("dfdc_preview", videos, sampling, ("test",), where, notes)


def _dfdc_entries(path: Path) -> dict[str, tuple[int, str]]:
    """json key -> (label, split), with the file's vocabulary checked."""
    if not path.is_file():
        raise AblateError(f"DFDC Preview metadata not found at {path}; it ships as dataset.json")
    try:
        raw = json.loads(path.read_text())
        entries = {k: (v["label"], v["set"]) for k, v in raw.items()}
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise AblateError(
            f"{path} is not DFDC Preview metadata (key -> {{'label', 'set'}}): {err!r}"
        ) from None
    out = {}
    for key, (label, split) in entries.items():
        if label not in ("real", "fake") or split not in ("train", "test"):
            raise AblateError(
                f"{path}: {key} has label={label!r} set={split!r}; "
                "expected label real/fake and set train/test"
            )
        out[key] = (int(label == "fake"), split)
    return out


def _require_unique_stems(entries: dict[str, Any]) -> None:
    stems = Counter(Path(k).stem for k in entries)
    clashes = [s for s, n in stems.items() if n > 1]
    if clashes:
        raise AblateError(
            f"DFDC Preview: {len(clashes)} video names repeat in dataset.json (e.g. {clashes[0]}); "
            "extract frames to <frames_dir>/<json key without .mp4>/ and set layout=mirror"
        )


# ---------------------------------------------------------------- DeepFakeDetection


@DATASETS.register("dfd", "Google/Jigsaw DeepFakeDetection (FF++ release), all test")
def dfd(
    root: str, compression: str = "c23", frames_dir: str = "frames", **common: Any
) -> pd.DataFrame:
    """DeepFakeDetection (DFD) frames, as distributed with FaceForensics++; all test.

    Layout (<comp> = compression, <fd> = frames_dir):
        root/original_sequences/actors/<comp>/<fd>/<video>/*.png                 reals
        root/manipulated_sequences/DeepFakeDetection/<comp>/<fd>/<video>/*.png   fakes
    video_id "actors/<video>" or "DeepFakeDetection/<video>". No source/target.
    """
    base = _require_dir(Path(root).expanduser(), "DFD root")
    sampling = sampling_from("dfd", common)
    if compression not in COMPRESSIONS:
        raise AblateError(
            f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}"
        )
    parts = {
        "actors": (base / "original_sequences" / "actors", 0, REAL),
        "DeepFakeDetection": (
            base / "manipulated_sequences" / "DeepFakeDetection",
            1,
            "DeepFakeDetection",
        ),
    }
    videos = []
    for name, (top, label, method) in parts.items():
        folder = _require_dir(top / compression / frames_dir, f"DFD {name} frames")
        videos += [Video(f"{name}/{v.name}", v, label, "test", method) for v in _subfolders(folder)]
    where = f"{base}/original_sequences/actors/{compression}/{frames_dir}/<video>/"
    if not videos:
        raise _no_videos("dfd", where)
    return build_table("dfd", videos, sampling, ("test",), where, Notes())


# ---------------------------------------------------------------- DiffSwap


@DATASETS.register("diffswap", "DiffSwap face swaps, simple real/fake layout, all test")
def diffswap(root: str, **common: Any) -> pd.DataFrame:
    """DiffSwap frames in a simple layout this toolkit defines; all test.

    DiffSwap has no single official release layout (papers build their test set
    from the DiffSwap code), so arrange extracted face frames as:
        root/real/<video>/*.png     label 0
        root/fake/<video>/*.png     label 1
    video_id "real/<video>" or "fake/<video>". No source/target.
    """
    base = _require_dir(Path(root).expanduser(), "DiffSwap root")
    sampling = sampling_from("diffswap", common)
    videos = []
    for name, label in (("real", 0), ("fake", 1)):
        folder = _require_dir(
            base / name, f"DiffSwap {name} frames (layout root/{{real,fake}}/<video>/)"
        )
        videos += [
            Video(f"{name}/{v.name}", v, label, "test", "diffswap" if label else REAL)
            for v in _subfolders(folder)
        ]
    where = f"{base}/{{real,fake}}/<video>/*.png"
    if not videos:
        raise _no_videos("diffswap", where)
    return build_table("diffswap", videos, sampling, ("test",), where, Notes())


# ---------------------------------------------------------------- entry point


def build_manifest(adapter: str, root: str, out: str, **settings: Any) -> pd.DataFrame:
    """Run adapter `adapter` on `root`, write the manifest to `out`, and return the table."""
    df = DATASETS.build(adapter, root=root, **settings)
    save_manifest(df, out)
    df.attrs["manifest"] = str(Path(out).expanduser().resolve())
    return df


def adapter_settings(adapter: str) -> dict[str, Any]:
    """Every setting an adapter takes, with its default (own ones, then shared ones)."""
    own = {k: v for k, v in DATASETS.get(adapter).arguments().items() if k != "root"}
    shared = {f.name: f.default for f in fields(Sampling)}
    return {**own, **shared, "preset": None}


def build_from_config(config: Mapping[str, Any]) -> pd.DataFrame:
    """Build from a configs/data/*.yaml mapping: name, root, manifest, then settings."""
    settings = dict(config)
    name, root, out = (settings.pop(k, None) for k in ("name", "root", "manifest"))
    if not name or not root or not out:
        raise AblateError(
            "a data config needs name, root and manifest set "
            f"(got name={name!r}, root={root!r}, manifest={out!r})"
        )
    return build_manifest(name, root, out, **settings)
