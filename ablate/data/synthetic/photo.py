"""The photo identity: one synthetic person cut from a real photograph.

Optionally, each dataset's train split gets one identity made from
`skimage.data.astronaut()` (public domain, ships with scikit-image: no download),
moved like a head with the same scene and motion as the procedural faces.
"""

from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np

from ablate.data.synthetic.scene import Landmarks, Scene, State, head_pose

PHOTO = "astro"  # identity name of the astronaut-photo identity

# Astronaut (Eileen Collins, NASA, public domain): landmarks read off the 512x512 image.
_ASTRO_POINTS = np.array([[202.0, 101.0], [246.0, 102.0], [225.0, 145.0]])
_ASTRO_CENTRE, _ASTRO_AXES = (224.0, 122.0), (44.0, 54.0)
_ASTRO_FACE = 0.22  # face half-width as a fraction of the frame, like the procedural faces


@lru_cache(maxsize=4)
def _astronaut(size: int) -> np.ndarray:
    """The photo, pre-blurred for the downscaling affine warp to `size` (anti-aliasing)."""
    # imported here: photo_available() turns any failure, a missing skimage.data included,
    # into "build without the photo identity"
    from skimage import data

    img = data.astronaut().astype(np.float32) / 255.0
    shrink = _ASTRO_AXES[0] / (_ASTRO_FACE * size)
    return cv2.GaussianBlur(img, (0, 0), 0.45 * shrink) if shrink > 1 else img


def photo_available() -> bool:
    """True if the astronaut photo loads from the installed scikit-image (no network)."""
    try:
        _astronaut(64)
        return True
    except Exception:  # noqa: BLE001 - any failure means: build without the photo identity
        return False


def render_photo(scene: Scene, state: State, size: int, flip: bool) -> tuple[np.ndarray, Landmarks]:
    """One frame of the astronaut identity: crop/rotate/scale the photo like a moving head."""
    cx, cy, sc, ang = head_pose(scene, state)
    k = size * sc * _ASTRO_FACE / _ASTRO_AXES[0]  # output pixels per photo pixel
    c, s = math.cos(ang) * k, math.sin(ang) * k
    fx = -1.0 if flip else 1.0
    m = np.array([[c * fx, -s, 0.0], [s * fx, c, 0.0]])
    m[:, 2] = np.array([cx * size, cy * size]) - m[:, :2] @ np.array(_ASTRO_CENTRE)
    img = cv2.warpAffine(
        _astronaut(size), m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    )
    pts = _ASTRO_POINTS @ m[:, :2].T + m[:, 2]
    if flip:
        pts = pts[[1, 0, 2]]  # keep "left eye" the left one in the image
    centre = tuple(float(x) for x in m[:, :2] @ np.array(_ASTRO_CENTRE) + m[:, 2])
    lm = Landmarks(pts, centre, (_ASTRO_AXES[0] * k, _ASTRO_AXES[1] * k), ang)
    return img * np.asarray(scene.white_balance, dtype=np.float32), lm
