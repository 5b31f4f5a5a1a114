"""Celeb-DF v2 (`celebdf`) frame trees; the official test list is the test split.

Layouts (`layout=`; auto-detected when exactly one fits), <sub> = Celeb-real |
YouTube-real | Celeb-synthesis, <fd> = frames_dir:
    frames_first     ROOT/<fd>/<sub>/<video>/        (`ablate data prepare --out ROOT/frames`)
    subfolder_first  ROOT/<sub>/<fd>/<video>/        (DeepfakeBench preprocess.py / rearrange.py)
    mtcnn            ROOT/<sub>-mtcnn/<video>/       (DiffusionFake datasets/celeb_df.py)
plus ROOT/List_of_testing_videos.txt, lines "<flag> <sub>/<video>.mp4".
"""

from __future__ import annotations

import re
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
    subfolders,
)
from ablate.data.layouts import Layout, choose

CELEB_REAL = ("Celeb-real", "YouTube-real")
CELEB_FAKE = "Celeb-synthesis"
SUBS = (*CELEB_REAL, CELEB_FAKE)


def _folder_of(layout: str, base: Path, frames_dir: str) -> Callable[[str], Path]:
    if layout == "frames_first":
        return lambda sub: base / frames_dir / sub
    if layout == "subfolder_first":
        return lambda sub: base / sub / frames_dir
    return lambda sub: base / f"{sub}-mtcnn"


def layouts(frames_dir: str) -> list[Layout]:
    def present(name: str) -> Callable[[Path], bool]:
        return lambda base: any(_folder_of(name, base, frames_dir)(s).is_dir() for s in SUBS)

    return [
        Layout("frames_first", f"ROOT/{frames_dir}/<sub>/<video>/ (ablate prepare)",
               present("frames_first")),
        Layout("subfolder_first", f"ROOT/<sub>/{frames_dir}/<video>/ (DeepfakeBench)",
               present("subfolder_first")),
        Layout("mtcnn", "ROOT/<sub>-mtcnn/<video>/ (DiffusionFake)", present("mtcnn")),
    ]


@DATASETS.register("celebdf", "Celeb-DF v2; the official test list is the test split")
def celebdf(
    root: str,
    frames_dir: str = "frames",
    layout: str | None = None,
    test_list: str = "List_of_testing_videos.txt",
    val_fraction: float = 0.1,
    **common: Any,
) -> pd.DataFrame:
    """Celeb-DF v2 frames; videos in the official test list form the test split.

    Layouts: see the module doc. In the test list flag 1 means REAL and 0 means FAKE
    (the reverse of our labels); a flag that contradicts the video's folder is an
    error. Other videos are train, with a seeded `val_fraction` of them moved to val.
    Fake `idX_idY_NNNN` is target video idX_NNNN with the face of identity idY:
    target = Celeb-real/idX_NNNN, source = Celeb-real/idY_NNNN (a video of the
    donor identity; Celeb-DF does not name the exact donor clip), each only if
    its frames exist. video_id: "<sub>/<stem>". identity: the target identity idX
    (reals idX_NNNN and fakes idX_idY_NNNN); empty for YouTube-real. Required split: test.
    """
    base = require_dir(Path(root).expanduser(), "Celeb-DF root")
    sampling = sampling_from("celebdf", common)
    chosen = choose("celebdf", base, layouts(frames_dir), layout)
    folder_of = _folder_of(chosen.name, base, frames_dir)
    tests = _celeb_test_list(base / test_list)
    notes = Notes()
    videos = []
    for sub in SUBS:
        if folder_of(sub).is_dir():
            videos += _celeb_videos(sub, folder_of, tests, notes)
    where = f"{folder_of('<sub>')}/<video stem>/*.png"
    if not videos:
        raise no_videos("celebdf", where)
    found = {v.video_id for v in videos}
    for key in sorted(set(tests) - found):
        notes.add("test-list videos without frames (missing from test)", key)
    assign_val(videos, val_fraction, sampling.seed)
    return build_table("celebdf", videos, sampling, ("test",), where, notes, chosen.name)


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
    for folder in subfolders(folder_of(sub)):
        key = f"{sub}/{folder.name}"
        if key in tests and tests[key] != label:
            raise AblateError(
                f"Celeb-DF test list marks {key} as {'fake' if tests[key] else 'real'} but it is in "
                f"{sub}; the list's first column is 1 for real, 0 for fake"
            )
        split = "test" if key in tests else "train"
        source = target = None
        who = re.match(r"(id\d+)_", folder.name) if sub != "YouTube-real" else None
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
            Video(key, folder, label, split, CELEB_FAKE if label else REAL, source, target,
                  identity=who.group(1) if who else None)
        )
    return videos
