"""WildDeepfake (`wilddeepfake`): face-frame images from the web, no videos to prepare.

The release (OpenTAI/wild-deepfake) ships four folders of tar archives, real_train,
fake_train, real_test, fake_test; extracted, `fake_test/<n>/fake/<k>/*.png` holds face
sequence k of source video n. The unit of independence is the source video: two face
sequences of one video share its people, scene and compression. So a video here is
`<top>/<n>` with the frames of all its sequences; video AUC, the bootstrap and the
train/val split all work on source videos, and no source video straddles train and val.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ablate.data.adapter_base import (
    DATASETS,
    REAL,
    Notes,
    Video,
    assign_val,
    build_table,
    image_folders,
    list_frames,
    no_videos,
    require_dir,
    sampling_from,
)

WILD_FOLDERS = {
    "real_train": (0, "train"),
    "fake_train": (1, "train"),
    "real_test": (0, "test"),
    "fake_test": (1, "test"),
}


@DATASETS.register("wilddeepfake", "WildDeepfake (real/fake x train/test folders of frames)")
def wilddeepfake(root: str, val_fraction: float = 0.1, **common: Any) -> pd.DataFrame:
    """WildDeepfake frames: labels and splits come from the four top folders.

    Layout: root/{real_train,fake_train,real_test,fake_test}/<n>/.../*.png; every folder
    below <n> holding images is one face sequence of source video n (the archives'
    root/fake_test/<n>/fake/<k>/*.png), and a flat root/fake_test/<n>/*.png is one too.
    video_id "<top>/<n>"; its frames are those of all its sequences, in sequence then
    frame order, and the frame counts apply per source video. No source/target (not a
    paired dataset). A seeded `val_fraction` of train source videos becomes val.
    Required split: test.
    """
    base = require_dir(Path(root).expanduser(), "WildDeepfake root")
    sampling = sampling_from("wilddeepfake", common)
    videos = []
    for name, (label, split) in WILD_FOLDERS.items():
        top = base / name
        if not top.is_dir():
            continue
        sequences: dict[str, list[Path]] = {}
        for folder in image_folders(top):
            parts = folder.relative_to(top).parts
            source = parts[0] if parts else "."  # images right under the top: one video
            sequences.setdefault(source, []).append(folder)
        for source, folders in sorted(sequences.items()):
            frames = [f for folder in folders for f in list_frames(folder)]
            videos.append(
                Video(f"{name}/{source}", top / source, label, split,
                      "fake" if label else REAL, frames=frames)
            )
    where = f"{base}/{{real_train,fake_train,real_test,fake_test}}/<video>/.../*.png"
    if not videos:
        raise no_videos("wilddeepfake", where)
    assign_val(videos, val_fraction, sampling.seed)
    return build_table("wilddeepfake", videos, sampling, ("test",), where, Notes())
