"""The MTCNN cascade on one RGB image, step for step as facenet-pytorch 2.6.0 runs it.

Why it follows facenet-pytorch and not the paper where they differ: every crop prepared
before this copy existed was cut with facenet-pytorch's MTCNN, and those crops stay valid
only if the same image gives the same faces. So its rules are kept on purpose: crops are
clipped to the image (not zero-padded) before resizing, box widths are `x2 - x1` in the
P-Net regression and squaring but `x2 - x1 + 1` in the later regressions and the landmarks,
NMS is IoU (torchvision) except the last, which divides by the smaller box. The test
(tests/test_mtcnn.py) compares the two on real images.

The stages: an image pyramid whose scales make P-Net's 12 px window see faces from
`min_face` px up to the whole image; P-Net proposals above a threshold at each scale,
NMS per scale then over all scales; box regression and squaring; R-Net rescoring and
regression on 24 px crops; O-Net on 48 px crops for the final score, box and landmarks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import nms

from ablate.data.mtcnn.nets import Nets

THRESHOLDS = (0.6, 0.7, 0.7)  # P-Net, R-Net, O-Net face probability to pass
FACTOR = 0.709  # pyramid step: each scale 0.709x the last (about 1/sqrt(2): half the area)
MIN_FACE = 20  # facenet-pytorch's default; ablate asks for 24 (faces.MIN_FACE)
WINDOW, STRIDE = 12, 2  # P-Net's receptive field and step, in pyramid pixels
NMS_SCALE, NMS_ALL = 0.5, 0.7  # IoU above which a lower-scored box is dropped
NMS_LAST = 0.7  # overlap / smaller box's area above which the last stage drops a box
BATCH = 512  # crops per R-Net / O-Net forward: bounds memory on a crowded frame


@dataclass(frozen=True)
class Found:
    """The faces in one image, largest box first (facenet-pytorch's `select_largest` order)."""

    boxes: np.ndarray  # (N, 4) float32: x1, y1, x2, y2 in image pixels
    probs: np.ndarray  # (N,) float32: O-Net's face probability
    # (N, 5, 2) float32 x, y: left eye, right eye, nose, left and right mouth corner
    points: np.ndarray


def detect(
    nets: Nets,
    rgb: np.ndarray,
    min_face: int = MIN_FACE,
    thresholds: tuple[float, float, float] = THRESHOLDS,
    factor: float = FACTOR,
) -> Found:
    """Every face MTCNN finds in an RGB uint8 (H, W, 3) image."""
    pixels = torch.from_numpy(np.array(rgb, dtype=np.uint8, order="C"))  # (H, W, 3)
    # (1, 3, H, W) float32 with the (H, W, 3) strides kept: the layout facenet-pytorch
    # feeds its kernels, so each op sums in the same order
    image = pixels[None].permute(0, 3, 1, 2).float()
    with torch.no_grad():
        boxes = _propose(nets, image, _pyramid(*image.shape[2:], min_face, factor), thresholds[0])
        if len(boxes):
            boxes = _refine(nets, image, boxes, thresholds[1])
        points = torch.zeros(0, 5, 2)
        if len(boxes):
            boxes, points = _output(nets, image, boxes, thresholds[2])
    boxes_np, points_np = boxes.numpy(), points.numpy()  # (N, 5), (N, 5, 2)
    area = (boxes_np[:, 2] - boxes_np[:, 0]) * (boxes_np[:, 3] - boxes_np[:, 1])  # (N,)
    order = np.argsort(area)[::-1]  # largest first; ties as facenet-pytorch breaks them
    return Found(boxes_np[order, :4], boxes_np[order, 4], points_np[order])


def _pyramid(height: int, width: int, min_face: int, factor: float) -> list[float]:
    """Scales at which a `min_face` face fills P-Net's window, down to the image's short side."""
    scale = WINDOW / min_face
    side = min(height, width) * scale  # the short side at this scale
    scales = []
    while side >= WINDOW:
        scales.append(scale)
        scale *= factor
        side *= factor
    return scales


def _normalise(pixels: torch.Tensor) -> torch.Tensor:
    """[0, 255] -> about [-1, 1], as the nets were trained."""
    return (pixels - 127.5) * 0.0078125


def _propose(nets: Nets, image: torch.Tensor, scales: list[float], threshold: float
             ) -> torch.Tensor:
    """P-Net's boxes over the pyramid, regressed and squared: (K, 5) x1, y1, x2, y2, score."""
    height, width = image.shape[2:]
    kept = []
    for scale in scales:
        size = (int(height * scale + 1), int(width * scale + 1))
        offsets, probs = nets.pnet(_normalise(F.interpolate(image, size=size, mode="area")))
        found = _windows(offsets[0], probs[0, 1], scale, threshold)  # (k, 9)
        kept.append(found[nms(found[:, :4], found[:, 4], NMS_SCALE)])
    if not kept:  # the image is smaller than min_face
        return image.new_zeros(0, 5)
    boxes = torch.cat(kept)  # (K, 9): box, score, 4 offsets
    boxes = boxes[nms(boxes[:, :4], boxes[:, 4], NMS_ALL)]
    width_, height_ = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]  # (K,), no +1 here
    moved = torch.stack([
        boxes[:, 0] + boxes[:, 5] * width_,
        boxes[:, 1] + boxes[:, 6] * height_,
        boxes[:, 2] + boxes[:, 7] * width_,
        boxes[:, 3] + boxes[:, 8] * height_,
        boxes[:, 4],
    ], dim=1)  # (K, 5)
    return _square(moved)


