"""The fake-making operations: put a source face into a target frame, one way per family.

Every real video is also the target of one fake video per family: frame k of a
source identity's video is aligned to the target's landmarks (from the renderer,
as a face-swap pipeline would detect them) and blended in with the family's
method. Each family leaves its own fingerprint (Poisson smoothness, a colour
mismatch with a hard edge, GAN checkerboard upsampling, low resolution and JPEG),
so a detector trained on one family meets different artefacts in the others.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.linalg import spsolve

from ablate.core.errors import AblateError
from ablate.data.synthetic.scene import Landmarks

METHODS = ("blend", "colour", "warp", "lowres")


# ---------------------------------------------------------------- geometry


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 least-squares similarity (rotation, scale, shift) taking src points to dst."""
    a = np.zeros((2 * len(src), 4))
    a[0::2] = np.c_[src[:, 0], -src[:, 1], np.ones(len(src)), np.zeros(len(src))]
    a[1::2] = np.c_[src[:, 1], src[:, 0], np.zeros(len(src)), np.ones(len(src))]
    (p, q, tx, ty), *_ = np.linalg.lstsq(a, dst.reshape(-1), rcond=None)
    return np.array([[p, -q, tx], [q, p, ty]])


def _affine(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 affine mapping the 3 src points exactly onto dst (allows shear/stretch)."""
    return cv2.getAffineTransform(src.astype(np.float32), dst.astype(np.float32)).astype(float)


def _ellipse_mask(lm: Landmarks, size: int, scale: float, shift: float) -> np.ndarray:
    """Float mask of the inner face: the face ellipse scaled and moved `shift` * ay down."""
    yy, xx = np.mgrid[0:size, 0:size].astype(float) + 0.5
    c, s = math.cos(lm.angle), math.sin(lm.angle)
    cx = lm.centre[0] - s * shift * lm.axes[1]
    cy = lm.centre[1] + c * shift * lm.axes[1]
    u = c * (xx - cx) + s * (yy - cy)
    v = -s * (xx - cx) + c * (yy - cy)
    d = np.hypot(u / (lm.axes[0] * scale), v / (lm.axes[1] * scale))
    m = (d <= 1.0).astype(float)
    m[[0, -1], :] = 0.0  # keep the mask off the border (Poisson needs outside neighbours)
    m[:, [0, -1]] = 0.0
    return m


# ---------------------------------------------------------------- image operations


def _colour_match(face: np.ndarray, target: np.ndarray, sigma: float) -> np.ndarray:
    """Low-frequency colour correction (face-swap style): move local means to the target's."""
    return face + cv2.GaussianBlur(target, (0, 0), sigma) - cv2.GaussianBlur(face, (0, 0), sigma)


def _poisson(src: np.ndarray, dst: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Gradient-domain (Poisson) cloning of src into dst inside `mask`: seamless boundary."""
    inside = mask > 0.5
    idx = -np.ones(mask.shape, dtype=np.int64)
    ys, xs = np.nonzero(inside)
    idx[ys, xs] = np.arange(ys.size)
    rows, cols, vals = [np.arange(ys.size)], [np.arange(ys.size)], [np.full(ys.size, 4.0)]
    rhs = 4 * src[ys, xs]
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        ny, nx = ys + dy, xs + dx
        rhs -= src[ny, nx]
        neighbour_in = inside[ny, nx]
        rows.append(np.flatnonzero(neighbour_in))
        cols.append(idx[ny, nx][neighbour_in])
        vals.append(-np.ones(int(neighbour_in.sum())))
        rhs[~neighbour_in] += dst[ny, nx][~neighbour_in]
    n = ys.size
    a = coo_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
    )
    out = dst.copy()
    out[ys, xs] = spsolve(a.tocsc(), rhs).reshape(n, -1)
    return out


def _reinhard(face: np.ndarray, target: np.ndarray, mask: np.ndarray, mismatch) -> np.ndarray:
    """Reinhard colour transfer (Lab mean/std) to target statistics that are deliberately off."""
    lab_f = cv2.cvtColor(np.clip(face, 0, 1).astype(np.float32), cv2.COLOR_RGB2LAB)
    lab_t = cv2.cvtColor(np.clip(target, 0, 1).astype(np.float32), cv2.COLOR_RGB2LAB)
    m = mask > 0.5
    mf, sf = lab_f[m].mean(0), lab_f[m].std(0) + 1e-3
    mt, st = lab_t[m].mean(0), lab_t[m].std(0) + 1e-3
    shift, gain = mismatch
    out = (lab_f - mf) / sf * (st * gain) + mt + shift
    return cv2.cvtColor(out.astype(np.float32), cv2.COLOR_LAB2RGB)


def _checkerboard_upsample(img: np.ndarray, tap: float) -> np.ndarray:
    """Downsample 2x, then a stride-2 transposed conv with kernel [tap, 1, tap] per axis.

    Unless tap = 0.5 the kernel's even/odd phases have different gains: the
    checkerboard fingerprint of GAN decoders.
    """
    h, w = img.shape[:2]
    small = cv2.resize(img, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    up = np.zeros((2 * (h // 2), 2 * (w // 2), img.shape[2]), np.float32)
    up[::2, ::2] = small
    k = np.array([tap, 1.0, tap], np.float32)
    k2 = np.outer(k, k) * (4.0 / (1 + 2 * tap) ** 2)  # unit mean gain
    out = cv2.filter2D(up, -1, k2, borderType=cv2.BORDER_REFLECT)
    return (
        cv2.resize(out, (w, h), interpolation=cv2.INTER_NEAREST) if out.shape[:2] != (h, w) else out
    )


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    u8 = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    _, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(u8, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    return (
        cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(np.float32)
        / 255.0
    )


def _local_jitter(img: np.ndarray, rng: np.random.Generator, amp: float) -> np.ndarray:
    """Smooth non-rigid displacement (a few pixels at most): imperfect landmark warping."""
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    fy, fx, py, px = rng.uniform(0.05, 0.15, 2).tolist() + rng.uniform(0, 6.3, 2).tolist()
    map_x = xx + amp * np.sin(fy * yy + py)
    map_y = yy + amp * np.sin(fx * xx + px)
    return cv2.remap(
        img,
        map_x.astype(np.float32),
        map_y.astype(np.float32),
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT,
    )


def sample_fake_params(method: str, rng: np.random.Generator) -> dict:
    """Per fake video artefact strengths: a range of difficulty within each family."""
    if method == "blend":
        return {
            "mask_scale": rng.uniform(0.85, 1.0),
            "feather": rng.uniform(1.0, 3.0),
        }
    if method == "colour":
        shift = rng.normal(0, 1, 3) * [8.0, 7.0, 7.0]
        return {
            "mask_scale": rng.uniform(0.9, 1.05),
            "feather": rng.uniform(0.3, 0.7),
            "shift": shift,
            "gain": rng.uniform(0.7, 1.4),
            "renoise": rng.uniform(0.8, 1.5),
        }
    if method == "warp":
        return {
            "mask_scale": rng.uniform(0.85, 1.0),
            "feather": rng.uniform(1.0, 2.0),
            "tap": rng.uniform(0.53, 0.62),
            "blur": rng.uniform(0.3, 0.7),
            "jitter": rng.uniform(0.3, 1.0),
        }
    if method == "lowres":
        return {
            "mask_scale": rng.uniform(0.85, 1.0),
            "feather": rng.uniform(1.5, 2.5),
            "factor": rng.uniform(2.5, 4.0),
            "quality": int(rng.integers(10, 30)),
        }
    raise AblateError(f"unknown manipulation {method!r}; choose from {', '.join(METHODS)}")


def manipulate(
    method: str,
    target: np.ndarray,
    target_lm: Landmarks,
    source: np.ndarray,
    source_lm: Landmarks,
    params: dict,
    rng: np.random.Generator,
) -> np.ndarray:
    """Put the source face into the target frame (uint8 in, uint8 out); outside the mask untouched."""
    size = target.shape[0]
    t = target.astype(np.float32) / 255.0
    s = source.astype(np.float32) / 255.0
    align = _affine if method == "warp" else _similarity
    m = align(source_lm.points, target_lm.points)
    face = cv2.warpAffine(s, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    hard = _ellipse_mask(target_lm, size, params["mask_scale"], shift=0.08)
    face = _FAMILIES[method](face, t, hard, params, rng)
    soft = (
        cv2.GaussianBlur(hard, (0, 0), params["feather"] * size / 64) * hard
        if params["feather"] > 0
        else hard
    )
    out = soft[..., None] * face + (1 - soft[..., None]) * t
    return np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)


def _blend(face, t, mask, p, rng):
    """Poisson cloning: seamless colours, but the resampled face is smoother than the frame."""
    return _poisson(face, t, mask)


def _colour_family(face, t, mask, p, rng):
    """Reinhard transfer with mismatched statistics, re-noised, pasted with a hard-ish edge.

    The added sensor-like noise (at least the frame's own level) removes the
    "smoother face" cue, so this family's tell is colour and the mask edge alone.
    """
    out = _reinhard(face, t, mask, (p["shift"], p["gain"]))
    noise = _noise_level(t) * p["renoise"]
    return out + rng.normal(0, noise / 255.0, out.shape).astype(np.float32)


def _warp(face, t, mask, p, rng):
    """Non-rigid jitter, GAN-decoder checkerboard upsampling, slight blur, colour-matched."""
    face = _local_jitter(face, rng, p["jitter"])
    face = _checkerboard_upsample(face, p["tap"])
    face = cv2.GaussianBlur(face, (0, 0), p["blur"])
    return _colour_match(face, t, sigma=3.0 * t.shape[0] / 64)


def _lowres(face, t, mask, p, rng):
    """Face rendered at low resolution, upsampled and JPEG-compressed (8x8 blocks)."""
    size = t.shape[0]
    small = max(4, int(round(size / p["factor"])))
    face = cv2.resize(
        cv2.resize(face, (small, small), interpolation=cv2.INTER_AREA),
        (size, size),
        interpolation=cv2.INTER_LINEAR,
    )
    face = _jpeg(np.clip(_colour_match(face, t, sigma=3.0 * size / 64), 0, 1), p["quality"])
    return face


_FAMILIES = {"blend": _blend, "colour": _colour_family, "warp": _warp, "lowres": _lowres}


def _noise_level(img: np.ndarray) -> float:
    """Robust noise sigma (0..255 units) from the median absolute Laplacian-like residual."""
    g = img.mean(axis=2) * 255.0
    r = g[1:-1, 1:-1] - 0.25 * (g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:])
    return float(np.median(np.abs(r)) / 0.6745 / math.sqrt(1.25))
