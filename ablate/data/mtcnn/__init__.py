"""MTCNN face detection (Zhang et al. 2016), vendored so `pip install ablate` brings it.

Why vendored: facenet-pytorch, whose MTCNN ablate used, pins an old torch, so it could
only be installed by hand with `--no-deps`. This package is its detector re-written
(nets.py, cascade.py) with its weights converted to one safetensors file
(scripts/convert_mtcnn_weights.py; MIT, LICENSE-facenet-pytorch.md next to it). Given
the same image it gives the same faces (tests/test_mtcnn.py checks against
facenet-pytorch itself), so crops prepared with either are the same crops.

    detector = MTCNN(min_face=24)
    found = detector(rgb)  # found.boxes (N, 4), found.probs (N,), found.points (N, 5, 2)
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np

from ablate.data.mtcnn.cascade import FACTOR, MIN_FACE, THRESHOLDS, Found, detect
from ablate.data.mtcnn.nets import Nets, check_weights, load_nets

WEIGHTS = Path(__file__).with_name("mtcnn.safetensors")
LICENSE = Path(__file__).with_name("LICENSE-facenet-pytorch.md")
# What crops cut with these weights record as their detector (prepared.json's
# detector_version): the same text facenet-pytorch's own MTCNN recorded, so crops
# prepared before the move stay comparable with those prepared after it.
ORIGIN = "facenet-pytorch 2.6.0"
# sha256 of mtcnn.safetensors as scripts/convert_mtcnn_weights.py writes it
WEIGHTS_SHA256 = "28d6aa90d461be902a3f48fa6ce3a039fecc2b1d1f74a2d10c0d0e15ffce8c81"

__all__ = ["FACTOR", "LICENSE", "MIN_FACE", "MTCNN", "ORIGIN", "THRESHOLDS", "WEIGHTS",
           "Found", "Nets", "version"]


class MTCNN:
    """The three nets, loaded once, and the cascade's settings; call it on an RGB image."""

    def __init__(
        self,
        min_face: int = MIN_FACE,
        thresholds: tuple[float, float, float] = THRESHOLDS,
        factor: float = FACTOR,
        weights: Path = WEIGHTS,
    ) -> None:
        self.nets = load_nets(weights)
        self.min_face, self.thresholds, self.factor = min_face, thresholds, factor

    def __call__(self, rgb: np.ndarray) -> Found:
        """The faces in an RGB uint8 (H, W, 3) image, largest first."""
        return detect(self.nets, rgb, self.min_face, self.thresholds, self.factor)


@functools.cache
def version(weights: Path = WEIGHTS) -> str:
    """The detector crops record: ORIGIN for the weights shipped (the detector's output, not
    where its code lives, decides whether crops compare); any other weights, by their sha256."""
    sha = hashlib.sha256(check_weights(weights).read_bytes()).hexdigest()
    return ORIGIN if sha == WEIGHTS_SHA256 else f"mtcnn sha256:{sha[:16]}"