def _windows(offsets: torch.Tensor, probs: torch.Tensor, scale: float, threshold: float
             ) -> torch.Tensor:
    """P-Net's windows scoring at least `threshold`, in image pixels: (k, 9) box, score, offsets.

    offsets (4, h, w), probs (h, w): one value per window of the map at this scale.
    """
    hit = probs >= threshold  # (h, w)
    yx = hit.nonzero()  # (k, 2) row, column
    corner = yx.flip(1).to(probs.dtype)  # (k, 2) x, y of the window in map cells
    top_left = ((STRIDE * corner + 1) / scale).floor()
    bottom_right = ((STRIDE * corner + WINDOW) / scale).floor()
    return torch.cat([top_left, bottom_right, probs[hit][:, None], offsets[:, hit].T], dim=1)


def _refine(nets: Nets, image: torch.Tensor, boxes: torch.Tensor, threshold: float
            ) -> torch.Tensor:
    """R-Net's rescoring of the boxes from 24 px crops, regressed and squared: (K', 5)."""
    boxes, crops = _crops(image, boxes, 24)  # (K, 5), (K, 3, 24, 24)
    offsets, probs = _batched(nets.rnet, _normalise(crops))  # (K, 4), (K, 2)
    score = probs[:, 1]
    keep = score > threshold
    boxes = torch.cat([boxes[keep, :4], score[keep, None]], dim=1)  # (K', 5)
    offsets = offsets[keep]
    pick = nms(boxes[:, :4], boxes[:, 4], NMS_ALL)
    return _square(_regress(boxes[pick], offsets[pick]))


