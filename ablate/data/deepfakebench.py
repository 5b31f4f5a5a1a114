"""DeepfakeBench dataset JSON files -> an `ablate` frame manifest.

Users who already ran DeepfakeBench's preprocessing have its face frames on disk and
one JSON file per dataset describing them; this reads those files as they are
instead of asking for our own layout.

Shape, as written by DeepfakeBench `preprocessing/rearrange.py` and read by
`training/dataset/abstract_dataset.py` (`collect_img_and_label_for_one_dataset`):

    {dataset: {label: {split: {video: {"label": label, "frames": [path, ...]}}}}}

with one more level, the compression (`c23`, `c40`, `raw`; there is no `c0`),
between split and video for the FF++ family only (`FaceForensics++`, `FF-DF`,
`FF-F2F`, `FF-FS`, `FF-NT`, `FaceShifter`, `DeepFakeDetection`). A video entry
may carry `"masks"` too (ignored). The per-method files (`FF-DF.json`, ...) hold
the method's fakes *and* `FF-real`; importing several of them keeps each real
frame once. The label that counts is the video entry's own `"label"`, as in
DeepfakeBench. Splits are train/val/test as DeepfakeBench wrote them; it lists
some videos in several splits (DFD, UADFV and DeeperForensics reals in all three,
Celeb-DF and DFDCP val = test): they are kept in each and counted in the notes
(`--split test` imports only one).

Frame paths are relative to DeepfakeBench's `rgb_dir` (`--root` here), with `\\`
or `/` separators and an optional leading `./` (as `_resolve_rgb_path` in
abstract_dataset.py reads them), or absolute. A frame's index is the last run
of digits in its file name (DeepfakeBench sorts by the integer file stem).

FF++ fakes `A_B` are paired with originals frame by frame, as the `ffpp` adapter
does (`FramePairer`): target = original A, source = original B (identity donor;
`source_is="A"` swaps them). Originals are the `FF-real` videos of the imported
files, any split, same compression.

Read (SCLBD/DeepfakeBench): preprocessing/rearrange.py, training/dataset/
abstract_dataset.py, training/config/train_config.yaml (`label_dict`),
training/config/detector/xception.yaml (`compression: c23`, dataset names).
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ablate.core.errors import AblateError
from ablate.data.adapters import REAL, FramePairer, Notes, _frame_index
from ablate.data.manifest import COLUMNS, SPLITS, save_manifest

COMPRESSIONS = ("c23", "c40", "raw")
# datasets whose split level holds a compression level (abstract_dataset.py)
FF_POOL = frozenset(
    {"FaceForensics++", "FF-DF", "FF-F2F", "FF-FS", "FF-NT", "FaceShifter", "DeepFakeDetection"}
)
DATASET_NAMES = {  # DeepfakeBench dataset -> our adapter name, where one matches
    "FaceForensics++": "ffpp",
    "FF-DF": "ffpp",
    "FF-F2F": "ffpp",
    "FF-FS": "ffpp",
    "FF-NT": "ffpp",
    "FaceShifter": "ffpp",
    "DeepFakeDetection": "dfd",
    "Celeb-DF-v2": "celebdf",
    "DFDCP": "dfdc_preview",
}
# DeepfakeBench label -> (our label, our method); train_config.yaml's label_dict
LABELS: dict[str, tuple[int, str]] = {
    "FF-real": (0, REAL),
    "FF-DF": (1, "Deepfakes"),
    "FF-F2F": (1, "Face2Face"),
    "FF-FS": (1, "FaceSwap"),
    "FF-NT": (1, "NeuralTextures"),
    "FF-FH": (1, "FaceShifter"),
    "FF-SH": (1, "FaceShifter"),
    "DFD_real": (0, REAL),
    "DFD_fake": (1, "DeepFakeDetection"),
    "CelebDFv1_real": (0, REAL),
    "CelebDFv1_fake": (1, "Celeb-synthesis"),
    "CelebDFv2_real": (0, REAL),
    "CelebDFv2_fake": (1, "Celeb-synthesis"),
    "DFDCP_Real": (0, REAL),
    "DFDCP_FakeA": (1, "method_A"),
    "DFDCP_FakeB": (1, "method_B"),
    "DFDC_Real": (0, REAL),
    "DFDC_Fake": (1, "fake"),
    "DF_real": (0, REAL),
    "DF_fake": (1, "DF-VAE"),
    "UADFV_Real": (0, REAL),
    "UADFV_Fake": (1, "fake"),
    "roop_Real": (0, REAL),
    "roop_Fake": (1, "roop"),
}
FF_FAKES = frozenset({"FF-DF", "FF-F2F", "FF-FS", "FF-NT", "FF-FH", "FF-SH"})
FF_REAL = "FF-real"
SHAPE = '{dataset: {label: {split: {[compression:] {video: {"label": ..., "frames": [...]}}}}}}'


@dataclass
class Entry:
    """One video of one JSON file, frames resolved to absolute paths."""

    json_path: Path
    dataset: str  # DeepfakeBench's name
    label_name: str
    split: str
    video: str
    frames: list[tuple[str, str]]  # (as written in the JSON, absolute path)


def import_deepfakebench(
    jsons: Sequence[str | Path],
    root: str | Path,
    out: str | Path,
    compression: str = "c23",
    splits: Sequence[str] | None = None,
    source_is: str = "B",
) -> pd.DataFrame:
    """Read DeepfakeBench JSON files, check every frame exists, write the manifest to `out`.

    Nothing is written unless every listed frame exists (the write itself is atomic)."""
    if compression not in COMPRESSIONS:
        raise AblateError(
            f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}"
        )
    if source_is not in ("A", "B"):
        raise AblateError(f"source_is must be 'A' or 'B', got {source_is!r}")
    bad = [s for s in splits or () if s not in SPLITS]
    if bad:
        raise AblateError(f"unknown split(s) {', '.join(bad)}; choose from {', '.join(SPLITS)}")
    if not jsons:
        raise AblateError("give at least one DeepfakeBench dataset JSON file")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise AblateError(f"--root {base} is not a folder (DeepfakeBench's rgb_dir)")
    entries: list[Entry] = []
    for path in jsons:
        found = read_json(Path(path).expanduser(), base.resolve(), compression)
        entries += [e for e in found if splits is None or e.split in splits]
    for path, listed in _grouped(entries).items():
        _require_frames(path, listed, base)
    df = build_rows(entries, source_is)
    save_manifest(df, out)
    df.attrs["manifest"] = str(Path(out).expanduser().resolve())
    return df


# ---------------------------------------------------------------- reading


def read_json(path: Path, root: Path, compression: str) -> list[Entry]:
    """Every video entry of one DeepfakeBench JSON file (FF++ family: one compression)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise AblateError(f"DeepfakeBench JSON {path} does not exist") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise AblateError(f"{path} is not valid JSON: {' '.join(str(err).split())}") from None
    entries = []
    for dataset, labels in _mapping(data, path, "the top level").items():
        where = dataset
        for label_key, split_map in _mapping(labels, path, where).items():
            for split, videos in _mapping(split_map, path, f"{where}/{label_key}").items():
                here = f"{where}/{label_key}/{split}"
                if split not in SPLITS:
                    raise _shape(path, f"{here}: split {split!r} is not one of {'/'.join(SPLITS)}")
                videos = _mapping(videos, path, here)
                if dataset in FF_POOL and videos:
                    if compression not in videos:
                        raise AblateError(
                            f"{path}: {here} has no compression {compression!r} "
                            f"(has: {', '.join(sorted(videos))}); choose one with --compression"
                        )
                    here = f"{here}/{compression}"
                    videos = _mapping(videos[compression], path, here)
                for video, info in videos.items():
                    entries.append(_entry(path, root, dataset, label_key, split, video, info, here))
    return entries


