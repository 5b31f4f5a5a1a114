"""Which frames `ablate explain` rebuilds: a seeded, balanced pick from a test split, or
image files given by the user (already face crops, resized as training resizes them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from torch import Tensor

from ablate.core.errors import AblateError
from ablate.data.dataset import decode_image, unit_range
from ablate.data.sources import dataset_overrides
from ablate.evaluate import test_rows


@dataclass
class Frames:
    """N frames of one set: images in [-1, 1], and what is known about them."""

    name: str
    images: Tensor  # [N, 3, S, S]
    paths: list[str]
    labels: np.ndarray | None  # [N] 1 = fake; None for user images
    sources: list[Tensor | None]  # the true source face [3, S, S] where the manifest has one
    targets: list[Tensor | None]


def _unit(pixels: np.ndarray) -> Tensor:
    """uint8 [S, S, 3] -> float [3, S, S] in [-1, 1], as training reads frames."""
    return unit_range(torch.from_numpy(pixels))


def pick_rows(rows: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """n rows, half real and half fake where both exist (the rest from the other label),
    drawn with `seed`; reals first, then fakes, each in manifest order."""
    if n < 1:
        raise AblateError(f"--n must be at least 1, got {n}")
    rng = np.random.default_rng(seed)
    real, fake = rows[rows["label"] == 0], rows[rows["label"] == 1]
    n_real = min(len(real), max(n // 2, n - len(fake)))
    n_fake = min(len(fake), n - n_real)
    picked = [part.iloc[np.sort(rng.choice(len(part), size=k, replace=False))]
              for part, k in ((real, n_real), (fake, n_fake)) if k]
    return pd.concat(picked) if picked else rows.iloc[:0]


def test_frames(cfg: DictConfig, name: str, n: int, seed: int) -> Frames:
    """n frames of test set `name`'s test split (the run's data root for it applies)."""
    size = int(cfg.image_size)
    dataset = test_rows(name, size, overrides=dataset_overrides(cfg, name))
    rows = pick_rows(dataset.rows, n, seed)
    images = torch.stack([_unit(decode_image(str(p), size)) for p in rows["path"]])
    sources, targets = [], []
    for image, (_, row) in zip(images, rows.iterrows(), strict=True):
        for column, out in (("source_path", sources), ("target_path", targets)):
            given = str(row.get(column) or "")
            if int(row["label"]) == 0:  # a real frame is its own source and target
                out.append(image)
            else:
                out.append(None if given in ("", "nan") else _unit(decode_image(given, size)))
    return Frames(name, images, [str(p) for p in rows["path"]],
                  rows["label"].astype(int).to_numpy(), sources, targets)


def image_frames(paths: list[str], size: int) -> Frames:
    """User images (face crops), resized to the run's image size."""
    arrays = []
    for path in paths:
        if not Path(path).is_file():
            raise AblateError(f"--images: {path} is not a file")
        try:
            arrays.append(decode_image(path, size))
        except Exception as err:  # PIL raises several types for an unreadable file
            raise AblateError(f"--images: cannot read {path} as an image "
                              f"({type(err).__name__}); give PNG or JPEG face crops") from None
    images = torch.stack([_unit(a) for a in arrays])
    return Frames("images", images, list(paths), None, [None] * len(paths),
                  [None] * len(paths))
