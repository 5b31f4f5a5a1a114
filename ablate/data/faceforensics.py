"""FaceForensics++ (`ffpp`) and DeepFakeDetection (`dfd`, shipped with FF++) frame trees.

Frame layouts (`layout=`; auto-detected when exactly one fits), <comp> = compression:
    frames         ROOT/<orig|manip>_sequences/<M>/<comp>/<frames_dir>/<video>/*.png
                   (`ablate data prepare --frames-dir frames`; DeepfakeBench
                   preprocessing/preprocess.py writes `frames/` beside each `videos/`)
    diffusionfake  ROOT/<orig|manip>_sequences/<M>/<comp>/<video>/<video>_0000.png
                   (skJack/DiffusionFake README, "Training Data Preparation")
FF++ split lists (JSON lists of [A, B] id pairs), found without settings when exactly
one place holds them: ROOT/splits/{train,val,test}.json (the FF++ repo's `splits/`,
DiffusionFake) or ROOT/{train,val,test}.json (DeepfakeBench rearrange.py reads
`FaceForensics++/train.json`); `splits_dir=DIR` wins.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ablate.core.errors import AblateError
from ablate.data.adapter_base import (
    DATASETS,
    REAL,
    Notes,
    Video,
    as_list,
    build_table,
    no_videos,
    require_dir,
    sampling_from,
    subfolders,
)
from ablate.data.layouts import Layout, choose, holds_image_folders
from ablate.data.manifest import SPLITS

FFPP_METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "FaceShifter")
FFPP_TRAIN_METHODS = FFPP_METHODS[:4]
COMPRESSIONS = ("c23", "c40", "raw")
NOT_VIDEOS = ("videos", "landmarks", "masks", "frames", "frames_all")  # siblings of frames/


def frame_layouts(top: str, compression: str, frames_dir: str) -> list[Layout]:
    """FF++-family frame layouts of one sequences folder (`original_sequences/youtube`)."""
    return [
        Layout(
            "frames",
            f"ROOT/{top}/{compression}/{frames_dir}/<video>/ (ablate prepare, DeepfakeBench)",
            lambda base: (base / top / compression / frames_dir).is_dir(),
        ),
        Layout(
            "diffusionfake",
            f"ROOT/{top}/{compression}/<video>/ (DiffusionFake)",
            lambda base: holds_image_folders(
                base / top / compression, skip=(*NOT_VIDEOS, frames_dir)
            ),
        ),
    ]


def frames_folder(base: Path, top: str, compression: str, frames_dir: str, layout: str) -> Path:
    """Where the per-video frame folders of `top` sit under the chosen layout."""
    folder = base / top / compression
    return folder / frames_dir if layout == "frames" else folder


def _check_compression(compression: str) -> None:
    if compression not in COMPRESSIONS:
        raise AblateError(
            f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}"
        )


# ---------------------------------------------------------------- FaceForensics++


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
    layout: str | None = None,
    **common: Any,
) -> pd.DataFrame:
    """FaceForensics++ frames with official splits and source/target pairing.

    Layouts: see the module doc. Originals are `original_sequences/youtube`, fakes
    `manipulated_sequences/<Method>`; originals A and B and fakes A_B and B_A belong to
    the split whose JSON lists the pair [A, B].

    Source/target: FF++ names a fake `A_B` for *target* video A carrying the face of
    B, so with the default source_is="B" the source (identity donor) frame comes from
    original B and the target frame from original A; source_is="A" swaps them (the
    reading some code uses). Fake frames pair with originals by frame index; when
    that index is missing in the original, the nearest index is used and counted
    in the notes. Real frames: source = target = the frame itself.
    video_id: "original/<vid>" for reals, "<Method>/<A>_<B>" for fakes.
    identity: A (the target original) for real A and every fake A_B, whatever source_is.
    """
    base = require_dir(Path(root).expanduser(), "FaceForensics++ root")
    sampling = sampling_from("ffpp", common)
    _check_compression(compression)
    if source_is not in ("A", "B"):
        raise AblateError(
            f"source_is must be 'A' or 'B' (fake A_B = target A, face of B), got {source_is!r}"
        )
    methods = _ffpp_methods(methods)
    top = "original_sequences/youtube"
    chosen = choose("ffpp", base, frame_layouts(top, compression, frames_dir), layout)
    split_of = _ffpp_splits(_split_folder(base, splits_dir))
    originals = require_dir(
        frames_folder(base, top, compression, frames_dir, chosen.name),
        f"FF++ original frames (compression={compression}, layout={chosen.name})",
    )
    notes = Notes()
    videos = _ffpp_reals(originals, split_of, notes)
    for method in methods:
        folder = require_dir(
            frames_folder(
                base, f"manipulated_sequences/{method}", compression, frames_dir, chosen.name
            ),
            f"FF++ {method} frames",
            f"extract them there, or leave {method} out of methods=[...]",
        )
        videos += _ffpp_fakes(method, folder, originals, split_of, source_is, notes)
    where = (
        f"{originals}/<vid>/ and "
        f"{frames_folder(base, 'manipulated_sequences/<Method>', compression, frames_dir, chosen.name)}"
        "/<A>_<B>/"
    )
    if not videos:
        raise no_videos("ffpp", where)
    return build_table("ffpp", videos, sampling, SPLITS, where, notes, chosen.name)


def _ffpp_methods(methods: Sequence[str] | str) -> list[str]:
    names = as_list(methods)
    by_lower = {m.lower(): m for m in FFPP_METHODS}
    bad = [m for m in names if m.lower() not in by_lower]
    if bad or not names:
        raise AblateError(
            f"unknown FF++ method(s) {bad or names}; valid: {', '.join(FFPP_METHODS)}"
        )
    return [by_lower[m.lower()] for m in names]


def _split_folder(base: Path, splits_dir: str | None) -> Path:
    """splits_dir if given, else the one of ROOT/splits/ and ROOT/ that holds train.json."""
    if splits_dir:
        return Path(splits_dir).expanduser()
    places = {"ROOT/splits/": base / "splits", "ROOT/ (DeepfakeBench)": base}
    found = [name for name, folder in places.items() if (folder / "train.json").is_file()]
    if len(found) == 1:
        return places[found[0]]
    options = " or ".join(f"{name}{{train,val,test}}.json" for name in places)
    if not found:
        raise AblateError(
            f"FF++ split file train.json not found under {base}: put the official "
            f"train/val/test.json (lists of [A, B] id pairs) at {options}, or set splits_dir=DIR"
        )
    raise AblateError(
        f"FF++ split files found in both {base / 'splits'} and {base}; "
        "choose one with --set splits_dir=DIR"
    )


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
    for folder in subfolders(originals):
        split = split_of.get(folder.name)
        if split is None:
            if folder.name not in NOT_VIDEOS:
                notes.add("videos in no split file (skipped)", str(folder))
            continue
        videos.append(
            Video(f"original/{folder.name}", folder, 0, split, REAL, identity=folder.name)
        )
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
    for video in subfolders(folder):
        match = re.fullmatch(r"(\d+)_(\d+)", video.name)
        if not match:
            if video.name not in NOT_VIDEOS:
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
                identity=a,
            )
        )
    return videos


# ---------------------------------------------------------------- DeepFakeDetection


@DATASETS.register("dfd", "Google/Jigsaw DeepFakeDetection (FF++ release), all test")
def dfd(
    root: str,
    compression: str = "c23",
    frames_dir: str = "frames",
    layout: str | None = None,
    **common: Any,
) -> pd.DataFrame:
    """DeepFakeDetection (DFD) frames, as distributed with FaceForensics++; all test.

    Reals in original_sequences/actors, fakes in manipulated_sequences/DeepFakeDetection,
    each in the `frames` or `diffusionfake` layout of the module doc.
    video_id "actors/<video>" or "DeepFakeDetection/<video>". No source/target.
    identity: the target actor id the name starts with (real `01__walking`, fake
    `01_02__walking__X`: actor 01); empty where the name gives none.
    """
    base = require_dir(Path(root).expanduser(), "DFD root")
    sampling = sampling_from("dfd", common)
    _check_compression(compression)
    top = "original_sequences/actors"
    chosen = choose("dfd", base, frame_layouts(top, compression, frames_dir), layout)
    parts = {
        "actors": (top, 0, REAL),
        "DeepFakeDetection": ("manipulated_sequences/DeepFakeDetection", 1, "DeepFakeDetection"),
    }
    videos = []
    for name, (where, label, method) in parts.items():
        folder = require_dir(
            frames_folder(base, where, compression, frames_dir, chosen.name), f"DFD {name} frames"
        )
        for v in subfolders(folder):
            if v.name in NOT_VIDEOS:
                continue
            actor = re.match(r"(\d+)_", v.name)
            videos.append(
                Video(f"{name}/{v.name}", v, label, "test", method,
                      identity=actor.group(1) if actor else None)
            )
    where = f"{frames_folder(base, top, compression, frames_dir, chosen.name)}/<video>/"
    if not videos:
        raise no_videos("dfd", where)
    return build_table("dfd", videos, sampling, ("test",), where, Notes(), chosen.name)
