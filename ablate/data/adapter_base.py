"""What every dataset adapter shares: sampling settings, notes, frame listing, pairing, the table.

Every adapter reads the layout *after* face extraction: one folder per video
holding that video's face crops as images (png/jpg/jpeg/bmp/webp). A frame's
index is the last run of digits in its file name (`0042.png`, `000_003_0042.png`),
else its position in name order.

Settings shared by all adapters (see `Sampling`):
    frames_per_video       frames kept per train video, evenly spaced (paper: 270)
    frames_per_video_eval  frames kept per val/test video (paper: 100)
    frames_per_real_video, frames_per_fake_video
                           per-label overrides for every split (released code: 50 / 16)
    fake_real_ratio        None keeps all; a number r subsamples fakes (seeded) so that
                           fakes <= r * reals in each split of balance_splits
    balance_splits         splits that fake_real_ratio balances (default: train only)
    seed                   for fake subsampling and val selection
    splits                 splits to keep; each must be non-empty (default: the
                           adapter's own required splits, extra ones kept if found)
    preset                 a named frame-count protocol (PRESETS); explicit settings win

None for a frame count keeps every frame. Nothing is dropped silently: what an
adapter skips is counted in `df.attrs["notes"]` (examples in
`df.attrs["note_examples"]`) and logged; `df.attrs["protocol"]` records the preset
and the resolved counts, which `build_manifest` stores beside the manifest.
"""

from __future__ import annotations

import bisect
import logging
import os
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ablate.core.errors import AblateError
from ablate.data.manifest import COLUMNS, OPTIONAL_COLUMNS, SPLITS
from ablate.registry import Registry

log = logging.getLogger(__name__)

DATASETS = Registry("dataset")

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})
REAL = "real"  # method name of every real frame
PRESETS: dict[str, dict[str, Any]] = {
    # DeepfakeBench: 32 frames per video in every split (training/config frame_num), no balancing
    "deepfakebench": {"frames_per_video": 32, "frames_per_video_eval": 32, "fake_real_ratio": None},
    # NeurIPS paper text: 270 train / 100 val-test frames per video, all fakes kept (~4x reals)
    "paper": {"frames_per_video": 270, "frames_per_video_eval": 100, "fake_real_ratio": None},
    # released code: 50 frames per real and 16 per fake video, balanced 1:1 on train only
    "official_code": {
        "frames_per_real_video": 50,
        "frames_per_fake_video": 16,
        "fake_real_ratio": 1.0,
    },
}
FEWER_FRAMES = "videos with fewer frames than asked (all their frames kept)"


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
    preset: str | None = None  # which named protocol gave the defaults (recorded, not used)

    def frames(self, split: str, label: int) -> int | None:
        """Frames to keep for one video: a per-label override, else the split's count."""
        override = self.frames_per_fake_video if label else self.frames_per_real_video
        if override is not None:
            return override
        return self.frames_per_video if split == "train" else self.frames_per_video_eval

    def record(self) -> dict[str, Any]:
        """The preset and the resolved counts, as JSON-able values (the manifest's protocol)."""
        out = asdict(self)
        for key in ("balance_splits", "splits"):
            out[key] = list(out[key]) if out[key] is not None else None
        return out


def sampling_from(adapter: str, settings: dict[str, Any]) -> Sampling:
    """Shared settings (after an optional preset) -> Sampling; unknown names fail loudly."""
    settings = dict(settings)
    preset = settings.pop("preset", None)
    merged: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise AblateError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
        merged.update(PRESETS[preset])
    known = {f.name for f in fields(Sampling)} - {"preset"}
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
        merged["splits"] = tuple(split_names(merged["splits"]))
    if merged.get("balance_splits") is not None:
        merged["balance_splits"] = tuple(split_names(merged["balance_splits"]))
    return Sampling(**merged, preset=preset)


def _count_or_none(key: str, value: Any) -> int | None:
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "all")):
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise AblateError(f"{key} must be a positive integer or null (all frames), got {value!r}")
    return value


def split_names(value: Any) -> list[str]:
    names = as_list(value)
    bad = [s for s in names if s not in SPLITS]
    if bad or not names:
        raise AblateError(f"splits must be a list drawn from {', '.join(SPLITS)}, got {value!r}")
    return names


def as_list(value: Any) -> list[str]:
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


