"""DFDC Preview (`dfdc_preview`) frame trees, labelled by the release's dataset.json.

ROOT/dataset.json maps "<top>/.../<name>.mp4" -> {"label": "real"|"fake", "set":
"train"|"test", ...}, <top> being method_A, method_B or original_videos. Layouts
(`layout=`; auto-detected when exactly one fits), <fd> = frames_dir:
    stem           ROOT/<fd>/<name>/*.png                  (prepare, names unique)
    mirror         ROOT/<fd>/<top>/.../<name>/*.png        (`ablate data prepare --out ROOT/frames`)
    deepfakebench  ROOT/<top>/<fd>/<name>/*.png            (DeepfakeBench preprocess.py /
                                                            rearrange.py: `DFDCP/<index>/frames/<vid>`)
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from ablate.core.errors import AblateError
from ablate.data.adapter_base import (
    DATASETS,
    REAL,
    Notes,
    Video,
    assign_val,
    build_table,
    no_videos,
    require_dir,
    sampling_from,
)
from ablate.data.layouts import Layout, choose


def layouts(frames_dir: str, tops: set[str]) -> list[Layout]:
    def mirror(base: Path) -> bool:
        return any((base / frames_dir / t).is_dir() for t in tops)

    return [
        Layout("stem", f"ROOT/{frames_dir}/<video name>/",
               lambda base: (base / frames_dir).is_dir() and not mirror(base)),
        Layout("mirror", f"ROOT/{frames_dir}/<json key without .mp4>/", mirror),
        Layout("deepfakebench", f"ROOT/<method_A|method_B|original_videos>/{frames_dir}/"
               "<video name>/ (DeepfakeBench)",
               lambda base: any((base / t / frames_dir).is_dir() for t in tops)),
    ]


@DATASETS.register("dfdc_preview", "DFDC Preview (dataset.json labels and train/test sets)")
def dfdc_preview(
    root: str,
    frames_dir: str = "frames",
    layout: str | None = None,
    metadata: str = "dataset.json",
    val_fraction: float = 0.1,
    **common: Any,
) -> pd.DataFrame:
    """DFDC Preview frames labelled by the release's dataset.json.

    Layouts: see the module doc. "stem" fails if two json keys share a file name, and
    "deepfakebench" if two keys of one top folder do: use "mirror" then.
    method = the key's first folder (method_A, method_B) for fakes, "real" for reals.
    video_id = the json key without ".mp4". No source/target. A seeded
    `val_fraction` of train videos becomes val. Required split: test.
    """
    base = require_dir(Path(root).expanduser(), "DFDC Preview root")
    sampling = sampling_from("dfdc_preview", common)
    entries = _dfdc_entries(base / metadata)
    tops = {k.split("/")[0] for k in entries if "/" in k}
    chosen = choose("dfdc_preview", base, layouts(frames_dir, tops), layout)
    folder_of = _folder_of(chosen.name, base, frames_dir)
    if chosen.name != "mirror":
        _require_unique_names(entries, by_top=chosen.name == "deepfakebench")
    notes = Notes()
    videos = []
    for key, (label, split) in sorted(entries.items()):
        vid = Path(key).with_suffix("").as_posix()
        folder = folder_of(key)
        if not folder.is_dir():
            notes.add("dataset.json videos without a frame folder (skipped)", str(folder))
            continue
        method = key.split("/")[0] if label and "/" in key else ("fake" if label else REAL)
        videos.append(Video(vid, folder, label, split, method))
    where = f"{folder_of('<top>/<video>.mp4')}/*.png"
    if not videos:
        raise no_videos("dfdc_preview", where)
    assign_val(videos, val_fraction, sampling.seed)
    return build_table("dfdc_preview", videos, sampling, ("test",), where, notes, chosen.name)


def _folder_of(layout: str, base: Path, frames_dir: str) -> Callable[[str], Path]:
    """json key -> its frame folder under `layout`."""
    if layout == "stem":
        return lambda key: base / frames_dir / Path(key).stem
    if layout == "mirror":
        return lambda key: base / frames_dir / Path(key).with_suffix("").as_posix()
    return lambda key: base / key.split("/")[0] / frames_dir / Path(key).stem


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


def _require_unique_names(entries: dict[str, Any], by_top: bool) -> None:
    names = Counter((k.split("/")[0] if by_top else "", Path(k).stem) for k in entries)
    clashes = [n for (_, n), c in names.items() if c > 1]
    if clashes:
        raise AblateError(
            f"DFDC Preview: {len(clashes)} video names repeat in dataset.json (e.g. {clashes[0]}); "
            "extract frames to <frames_dir>/<json key without .mp4>/ and set layout=mirror"
        )