def _output(nets: Nets, image: torch.Tensor, boxes: torch.Tensor, threshold: float
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """O-Net's final boxes (N, 5) and landmarks (N, 5, 2) from 48 px crops."""
    boxes, crops = _crops(image, boxes, 48)  # (K, 5), (K, 3, 48, 48)
    offsets, marks, probs = _batched(nets.onet, _normalise(crops))  # (K, 4), (K, 10), (K, 2)
    score = probs[:, 1]
    keep = score > threshold
    boxes = torch.cat([boxes[keep, :4], score[keep, None]], dim=1)  # (N, 5)
    offsets, marks = offsets[keep], marks[keep]
    # landmarks are fractions of the (unregressed) box, +1 wide, 1-based like the crops
    width, height = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1  # (N,)
    xs = width[:, None] * marks[:, :5] + boxes[:, 0, None] - 1  # (N, 5)
    ys = height[:, None] * marks[:, 5:] + boxes[:, 1, None] - 1  # (N, 5)
    points = torch.stack([xs, ys], dim=2)  # (N, 5, 2)
    boxes = _regress(boxes, offsets)
    pick = torch.as_tensor(_nms_min(boxes[:, :4].numpy(), boxes[:, 4].numpy(), NMS_LAST),
                           dtype=torch.long)
    return boxes[pick], points[pick]


def _regress(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Boxes (K, 5) moved by the net's offsets (K, 4), in units of the +1 box size."""
    width, height = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1  # (K,)
    moved = torch.stack([
        boxes[:, 0] + offsets[:, 0] * width,
        boxes[:, 1] + offsets[:, 1] * height,
        boxes[:, 2] + offsets[:, 2] * width,
        boxes[:, 3] + offsets[:, 3] * height,
    ], dim=1)  # (K, 4)
    return torch.cat([moved, boxes[:, 4:]], dim=1)


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes (K, 5) made square on their longer side, same centre: the nets see square crops."""
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]  # (K,)
    side = torch.maximum(width, height)
    x1 = boxes[:, 0] + width * 0.5 - side * 0.5
    y1 = boxes[:, 1] + height * 0.5 - side * 0.5
    return torch.stack([x1, y1, x1 + side, y1 + side, boxes[:, 4]], dim=1)


def _crops(image: torch.Tensor, boxes: torch.Tensor, size: int
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The part of each box inside the image, area-resized to size x size.

    Boxes are truncated to integers and read 1-based (column x1 - 1 .. x2 - 1), clipped to
    the image; a box with nothing inside the image is dropped (facenet-pytorch fails there).
    Returns the boxes kept (K, 5) and their crops (K, 3, size, size).
    """
    height, width = image.shape[2:]
    corners = boxes[:, :4].trunc().int().tolist()  # K x [x1, y1, x2, y2]
    kept, crops = [], []
    for k, (x1, y1, x2, y2) in enumerate(corners):
        x1, y1, x2, y2 = max(x1, 1), max(y1, 1), min(x2, width), min(y2, height)
        if x2 > x1 - 1 and y2 > y1 - 1:
            kept.append(k)
            # (3, h, w) then (1, 3, h, w): torch sees plain NCHW, not the image's channels-last
            # strides, as in facenet-pytorch; the nets then run the same kernels, same last bits
            part = image[0, :, y1 - 1 : y2, x1 - 1 : x2][None]
            crops.append(F.interpolate(part, size=(size, size), mode="area"))  # (1, 3, size, size)
    if not crops:
        return boxes[:0], image.new_zeros(0, 3, size, size)
    return boxes[kept], torch.cat(crops)


def _batched(net: Callable[..., tuple[torch.Tensor, ...]], x: torch.Tensor
             ) -> tuple[torch.Tensor, ...]:
    """`net(x)` in chunks of BATCH along the first dimension, outputs joined."""
    if len(x) == 0:
        return net(x)
    outs = [net(x[i : i + BATCH]) for i in range(0, len(x), BATCH)]
    return tuple(torch.cat(parts) for parts in zip(*outs, strict=True))


def _nms_min(boxes: np.ndarray, scores: np.ndarray, overlap: float) -> np.ndarray:
    """Indices kept, best first, dropping a box whose intersection with a better one exceeds
    `overlap` of the smaller of the two (sizes +1, as in the original MATLAB code).

    boxes (K, 4), scores (K,). A face inside a larger box goes even if IoU is small.
    """
    x1, y1, x2, y2 = boxes.T  # (K,) each
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    left = np.argsort(scores)  # ascending: the best is last (ties broken as facenet-pytorch)
    kept = []
    while left.size:
        best, rest = left[-1], left[:-1]
        kept.append(best)
        w = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        left = rest[w * h / np.minimum(area[best], area[rest]) <= overlap]
    return np.array(kept, dtype=np.int64)
