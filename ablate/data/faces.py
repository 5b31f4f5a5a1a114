"""Face detectors for `ablate data prepare`, and the choice of one face per frame of a video.

Why this shape:
    - Default detector: MTCNN, vendored in ablate.data.mtcnn (facenet-pytorch 2.6.0's
      detector and weights, MIT; it ships with ablate, nothing is downloaded at run time,
      and facenet-pytorch, which pins an old torch, is not needed). It gives a confidence
      per face and five landmarks, which alignment needs.
    - The LBP cascade (bundled with scikit-image) and OpenCV 4's Haar cascade stay as
      fallbacks: no score (1.0) and no landmarks, so they only do box crops.
    - A face is one whose score reaches `min_score`; anything else is a miss. With
      several faces the one that continues the video's track wins (nearest centre to
      the previous chosen face; first face: the largest), not simply the largest box,
      so a bystander does not steal the crop for a frame.
    - Smoothing averages the chosen faces' boxes and landmarks over a centred window of
      neighbouring *sampled* frames that have a face; a miss stays a miss (no face is
      made up where none was found).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ablate.core.errors import AblateError

DETECTORS = ("mtcnn", "lbp", "haar", "none")
WITH_LANDMARKS = frozenset({"mtcnn"})
DETECT_SIDE = 480  # frames are shrunk to this short side for detection (speed)
MIN_FACE = 24  # pixels at detection scale (the cascades' window size; MTCNN's minimum)


@dataclass(frozen=True)
class Face:
    """One detected face, in frame pixels."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    score: float  # detector confidence in [0, 1]; 1.0 for the cascades
    # (5, 2): left eye, right eye, nose, left and right mouth corner, as seen in the image
    landmarks: tuple[tuple[float, float], ...] | None = None

    @property
    def centre(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.box
        return (x1 + x2) / 2, (y1 + y2) / 2

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return max(x2 - x1, 0.0) * max(y2 - y1, 0.0)

    def to_json(self) -> dict[str, Any]:
        return {
            "box": [round(v, 2) for v in self.box],
            "score": round(self.score, 5),
            "landmarks": None
            if self.landmarks is None
            else [[round(x, 2), round(y, 2)] for x, y in self.landmarks],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Face:
        points = data.get("landmarks")
        return cls(
            tuple(float(v) for v in data["box"]),
            float(data["score"]),
            None if points is None else tuple((float(x), float(y)) for x, y in points),
        )


Detector = Callable[[np.ndarray], list[Face]]  # RGB uint8 (H, W, 3) -> faces, frame pixels


# ---------------------------------------------------------------- detectors


_BUILT: dict[str, Detector | None] = {}


def make_detector(name: str) -> Detector | None:
    """The face detector `name` (built once per process); None for "none" (centre crop)."""
    if name not in _BUILT:
        builders = {
            "mtcnn": _mtcnn_detector,
            "lbp": _lbp_detector,
            "haar": _haar_detector,
            "none": lambda: None,
        }
        if name not in builders:
            raise AblateError(f"--detector must be one of {', '.join(DETECTORS)}, got {name!r}")
        _BUILT[name] = builders[name]()
    return _BUILT[name]


def detector_version(name: str) -> str:
    """The model `name` is, recorded with the crops: its package and version, or for MTCNN
    where its weights come from (`facenet-pytorch 2.6.0`, as when facenet-pytorch ran it:
    the vendored copy gives the same faces, so crops cut before and after compare)."""
    if name == "mtcnn":
        from ablate.data import mtcnn  # lazy: loads torch, which only MTCNN needs here

        return mtcnn.version()
    if name == "lbp":
        return f"scikit-image {importlib.metadata.version('scikit-image')}"
    return f"opencv {cv2.__version__}" if name == "haar" else ""


def _mtcnn_detector() -> Detector:
    """The vendored MTCNN (ablate.data.mtcnn) on the CPU, weights shipped with ablate."""
    from ablate.data.mtcnn import MTCNN  # lazy: loads torch, which only MTCNN needs here

    model = MTCNN(min_face=MIN_FACE)

    def detect(rgb: np.ndarray) -> list[Face]:
        found = model(rgb)
        boxes = found.boxes.astype(float)  # (N, 4)
        probs = found.probs.astype(float)  # (N,)
        points = found.points.astype(float)  # (N, 5, 2)
        return [
            Face(tuple(b.tolist()), float(p), tuple(map(tuple, pts.tolist())))
            for b, p, pts in zip(boxes, probs, points, strict=True)
        ]

    return detect


def _lbp_detector() -> Detector:
    """scikit-image's bundled copy of OpenCV's LBP frontal-face cascade (no score, no landmarks)."""
    import skimage.data
    from skimage.feature import Cascade

    xml = Path(skimage.data.__file__).parent / "lbpcascade_frontalface_opencv.xml"
    if not xml.is_file():
        raise AblateError(f"{xml} is missing from scikit-image; reinstall scikit-image")
    cascade = Cascade(str(xml))

    def detect(rgb: np.ndarray) -> list[Face]:
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        side = min(gray.shape)
        found = cascade.detect_multi_scale(
            img=gray, scale_factor=1.2, step_ratio=1, min_size=(MIN_FACE, MIN_FACE),
            max_size=(side, side),
        )
        return [_box_face(d["c"], d["r"], d["width"], d["height"]) for d in found]

    return detect


def _haar_detector() -> Detector:
    """OpenCV's Haar cascade, present in OpenCV 4 wheels only."""
    path = Path(getattr(cv2.data, "haarcascades", "")) / "haarcascade_frontalface_default.xml"
    if not hasattr(cv2, "CascadeClassifier") or not path.is_file():
        raise AblateError(
            f"--detector haar needs OpenCV's Haar cascades, which OpenCV {cv2.__version__} "
            "does not ship (OpenCV 5 removed them); use --detector mtcnn or lbp, "
            "or install opencv-python-headless<5"
        )
    cascade = cv2.CascadeClassifier(str(path))

    def detect(rgb: np.ndarray) -> list[Face]:
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        found = cascade.detectMultiScale(
            gray, scaleFactor=1.1, minNeighbors=5, minSize=(MIN_FACE, MIN_FACE)
        )
        return [_box_face(*(int(v) for v in box)) for box in found]

    return detect


def _box_face(x: float, y: float, w: float, h: float) -> Face:
    return Face((float(x), float(y), float(x + w), float(y + h)), 1.0)


def detect_faces(rgb: np.ndarray, detector: Detector) -> list[Face]:
    """Every face in an RGB frame, detected on a copy shrunk to DETECT_SIDE, in frame pixels."""
    scale = min(1.0, DETECT_SIDE / min(rgb.shape[:2]))
    small = rgb
    if scale < 1:
        small = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return [_rescale(face, 1 / scale) for face in detector(np.ascontiguousarray(small))]


def _rescale(face: Face, factor: float) -> Face:
    if factor == 1:
        return face
    points = face.landmarks
    return Face(
        tuple(v * factor for v in face.box),
        face.score,
        None if points is None else tuple((x * factor, y * factor) for x, y in points),
    )


# ---------------------------------------------------------------- one face per frame


def pick_track(frames: Sequence[Sequence[Face]], min_score: float) -> list[Face | None]:
    """One face per frame (None: a miss) that follows the video's face from frame to frame.

    Faces under `min_score` are not faces. The first face is the largest; after it, the
    one whose centre is nearest the last chosen face's centre.
    """
    chosen: list[Face | None] = []
    last: Face | None = None
    for faces in frames:
        found = [f for f in faces if f.score >= min_score]
        if not found:
            chosen.append(None)
            continue
        if last is None:
            face = max(found, key=lambda f: (f.area, f.score))
        else:
            lx, ly = last.centre
            face = min(found, key=lambda f: (f.centre[0] - lx) ** 2 + (f.centre[1] - ly) ** 2)
        chosen.append(face)
        last = face
    return chosen


def smooth(track: Sequence[Face | None], window: int) -> list[Face | None]:
    """Centred moving average of boxes and landmarks over `window` sampled frames.

    Frame k averages the faces found at k - window//2 .. k + window//2 (the window is
    cut at the ends and skips misses); a miss stays a miss; window 1 changes nothing.
    """
    if window < 1:
        raise AblateError(f"--smooth must be >= 1 (1 = no smoothing), got {window}")
    half = window // 2
    out: list[Face | None] = []
    for k, face in enumerate(track):
        if face is None:
            out.append(None)
            continue
        near = [f for f in track[max(k - half, 0) : k + half + 1] if f is not None]
        box = tuple(np.mean([f.box for f in near], axis=0).tolist())  # (4,)
        points = None
        if all(f.landmarks is not None for f in near):
            mean = np.mean([f.landmarks for f in near], axis=0)  # (5, 2)
            points = tuple(map(tuple, mean.tolist()))
        out.append(Face(box, face.score, points))
    return out