def is_image(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def list_frames(folder: str | Path) -> list[tuple[int, str]]:
    """(frame index, absolute path) of the images directly in `folder`, in frame order."""
    try:
        names = [e.name for e in os.scandir(folder) if e.is_file()]
    except (FileNotFoundError, NotADirectoryError):
        return []
    images = sorted(n for n in names if is_image(n))
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
    """One video (a folder of frames, or frames given directly) with what its rows share."""

    video_id: str
    folder: Path
    label: int
    split: str
    method: str
    source: Path | None = None  # partner video folders (fakes only, where known)
    target: Path | None = None
    identity: str | None = None  # the bootstrap's cluster (FF++ target id, Celeb-DF idX)
    frames: list[tuple[int, str]] | None = None  # None: the images directly in `folder`
    dataset: str | None = None  # None: the adapter's name (DF40 writes one per method)
    family: str | None = None  # generator family (DF40: FS, FR, EFS, FE)

    def frame_list(self) -> list[tuple[int, str]]:
        return self.frames if self.frames is not None else list_frames(self.folder)


def build_table(
    dataset: str,
    videos: Iterable[Video],
    sampling: Sampling,
    required: Sequence[str],
    layout: str,
    notes: Notes,
    layout_name: str | None = None,
) -> pd.DataFrame:
    """Sample frames of every video, pair fakes, balance, and check required splits."""
    pairer = FramePairer(notes)
    rows: list[dict[str, Any]] = []
    for video in videos:
        rows.extend(_video_rows(dataset, video, sampling, pairer, notes))
    df = pd.DataFrame(rows, columns=COLUMNS + list(OPTIONAL_COLUMNS))
    if sampling.splits is not None:
        df = df[df["split"].isin(sampling.splits)]
    df = _balance(df, sampling, notes)
    _require_splits(dataset, df, sampling.splits or required, layout)
    df = df.sort_values(["split", "label", "video_id", "frame"], kind="stable")
    df = df.reset_index(drop=True)
    df.attrs["protocol"] = {"adapter": dataset, "layout": layout_name, **sampling.record()}
    return notes.attach(df, dataset)


def _video_rows(
    dataset: str, video: Video, sampling: Sampling, pairer: FramePairer, notes: Notes
) -> list[dict[str, Any]]:
    frames = video.frame_list()
    if not frames:
        notes.add("video folders without frame images (skipped)", str(video.folder))
        return []
    rows = []
    fake = video.label == 1
    if fake and video.source is not None and not pairer.frames(video.source)[0]:
        notes.add("fakes whose source video has no frames (no source_path)", video.video_id)
    if fake and video.target is not None and not pairer.frames(video.target)[0]:
        notes.add("fakes whose target video has no frames (no target_path)", video.video_id)
    asked = sampling.frames(video.split, video.label)
    if asked is not None and len(frames) < asked:
        notes.add(FEWER_FRAMES, f"{video.video_id}: {len(frames)} < {asked}")
    for index, path in sample_evenly(frames, asked):
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
                "dataset": video.dataset or dataset,
                "split": video.split,
                "method": video.method,
                "frame": index,
                "source_path": source,
                "target_path": target,
                "identity": video.identity,
                "family": video.family,
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


# ---------------------------------------------------------------- small helpers


def assign_val(videos: list[Video], fraction: float, seed: int) -> None:
    """Move a seeded `fraction` of train videos to val (datasets without an official val).
    A Video is the unit, so one video's frames never straddle train and val."""
    if not 0 <= fraction < 1:
        raise AblateError(f"val_fraction must be in [0, 1), got {fraction!r}")
    train = sorted((v for v in videos if v.split == "train"), key=lambda v: v.video_id)
    random.Random(seed).shuffle(train)
    for video in train[: int(round(fraction * len(train)))]:
        video.split = "val"


def require_dir(path: Path, what: str, hint: str = "") -> Path:
    if not path.is_dir():
        raise AblateError(f"{what} not found: expected a folder at {path}{hint and '; ' + hint}")
    return path


def subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir())


def image_folders(folder: Path) -> list[Path]:
    """Every folder at or below `folder` that directly holds at least one image."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        if any(is_image(f) for f in filenames):
            found.append(Path(dirpath))
    return found


def loose_images(folder: Path) -> list[tuple[str, list[tuple[int, str]]]]:
    """Images directly in `folder`, each its own one-frame video: (file stem, frames)."""
    return [
        (Path(path).stem, [(index, path)])
        for index, path in list_frames(folder)
    ]


def no_videos(dataset: str, layout: str) -> AblateError:
    return AblateError(f"dataset {dataset!r}: no video folders found; expected {layout}")