def _entry(
    path: Path,
    root: Path,
    dataset: str,
    label_key: str,
    split: str,
    video: str,
    info: Any,
    where: str,
) -> Entry:
    here = f"{where}/{video}"
    info = _mapping(info, path, here)
    frames = info.get("frames")
    if not isinstance(frames, list) or not all(isinstance(f, str) and f for f in frames):
        raise _shape(path, f"{here}: 'frames' must be a list of frame paths")
    label = info.get("label", label_key)
    if not isinstance(label, str) or label not in LABELS:
        raise AblateError(
            f"{path}: {here} has unknown label {label!r}; known labels: {', '.join(LABELS)}"
        )
    resolved = [(f, _resolve(f, root)) for f in frames]
    return Entry(path, dataset, str(label), split, str(video), resolved)


def _mapping(value: Any, path: Path, where: str) -> dict:
    if not isinstance(value, dict):
        raise _shape(path, f"{where} is a {type(value).__name__}, expected an object")
    return value


def _shape(path: Path, what: str) -> AblateError:
    return AblateError(f"{path} is not a DeepfakeBench dataset JSON ({what}); expected {SHAPE}")


def _resolve(frame: str, root: Path) -> str:
    """DeepfakeBench's `_resolve_rgb_path`: `\\` -> `/`, drop `./`, relative to rgb_dir."""
    text = frame.replace("\\", "/")
    if text.startswith("./"):
        text = text[2:]
    if os.path.isabs(text):
        return os.path.normpath(text)
    return os.path.normpath(os.path.join(root, text.lstrip("/")))


def _require_frames(path: Path, entries: list[Entry], root: Path) -> None:
    missing = [(text, p) for e in entries for text, p in e.frames if not os.path.isfile(p)]
    if missing:
        total = sum(len(e.frames) for e in entries)
        text, absolute = missing[0]
        raise AblateError(
            f"{path}: {len(missing)} of {total} listed frames do not exist, first {text} "
            f"(looked at {absolute}); --root must be DeepfakeBench's rgb_dir ({root})"
        )


