"""One image or video -> the crops a detector scores, cut exactly as its training frames were.

Why it reuses `ablate data prepare`'s code rather than its own: a crop must come out of the
same frame sampling (`sample_indices`), detection, track choice and smoothing
(`track_faces`, `find_faces`) and cutting (`cut_crops`, `cut_crop`) as the crops the run
trained on, and one copy of that code cannot drift from the other. Detection runs on one
thread, as prepare runs it, so the boxes (float sums) match prepare's to the bit.

The crops then become tensors as `ablate.data.dataset` makes them from a stored crop: the
RGB crop resized to the input size with PIL's bicubic filter (`decode_image`; PNG crops are
lossless, so the stored crop is the crop), then uint8 -> [-1, 1] channels first.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

from ablate.data import decode
from ablate.data.dataset import unit_range
from ablate.data.faces import Face, make_detector
from ablate.data.prepare.run import one_thread
from ablate.data.prepare.settings import Settings
from ablate.data.prepare.video import (
    cut_crop,
    cut_crops,
    find_faces,
    sample_indices,
    track_faces,
)

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Crop:
    """One frame to score: its index in the video (0 for an image), the face box the crop
    was cut around (frame pixels, None without detection) and the crop, RGB uint8."""

    index: int
    box: Box | None
    pixels: np.ndarray  # (size, size, 3)


@dataclass(frozen=True)
class Cut:
    """What one file gives: its crops, cut as they are taken (a long video's crops are never
    all in memory at once), and how many frames were sampled (misses included)."""

    crops: Iterator[Crop]
    sampled: int


def video_crops(path: str, settings: Settings) -> Cut:
    """The crops of `settings.frames` evenly spaced frames (0: all), as prepare cuts them."""
    wanted = sample_indices(decode.frame_count(path), settings.frames)
    with one_thread():
        faces, cache = find_faces(path, wanted, settings)
    boxes = {i: _box(face) for i, face in zip(wanted, faces, strict=True)}
    crops = (Crop(i, boxes[i], crop) for i, crop in cut_crops(path, wanted, faces, cache, settings)
             if crop is not None)  # None: degenerate landmarks, a miss as in prepare
    return Cut(crops, len(wanted))


def image_crops(path: str, settings: Settings) -> Cut:
    """An image is a one-frame video: the same detection and cut, on frame 0."""
    with Image.open(path) as img:  # upright as shown: phone photos store their rotation
        rgb = np.asarray(ImageOps.exif_transpose(img).convert("RGB"), dtype=np.uint8).copy()
    detector = make_detector(settings.detector)
    face = None
    if detector is not None:
        with one_thread():
            (face,), _ = track_faces([(0, rgb)], detector, settings)
        if face is None:
            return Cut(iter(()), 1)
    crop = cut_crop(rgb, face, settings)
    return Cut(iter(() if crop is None else [Crop(0, _box(face), crop)]), 1)


def _box(face: Face | None) -> Box | None:
    return None if face is None else tuple(round(float(v), 2) for v in face.box)


def to_batch(crops: list[np.ndarray], size: int) -> torch.Tensor:
    """RGB uint8 crops -> [N, 3, size, size] float in [-1, 1], as the training data loader
    turns a stored crop into an input (`decode_image`, then `unit_range`)."""
    arrays = []
    for crop in crops:
        if crop.shape[:2] != (size, size):
            crop = np.asarray(
                Image.fromarray(crop).resize((size, size), Image.Resampling.BICUBIC),
                dtype=np.uint8)
        arrays.append(crop)
    pixels = torch.from_numpy(np.stack(arrays))  # [N, S, S, 3] uint8
    return unit_range(pixels)
