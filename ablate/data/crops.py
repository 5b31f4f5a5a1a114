"""Where a face crop lies in its frame: similarity alignment on five landmarks, or a square box.

Why this shape:
    - "similarity" is DeepfakeBench's `img_align_crop`: the five landmarks are mapped by
      the least-squares similarity transform (rotation, uniform scale, shift; Umeyama,
      as skimage's SimilarityTransform) onto the ArcFace 5-point template, laid out in a
      `size` crop with a margin so that the template spans 1/scale of the side; the frame
      is warped with it (bilinear, black outside the frame). Rotated or tilted faces come
      out upright, eyes always at the same pixels.
    - "none" is the classic MTCNN box crop: the box side times `scale`, squared around
      the box centre, shifted to lie inside the frame (shrunk to its short side if
      larger), resized. No rotation.
    - Both are functions of (frame, face, settings) only, so a fake frame cut with its
      original's face gives the same geometry as the original's crop (matching crops).
"""

from __future__ import annotations

import cv2
import numpy as np
from skimage.transform import SimilarityTransform

from ablate.data.faces import Face

ALIGNS = ("similarity", "none")
# ArcFace's 5-point template for a 112 x 112 crop (InsightFace's 96 x 112 one shifted
# 8 px right), the one DeepfakeBench aligns to: left eye, right eye, nose tip, left and
# right mouth corner, (x, y) in pixels.
TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ]
)

Box = tuple[int, int, int, int]  # left, top, width, height in frame pixels


def template(size: int, scale: float) -> np.ndarray:
    """(5, 2) target landmark positions in a `size` crop whose side is `scale` x the face's."""
    return (TEMPLATE_112 / 112 * size + size * (scale - 1) / 2) / scale


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray | None:
    """(2, 3) least-squares similarity mapping points src (N, 2) onto dst (N, 2); None if degenerate."""
    if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        found = SimilarityTransform.from_estimate(src, dst)
        if not found:
            return None
        params = found.params
    else:  # pragma: no cover - older scikit-image
        found = SimilarityTransform()
        if not found.estimate(src, dst):
            return None
        params = found.params
    if not np.all(np.isfinite(params)) or abs(np.linalg.det(params[:2, :2])) < 1e-12:
        return None
    return params[:2].astype(np.float64)


def align_matrix(landmarks: np.ndarray, size: int, scale: float) -> np.ndarray | None:
    """(2, 3) frame -> crop transform putting the (5, 2) landmarks on the template."""
    return similarity(np.asarray(landmarks, dtype=np.float64), template(size, scale))


def square_box(box: tuple[float, float, float, float], scale: float, height: int, width: int) -> Box:
    """The face box (x1, y1, x2, y2) grown to side scale x max(w, h), squared, moved into the frame."""
    x1, y1, x2, y2 = box
    side = min(int(round(max(x2 - x1, y2 - y1) * scale)), height, width)
    side = max(side, 1)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left = int(round(min(max(cx - side / 2, 0), width - side)))
    top = int(round(min(max(cy - side / 2, 0), height - side)))
    return left, top, side, side


def centre_box(height: int, width: int) -> Box:
    """The largest centred square: the crop when no detector is used."""
    side = min(height, width)
    return (width - side) // 2, (height - side) // 2, side, side


def cut_box(frame: np.ndarray, box: Box, size: int) -> np.ndarray:
    """frame[box] resized to (size, size)."""
    x, y, w, h = box
    crop = frame[y : y + h, x : x + w]
    interpolation = cv2.INTER_AREA if w > size else cv2.INTER_CUBIC
    return cv2.resize(crop, (size, size), interpolation=interpolation)


def crop_face(
    frame: np.ndarray, face: Face, align: str, scale: float, size: int
) -> np.ndarray | None:
    """The (size, size, C) crop of `face` in `frame`; None when its landmarks are degenerate."""
    if align == "similarity":
        if face.landmarks is None:
            raise ValueError("similarity alignment needs landmarks")
        matrix = align_matrix(np.array(face.landmarks), size, scale)
        if matrix is None:
            return None
        return cv2.warpAffine(
            frame, matrix, (size, size), flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT, borderValue=0,
        )
    height, width = frame.shape[:2]
    return cut_box(frame, square_box(face.box, scale, height, width), size)


def centre_crop(frame: np.ndarray, size: int) -> np.ndarray:
    return cut_box(frame, centre_box(*frame.shape[:2]), size)