# ---------------------------------------------------------------- rows


def build_rows(entries: list[Entry], source_is: str = "B") -> pd.DataFrame:
    """One row per listed frame; FF++ fakes paired with their originals by frame index."""
    notes = Notes()
    pairer = FramePairer(notes)
    originals = _original_folders(entries)
    rows: list[dict[str, Any]] = []
    for entry in entries:
        label, method = LABELS[entry.label_name]
        dataset = DATASET_NAMES.get(entry.dataset, entry.dataset)
        video_id = f"{entry.label_name}/{entry.video}"
        source = target = None
        pair = label == 1 and entry.label_name in FF_FAKES
        if pair:
            source, target = _partners(entry, originals, source_is, notes)
        for index, path in _indexed(entry.frames):
            if not label:
                src = tgt = path
            elif pair:
                src = pairer.pair(source, index, "source", video_id)
                tgt = pairer.pair(target, index, "target", video_id)
            else:
                src = tgt = None
            rows.append(
                {
                    "path": path,
                    "label": label,
                    "video_id": video_id,
                    "dataset": dataset,
                    "split": entry.split,
                    "method": method,
                    "frame": index,
                    "source_path": src,
                    "target_path": tgt,
                    "identity": _identity(entry),
                }
            )
    df = pd.DataFrame(rows, columns=[*COLUMNS, "identity"])
    if df.empty:
        raise AblateError("the DeepfakeBench JSON files list no frames (for these splits)")
    df = _dedupe(df, notes)
    df = df.sort_values(["dataset", "split", "label", "video_id", "frame"], kind="stable")
    return notes.attach(df.reset_index(drop=True), "deepfakebench")


def _identity(entry: Entry) -> str | None:
    """The bootstrap's cluster, as the folder adapters set it: FF++ original A for real A and
    every fake A_B; Celeb-DF the target identity idX of idX_NNNN / idX_idY_NNNN."""
    if entry.label_name == FF_REAL or entry.label_name in FF_FAKES:
        found = re.fullmatch(r"(\d+)(?:_\d+)?", entry.video)
    else:
        found = re.match(r"(id\d+)_", entry.video)
    return found.group(1) if found else None


def _indexed(frames: list[tuple[str, str]]) -> list[tuple[int, str]]:
    """(frame index, absolute path) in frame order; index from the file name."""
    names = sorted(frames, key=lambda f: Path(f[1]).name)
    return sorted((_frame_index(Path(p).name, pos), p) for pos, (_, p) in enumerate(names))


def _original_folders(entries: list[Entry]) -> dict[tuple[str, str], Path]:
    """(DeepfakeBench dataset, original video) -> folder of its frames, from FF-real."""
    folders = {}
    for e in entries:
        if e.label_name == FF_REAL and e.frames:
            folders.setdefault((e.dataset, e.video), Path(e.frames[0][1]).parent)
    return folders


def _partners(
    entry: Entry, originals: dict[tuple[str, str], Path], source_is: str, notes: Notes
) -> tuple[Path | None, Path | None]:
    match = re.fullmatch(r"(\d+)_(\d+)", entry.video)
    if not match:
        notes.add("FF++ fakes not named <A>_<B> (no source/target)", entry.video)
        return None, None
    a, b = match.groups()
    source_id, target_id = (b, a) if source_is == "B" else (a, b)
    source = originals.get((entry.dataset, source_id))
    target = originals.get((entry.dataset, target_id))
    for role, vid, folder in (("source", source_id, source), ("target", target_id, target)):
        if folder is None:
            notes.add(
                f"FF++ fakes whose {role} original is in no imported FF-real list (no {role}_path)",
                f"{entry.label_name}/{entry.video} needs {vid}",
            )
    return source, target


def _dedupe(df: pd.DataFrame, notes: Notes) -> pd.DataFrame:
    twice = df.duplicated(["dataset", "split", "path"])
    if twice.any():
        notes.add(
            "frames listed more than once per split (kept once; FF-real is in every FF-*.json)",
            str(df.loc[twice, "path"].iloc[0]),
            int(twice.sum()),
        )
        df = df[~twice]
    splits = df.groupby(["dataset", "video_id"])["split"].nunique()
    for dataset, video_id in splits[splits > 1].index:
        notes.add(
            "videos DeepfakeBench lists in several splits (kept in each; --split picks one)",
            f"{dataset}/{video_id}",
        )
    return df


def _grouped(entries: list[Entry]) -> dict[Path, list[Entry]]:
    """Entries by JSON file, in file order."""
    out: dict[Path, list[Entry]] = defaultdict(list)
    for e in entries:
        out[e.json_path].append(e)
    return out
