"""DiffSwap (`diffswap`): real and fake face images in a simple layout; all test.

DiffSwap has no single official release layout (papers build their test set from the
DiffSwap code), and what people hold is often loose images. So both forms read:
    root/real/<video>/*.png   root/fake/<video>/*.png    a sub-folder groups one video
    root/real/*.png           root/fake/*.png            each loose image its own video
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from ablate.core.errors import AblateError
from ablate.data.adapter_base import (
    DATASETS,
    REAL,
    Notes,
    Video,
    build_table,
    loose_images,
    no_videos,
    require_dir,
    sampling_from,
    subfolders,
)


@DATASETS.register("diffswap", "DiffSwap face swaps, real/ and fake/ folders, all test")
def diffswap(root: str, **common: Any) -> pd.DataFrame:
    """DiffSwap frames; all test.

    root/real (label 0) and root/fake (label 1): each sub-folder is one video (its
    images directly inside), each image directly in real/ or fake/ is a video of one
    frame. video_id "real/<video>" (or "real/<image stem>"). No source/target.
    """
    base = require_dir(Path(root).expanduser(), "DiffSwap root")
    sampling = sampling_from("diffswap", common)
    videos = []
    for name, label in (("real", 0), ("fake", 1)):
        folder = require_dir(
            base / name, f"DiffSwap {name} frames (layout root/{{real,fake}}/<video>/ or images)"
        )
        method = "diffswap" if label else REAL
        videos += [Video(f"{name}/{v.name}", v, label, "test", method) for v in subfolders(folder)]
        videos += [
            Video(f"{name}/{stem}", folder, label, "test", method, frames=frames)
            for stem, frames in loose_images(folder)
        ]
    where = f"{base}/{{real,fake}}/<video>/*.png or {base}/{{real,fake}}/*.png"
    if not videos:
        raise no_videos("diffswap", where)
    dupes = sorted(i for i, n in Counter(v.video_id for v in videos).items() if n > 1)
    if dupes:
        raise AblateError(
            f"DiffSwap: {dupes[0]} is both a folder and an image name under {base}; "
            "rename one of them so each video id is unique"
        )
    return build_table("diffswap", videos, sampling, ("test",), where, Notes())
