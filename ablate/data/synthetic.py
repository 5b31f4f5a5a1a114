"""The embedded benchmark: a small face-swap dataset rendered locally, no download.

Why: CPU default runs and tests need data with the structure of FaceForensics++
(real videos, fakes made by putting a *source* identity's face into a *target*
video frame, source/target images for guided training, manipulation families
that differ) so "train on one family, test on the others" is a real
cross-dataset question. See docs/embedded_benchmark.md for the full recipe.

Outline:
    identities   procedural parametric faces (skin, face shape, eyes, brows,
                 nose, mouth, hair, ears, clothes, skin texture), plus optionally
                 one identity cut from `skimage.data.astronaut()` (public domain)
    real video   one scene (background texture, lighting, white balance, camera
                 noise/blur, base pose) and `frames_per_video` frames with pose
                 jitter, talking mouth and blinks
    fake video   every real video is also the target of one fake video per
                 family: frame k of a source identity's video is aligned to the
                 target's landmarks and blended in with the family's method
    datasets     one per family ("synth-blend", ...), each with its *own*
                 identities, reals and fakes; splits by identity (60/20/20)

Everything is seeded by (seed, dataset, role, index), so a dataset does not
depend on which other families were built, and the same seed gives the same
PNG bytes (for the same numpy/OpenCV versions).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from ablate.core.errors import AblateError
from ablate.data.manifest import COLUMNS

VERSION = "2"  # bump whenever the generator's output changes (invalidates caches)
METHODS = ("blend", "colour", "warp", "lowres")
DEFAULT_METHODS = METHODS
SPLITS = ("train", "val", "test")
MANIFEST = "manifest.csv"
MARKER = "COMPLETE.json"  # written last: its presence means the build finished
PHOTO = "astro"  # identity name of the astronaut-photo identity
DEFAULTS = {
    "n_identities": 40,
    "videos_per_identity": 2,
    "frames_per_video": 8,
    "image_size": 64,
    "methods": DEFAULT_METHODS,
    "seed": 0,
    "photo_identity": True,
}
_SUPERSAMPLE = 2  # procedural faces are drawn at 2x and area-downsampled (anti-aliasing)
_STALE_TMP_S = 3600  # unfinished builds older than this are removed by ensure_benchmark


def dataset_name(method: str) -> str:
    """Dataset name of a manipulation family: each family is its own dataset."""
    return f"synth-{method}"


DATASETS = tuple(dataset_name(m) for m in DEFAULT_METHODS)  # what ensure_benchmark() builds


# ---------------------------------------------------------------- seeding


def _rng(seed: int, *keys: object) -> np.random.Generator:
    """Independent stream per (seed, keys): adding a family never shifts another's draws."""
    words = [int(seed) & 0xFFFFFFFF] + [zlib.crc32(str(k).encode()) for k in keys]
    return np.random.default_rng(words)


# ---------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Landmarks:
    """Where the face is in a frame, in pixels: what a face-swap pipeline would detect."""

    points: np.ndarray  # 3 x 2 (x, y): left eye, right eye, mouth centre
    centre: tuple[float, float]  # face ellipse centre (x, y)
    axes: tuple[float, float]  # face ellipse semi-axes (along its own x, y)
    angle: float  # ellipse rotation, radians, image coordinates (y down)


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


# ---------------------------------------------------------------- procedural faces


@dataclass(frozen=True)
class Face:
    """Identity parameters; lengths in canonical units (image width = 1 at scale 1)."""

    skin: tuple[float, float, float]
    ax: float  # face semi-axes
    ay: float
    chin: float  # jaw taper towards the chin
    eye_y: float
    eye_dx: float
    eye_rx: float
    eye_ry: float
    iris: tuple[float, float, float]
    brow_dy: float
    brow_len: float
    brow_thick: float
    brow_tilt: float
    nose_len: float
    nose_w: float
    mouth_y: float
    mouth_w: float
    lip_h: float
    lip: tuple[float, float, float]
    hair: tuple[float, float, float]
    hairline: float  # v of the fringe edge, as a fraction of ay (negative: above centre)
    hair_volume: float
    long_hair: bool
    fringe_wave: float
    clothes: tuple[float, float, float]
    texture: tuple[tuple[float, float, float, float], ...]  # skin ripples (fu, fv, phase, amp)


_SKIN_LIGHT = np.array([0.96, 0.80, 0.69])
_SKIN_DARK = np.array([0.36, 0.23, 0.16])
_HAIR = np.array(
    [
        [0.08, 0.06, 0.05],
        [0.30, 0.19, 0.10],
        [0.55, 0.40, 0.22],
        [0.80, 0.68, 0.45],
        [0.55, 0.25, 0.12],
        [0.62, 0.62, 0.60],
    ]
)
_IRIS = np.array([[0.30, 0.18, 0.08], [0.15, 0.10, 0.06], [0.25, 0.45, 0.65], [0.30, 0.45, 0.25]])


def _rgb(rng: np.random.Generator, base: np.ndarray, jitter: float) -> tuple[float, ...]:
    return tuple(float(x) for x in np.clip(base + rng.normal(0, jitter, 3), 0, 1))


def sample_face(rng: np.random.Generator) -> Face:
    """Draw one identity: proportions loosely follow real faces (eyes at ~0.4 ay above centre)."""
    t = rng.beta(1.5, 1.5)
    skin = _rgb(rng, (1 - t) * _SKIN_LIGHT + t * _SKIN_DARK, 0.025)
    ax, ay = rng.uniform(0.19, 0.24), rng.uniform(0.25, 0.31)
    hair = _HAIR[rng.integers(len(_HAIR))] * rng.uniform(0.85, 1.15)
    return Face(
        skin=skin,
        ax=ax,
        ay=ay,
        chin=rng.uniform(0.05, 0.35),
        eye_y=-ay * rng.uniform(0.22, 0.38),
        eye_dx=ax * rng.uniform(0.38, 0.50),
        eye_rx=ax * rng.uniform(0.16, 0.22),
        eye_ry=ay * rng.uniform(0.06, 0.09),
        iris=_rgb(rng, _IRIS[rng.integers(len(_IRIS))], 0.03),
        brow_dy=ay * rng.uniform(0.13, 0.22),
        brow_len=ax * rng.uniform(0.20, 0.28),
        brow_thick=ay * rng.uniform(0.025, 0.05),
        brow_tilt=rng.uniform(-0.25, 0.15),
        nose_len=ay * rng.uniform(0.35, 0.50),
        nose_w=ax * rng.uniform(0.16, 0.26),
        mouth_y=ay * rng.uniform(0.42, 0.55),
        mouth_w=ax * rng.uniform(0.28, 0.42),
        lip_h=ay * rng.uniform(0.035, 0.06),
        lip=_rgb(rng, np.array(skin) * np.array([0.85, 0.55, 0.55]), 0.03),
        hair=tuple(float(x) for x in np.clip(hair, 0, 1)),
        hairline=-rng.uniform(0.45, 0.75),
        hair_volume=rng.uniform(1.08, 1.3),
        long_hair=bool(rng.random() < 0.45),
        fringe_wave=rng.uniform(0.0, 0.06),
        clothes=_rgb(rng, rng.uniform(0.1, 0.9, 3), 0.0),
        texture=tuple(
            (
                float(rng.normal(0, 60)),
                float(rng.normal(0, 60)),
                float(rng.uniform(0, 6.3)),
                float(rng.uniform(0.01, 0.03)),
            )
            for _ in range(4)
        ),
    )


@dataclass(frozen=True)
class Scene:
    """What stays fixed within a video: background, light, camera and base pose."""

    background: np.ndarray  # S x S x 3 float (supersampled for procedural, size for photo)
    light: tuple[float, float]  # direction (u, v) times strength
    white_balance: tuple[float, float, float]
    noise: float  # camera noise sigma, in 0..255 units
    blur: float  # camera blur sigma, pixels at output size
    pose: tuple[float, float, float, float]  # cx, cy, scale, angle (radians)


@dataclass(frozen=True)
class State:
    """What changes per frame: pose offset and expression."""

    dx: float
    dy: float
    dscale: float
    dangle: float
    mouth_open: float
    eye_open: float
    brow_raise: float


@lru_cache(maxsize=1)
def _textures() -> tuple[np.ndarray, ...]:
    """CC0 grey textures shipped inside scikit-image (no download); empty if unavailable."""
    try:
        from skimage import data

        return tuple(f().astype(np.float32) / 255.0 for f in (data.brick, data.grass, data.gravel))
    except Exception:  # noqa: BLE001 - a stripped skimage falls back to procedural backgrounds
        return ()


def _background(rng: np.random.Generator, side: int) -> np.ndarray:
    """A blurred, tinted texture crop (or smooth noise) plus a colour gradient."""
    textures = _textures()
    k = rng.integers(len(textures) + 1)
    if k < len(textures):
        tex = textures[k]
        crop = int(rng.integers(96, 320))
        y0, x0 = rng.integers(0, tex.shape[0] - crop, 2)
        g = cv2.resize(
            tex[y0 : y0 + crop, x0 : x0 + crop], (side, side), interpolation=cv2.INTER_AREA
        )
    else:
        g = cv2.resize(
            rng.random((6, 6)).astype(np.float32), (side, side), interpolation=cv2.INTER_CUBIC
        )
    g = cv2.GaussianBlur(g, (0, 0), rng.uniform(0.8, 3.0) * side / 128)
    g = (g - g.mean()) / (g.std() + 1e-6)
    tint = rng.uniform(0.15, 0.85, 3)
    contrast = rng.uniform(0.03, 0.12)
    ramp = np.linspace(-1, 1, side)[:, None] * rng.uniform(-0.15, 0.15, 3)[None, :]
    return np.clip(tint + contrast * g[..., None] + ramp[:, None, :], 0, 1).astype(np.float32)


def sample_scene(rng: np.random.Generator, side: int) -> Scene:
    angle = rng.uniform(0, 2 * math.pi)
    strength = rng.uniform(0.0, 0.35)
    return Scene(
        background=_background(rng, side),
        light=(strength * math.cos(angle), strength * math.sin(angle)),
        white_balance=tuple(float(x) for x in rng.uniform(0.9, 1.1, 3)),
        noise=float(rng.uniform(1.0, 4.0)),
        blur=float(rng.uniform(0.0, 0.6)),
        pose=(
            float(rng.uniform(0.46, 0.54)),
            float(rng.uniform(0.48, 0.55)),
            float(rng.uniform(0.92, 1.08)),
            float(rng.normal(0, 0.06)),
        ),
    )


def sample_states(rng: np.random.Generator, n: int) -> list[State]:
    """Small random-walk head motion, a talking mouth and occasional blinks."""
    walk = np.cumsum(rng.normal(0, 1, (n, 4)) * [0.006, 0.006, 0.01, 0.02], axis=0)
    talk, phase, rate = rng.uniform(0, 0.9), rng.uniform(0, 6.3), rng.uniform(0.8, 2.0)
    mouth = np.clip(talk * (0.5 + 0.5 * np.sin(phase + rate * np.arange(n))), 0, 1)
    blink = rng.random(n) < 0.12
    brow = np.clip(rng.normal(0, 0.3, n), -0.5, 1.0)
    return [
        State(*map(float, walk[k]), float(mouth[k]), 0.15 if blink[k] else 1.0, float(brow[k]))
        for k in range(n)
    ]


def _soft(d: np.ndarray, edge: float) -> np.ndarray:
    """Coverage from a signed distance (negative inside), anti-aliased over `edge`."""
    return np.clip(0.5 - d / edge, 0.0, 1.0)


def _ellipse(u, v, cu, cv, ru, rv, edge, angle: float = 0.0) -> np.ndarray:
    du, dv = u - cu, v - cv
    if angle:
        c, s = math.cos(angle), math.sin(angle)
        du, dv = c * du + s * dv, -s * du + c * dv
    d = (np.sqrt((du / ru) ** 2 + (dv / rv) ** 2) - 1.0) * min(ru, rv)
    return _soft(d, edge)


def _over(img: np.ndarray, colour, alpha: np.ndarray) -> np.ndarray:
    """Composite `colour` (RGB or a field) over `img` in place, only inside alpha's bounding box."""
    rows = np.flatnonzero(alpha.any(axis=1))
    if rows.size == 0:
        return img
    cols = np.flatnonzero(alpha.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    a = alpha[box][..., None]
    col = np.asarray(colour, dtype=np.float32)
    if col.ndim == 3:
        col = col[box]
    img[box] = img[box] * (1 - a) + col * a
    return img


def _pose(scene: Scene, state: State) -> tuple[float, float, float, float]:
    cx, cy, sc, ang = scene.pose
    return cx + state.dx, cy + state.dy, sc * (1 + state.dscale), ang + state.dangle


def _canonical(side: int, pose) -> tuple[np.ndarray, np.ndarray, float]:
    """Face-frame coordinates (u, v) of every pixel centre, and one pixel in those units."""
    cx, cy, sc, ang = pose
    yy, xx = (np.mgrid[0:side, 0:side].astype(np.float32) + 0.5) / side
    c, s = math.cos(ang), math.sin(ang)
    u = (c * (xx - cx) + s * (yy - cy)) / sc
    v = (-s * (xx - cx) + c * (yy - cy)) / sc
    return u, v, 1.0 / (side * sc)


def _to_image(pose, size: int, u: float, v: float) -> tuple[float, float]:
    cx, cy, sc, ang = pose
    c, s = math.cos(ang), math.sin(ang)
    return (cx + sc * (c * u - s * v)) * size, (cy + sc * (s * u + c * v)) * size


def _face_landmarks(face: Face, pose, size: int) -> Landmarks:
    pts = [(-face.eye_dx, face.eye_y), (face.eye_dx, face.eye_y), (0.0, face.mouth_y)]
    points = np.array([_to_image(pose, size, u, v) for u, v in pts])
    sc = pose[2] * size
    return Landmarks(points, _to_image(pose, size, 0.0, 0.0), (face.ax * sc, face.ay * sc), pose[3])


def _hair_region(f: Face, u, v, e) -> np.ndarray:
    """Hair mass behind the head: a cap for short hair, down to the shoulders for long hair."""
    if f.long_hair:
        return _ellipse(
            u, v, 0, 0.25 * f.ay, 1.05 * f.hair_volume * f.ax, 1.35 * f.hair_volume * f.ay, e
        )
    return _ellipse(u, v, 0, -0.35 * f.ay, f.hair_volume * f.ax, 0.85 * f.hair_volume * f.ay, e)


def _draw_body(img, f: Face, u, v, e):
    img = _over(img, f.clothes, _ellipse(u, v, 0, 2.3 * f.ay, 2.6 * f.ax, 1.25 * f.ay, e))
    neck = _soft(np.maximum(np.abs(u) - 0.55 * f.ax, -v), e) * _soft(v - 2.0 * f.ay, e)
    img = _over(img, np.array(f.skin) * 0.8, neck)
    return _over(img, f.hair, _hair_region(f, u, v, e))


def _skin_field(f: Face, u, v, d, light) -> np.ndarray:
    """Skin colour with rounded shading, directional light and identity-specific ripples."""
    ripple = sum(a * np.sin(fu * u + fv * v + ph) for fu, fv, ph, a in f.texture)
    shade = (1 - 0.22 * np.clip(d, 0, 1.2) ** 2) * (
        1 + (light[0] * u + light[1] * v) / f.ax
    ) + ripple
    return np.asarray(f.skin, dtype=np.float32) * np.clip(shade, 0.3, 1.5)[..., None]


def _draw_head(img, f: Face, u, v, e, light):
    for side in (-1, 1):
        img = _over(
            img,
            np.array(f.skin) * 0.9,
            _ellipse(u, v, side * f.ax, f.eye_y + 0.1 * f.ay, 0.12 * f.ax, 0.22 * f.ay, e),
        )
    ru = f.ax * (1 - f.chin * np.clip(v / f.ay, 0, 1) ** 2)
    d = np.sqrt((u / ru) ** 2 + (v / f.ay) ** 2)
    face = _soft((d - 1.0) * f.ax, e)
    return _over(img, _skin_field(f, u, v, d, light), face)


def _draw_eyes(img, f: Face, u, v, e, st: State):
    for side in (-1, 1):
        cu = side * f.eye_dx
        sclera = _ellipse(u, v, cu, f.eye_y, f.eye_rx, f.eye_ry * st.eye_open, e)
        img = _over(img, (0.92, 0.90, 0.88), sclera)
        iris = _ellipse(u, v, cu, f.eye_y, 0.9 * f.eye_ry, 0.9 * f.eye_ry, e) * sclera
        img = _over(img, f.iris, iris)
        img = _over(
            img,
            (0.03, 0.03, 0.03),
            _ellipse(u, v, cu, f.eye_y, 0.4 * f.eye_ry, 0.4 * f.eye_ry, e) * sclera,
        )
        lid = np.clip(
            _ellipse(u, v, cu, f.eye_y, f.eye_rx + e, f.eye_ry * st.eye_open + e, e) - sclera, 0, 1
        )
        img = _over(img, np.array(f.skin) * 0.45, lid)
        brow_v = f.eye_y - f.brow_dy - 0.04 * f.ay * st.brow_raise
        brow = _ellipse(u, v, cu, brow_v, f.brow_len, f.brow_thick, e, side * f.brow_tilt)
        img = _over(img, np.array(f.hair) * 0.8, brow)
    return img


def _draw_nose_mouth(img, f: Face, u, v, e, st: State):
    tip = f.eye_y + f.nose_len
    ridge = _soft(
        np.maximum(
            np.abs(u - 0.25 * f.nose_w) - 0.12 * f.nose_w,
            np.abs(v - (f.eye_y + tip) / 2) - f.nose_len / 2,
        ),
        e,
    )
    img = _over(img, np.array(f.skin) * 0.75, 0.5 * ridge)
    for side in (-1, 1):
        nostril = _ellipse(u, v, side * 0.45 * f.nose_w, tip, 0.22 * f.nose_w, 0.1 * f.nose_w, e)
        img = _over(img, np.array(f.skin) * 0.35, 0.8 * nostril)
    lips = _ellipse(u, v, 0, f.mouth_y, f.mouth_w, f.lip_h * (1 + 1.5 * st.mouth_open), e)
    img = _over(img, f.lip, lips)
    gap = max(0.25 * f.lip_h, 1.5 * st.mouth_open * f.lip_h)
    inner = _ellipse(u, v, 0, f.mouth_y, 0.85 * f.mouth_w, gap, e)
    return _over(img, (0.25, 0.05, 0.05), inner)


def _draw_fringe(img, f: Face, u, v, e):
    edge_v = f.hairline * f.ay + f.fringe_wave * f.ay * np.sin(14 * u / f.ax)
    cap = _ellipse(u, v, 0, -0.35 * f.ay, f.hair_volume * f.ax, 0.85 * f.hair_volume * f.ay, e)
    fringe = cap * _soft(v - edge_v, e)
    strands = 1 + 0.08 * np.sin(90 * u + 7 * v)
    return _over(img, np.asarray(f.hair, dtype=np.float32) * strands[..., None], fringe)


def render_face(face: Face, scene: Scene, state: State, size: int) -> tuple[np.ndarray, Landmarks]:
    """Draw one frame of a procedural identity: float RGB in [0, 1] (before the camera)."""
    side = size * _SUPERSAMPLE
    pose = _pose(scene, state)
    u, v, e = _canonical(side, pose)
    img = scene.background.copy()
    img = _draw_body(img, face, u, v, e)
    img = _draw_head(img, face, u, v, e, scene.light)
    img = _draw_eyes(img, face, u, v, e, state)
    img = _draw_nose_mouth(img, face, u, v, e, state)
    img = _draw_fringe(img, face, u, v, e)
    img = cv2.resize(img.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    img = img * np.asarray(scene.white_balance, dtype=np.float32)
    return img, _face_landmarks(face, pose, size)


# ---------------------------------------------------------------- the photo identity

# Astronaut (Eileen Collins, NASA, public domain): landmarks read off the 512x512 image.
_ASTRO_POINTS = np.array([[202.0, 101.0], [246.0, 102.0], [225.0, 145.0]])
_ASTRO_CENTRE, _ASTRO_AXES = (224.0, 122.0), (44.0, 54.0)
_ASTRO_FACE = 0.22  # face half-width as a fraction of the frame, like the procedural faces


@lru_cache(maxsize=4)
def _astronaut(size: int) -> np.ndarray:
    """The photo, pre-blurred for the downscaling affine warp to `size` (anti-aliasing)."""
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
    cx, cy, sc, ang = _pose(scene, state)
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


# ---------------------------------------------------------------- camera


def camera(img: np.ndarray, scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Lens blur and sensor noise, then 8-bit quantisation: what every real frame gets."""
    out = img * 255.0
    if scene.blur > 0.05:
        out = cv2.GaussianBlur(out, (0, 0), scene.blur)
    out = out + rng.normal(0, scene.noise, out.shape)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- manipulations


def _colour_match(face: np.ndarray, target: np.ndarray, sigma: float) -> np.ndarray:
    """Low-frequency colour correction (face-swap style): move local means to the target's."""
    return face + cv2.GaussianBlur(target, (0, 0), sigma) - cv2.GaussianBlur(face, (0, 0), sigma)


def _poisson(src: np.ndarray, dst: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Gradient-domain (Poisson) cloning of src into dst inside `mask`: seamless boundary."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

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


# ---------------------------------------------------------------- videos and identities


@dataclass(frozen=True)
class Identity:
    """A person: procedural parameters, or None for the astronaut photo."""

    name: str  # "id007" or PHOTO
    face: Face | None  # None for the photo identity


@dataclass
class Video:
    """Rendered frames of one real video, kept in memory for the fakes that use it."""

    identity: Identity
    index: int
    frames: list[np.ndarray]
    landmarks: list[Landmarks]
    paths: list[str]


def render_video(
    ident: Identity, index: int, n_frames: int, size: int, seed: int, dataset: str
) -> Video:
    """All frames of one real video: one scene, per-frame motion/expression, camera noise."""
    key = (dataset, "video", ident.name, index)
    scene = sample_scene(_rng(seed, *key, "scene"), size * _SUPERSAMPLE)
    states = sample_states(_rng(seed, *key, "motion"), n_frames)
    flip = bool(_rng(seed, *key, "flip").random() < 0.5)
    frames, lms = [], []
    for k, state in enumerate(states):
        if ident.face is None:
            img, lm = render_photo(scene, state, size, flip)
        else:
            img, lm = render_face(ident.face, scene, state, size)
        frames.append(camera(img, scene, _rng(seed, *key, "noise", k)))
        lms.append(lm)
    return Video(ident, index, frames, lms, [])


def _require_identities(n_identities: int) -> None:
    if n_identities < 6:
        raise AblateError(
            f"n_identities={n_identities} is too small; use at least 6 (2 per split, "
            "so every fake can take its source from another identity of the same split)"
        )


def split_identities(n_identities: int, seed: int, dataset: str) -> dict[str, list[int]]:
    """Identity indices per split (about 60/20/20, at least 2 each): no identity spans splits."""
    _require_identities(n_identities)
    order = _rng(seed, dataset, "split").permutation(n_identities).tolist()
    n_val = n_test = max(2, round(0.2 * n_identities))
    return {
        "train": sorted(order[n_val + n_test :]),
        "val": sorted(order[:n_val]),
        "test": sorted(order[n_val : n_val + n_test]),
    }


# ---------------------------------------------------------------- building


@dataclass(frozen=True)
class BenchmarkParams:
    """Everything that determines the benchmark's bytes (hashed into the cache key)."""

    n_identities: int = DEFAULTS["n_identities"]
    videos_per_identity: int = DEFAULTS["videos_per_identity"]
    frames_per_video: int = DEFAULTS["frames_per_video"]
    image_size: int = DEFAULTS["image_size"]
    methods: tuple[str, ...] = DEFAULT_METHODS
    seed: int = DEFAULTS["seed"]
    photo_identity: bool = DEFAULTS["photo_identity"]

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(self.methods))
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods or len(set(self.methods)) != len(self.methods):
            raise AblateError(
                f"methods {list(self.methods)} invalid; choose distinct ones from {', '.join(METHODS)}"
            )
        if self.videos_per_identity < 1 or self.frames_per_video < 1:
            raise AblateError("videos_per_identity and frames_per_video must be at least 1")
        if self.image_size < 32:
            raise AblateError(f"image_size={self.image_size} is too small; use 32 or more")
        _require_identities(self.n_identities)

    def key(self) -> str:
        blob = json.dumps({"version": VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_benchmark(
    out_dir: str | Path,
    n_identities: int = DEFAULTS["n_identities"],
    videos_per_identity: int = DEFAULTS["videos_per_identity"],
    frames_per_video: int = DEFAULTS["frames_per_video"],
    image_size: int = DEFAULTS["image_size"],
    methods: Sequence[str] = DEFAULT_METHODS,
    seed: int = DEFAULTS["seed"],
    progress: bool = True,
    photo_identity: bool = DEFAULTS["photo_identity"],
) -> Path:
    """Render the benchmark into `out_dir`; returns the manifest path. The marker is written last."""
    params = BenchmarkParams(
        n_identities,
        videos_per_identity,
        frames_per_video,
        image_size,
        tuple(methods),
        seed,
        photo_identity,
    )
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).unlink(missing_ok=True)
    start = time.perf_counter()
    total = len(params.methods) * _frames_per_dataset(params)
    rows: list[dict] = []
    with tqdm(total=total, desc="embedded benchmark", unit="img", disable=not progress) as bar:
        for method in params.methods:
            rows += _build_dataset(out, method, params, bar)
    manifest = out / MANIFEST
    pd.DataFrame(rows, columns=COLUMNS).to_csv(manifest, index=False)
    info = {
        **asdict(params),
        "version": VERSION,
        "frames": len(rows),
        "seconds": round(time.perf_counter() - start, 2),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
    }
    (out / MARKER).write_text(json.dumps(info, indent=1))
    return manifest


def _frames_per_dataset(p: BenchmarkParams) -> int:
    n_ids = p.n_identities + int(p.photo_identity and photo_available())
    return 2 * n_ids * p.videos_per_identity * p.frames_per_video


def _identities(params: BenchmarkParams, dataset: str) -> dict[str, list[Identity]]:
    """This dataset's own procedural identities per split; the photo identity joins train."""
    splits = split_identities(params.n_identities, params.seed, dataset)
    people = {
        split: [
            Identity(f"id{i:03d}", sample_face(_rng(params.seed, dataset, "identity", i)))
            for i in idx
        ]
        for split, idx in splits.items()
    }
    if params.photo_identity and photo_available():
        people["train"].append(Identity(PHOTO, None))
    return people


def _build_dataset(out: Path, method: str, params: BenchmarkParams, bar) -> list[dict]:
    dataset = dataset_name(method)
    rows: list[dict] = []
    for split, people in _identities(params, dataset).items():
        videos = [
            render_video(ident, v, params.frames_per_video, params.image_size, params.seed, dataset)
            for ident in people
            for v in range(params.videos_per_identity)
        ]
        for video in videos:
            rows += _write_real(out, dataset, split, video)
            bar.update(len(video.frames))
        for video in videos:
            rows += _write_fake(out, dataset, split, method, video, videos, params)
            bar.update(len(video.frames))
    return rows


def _real_id(dataset: str, video: Video) -> str:
    return f"{dataset}/real/{video.identity.name}_v{video.index}"


def _save(out: Path, rel: str, img: np.ndarray) -> None:
    path = out / rel
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
        raise AblateError(f"could not write {path}; check the folder is writable and has space")


def _write_real(out: Path, dataset: str, split: str, video: Video) -> list[dict]:
    vid = _real_id(dataset, video)
    rows = []
    for k, img in enumerate(video.frames):
        rel = f"{vid}/f{k:02d}.png"
        _save(out, rel, img)
        video.paths.append(rel)
        rows.append(_row(rel, 0, vid, dataset, split, "real", k, rel, rel))
    return rows


def _write_fake(
    out: Path,
    dataset: str,
    split: str,
    method: str,
    target: Video,
    pool: list[Video],
    params: BenchmarkParams,
) -> list[dict]:
    """One fake video: the target video's frames with a source identity's face (same frame index)."""
    rng = _rng(params.seed, dataset, "fake", target.identity.name, target.index)
    donors = [v for v in pool if v.identity.name != target.identity.name]
    source = donors[int(rng.integers(len(donors)))]
    fake_params = sample_fake_params(method, rng)
    vid = f"{dataset}/fake/{target.identity.name}_v{target.index}_from_{source.identity.name}_v{source.index}"
    rows = []
    for k, (t_img, t_lm) in enumerate(zip(target.frames, target.landmarks, strict=True)):
        s_img, s_lm = source.frames[k], source.landmarks[k]
        img = manipulate(method, t_img, t_lm, s_img, s_lm, fake_params, _rng(params.seed, vid, k))
        rel = f"{vid}/f{k:02d}.png"
        _save(out, rel, img)
        rows.append(_row(rel, 1, vid, dataset, split, method, k, source.paths[k], target.paths[k]))
    return rows


def _row(path, label, video_id, dataset, split, method, frame, source_path, target_path) -> dict:
    return dict(
        zip(
            COLUMNS,
            (path, label, video_id, dataset, split, method, frame, source_path, target_path),
            strict=True,
        )
    )


# ---------------------------------------------------------------- cache


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """`cache_dir`, else $ABLATE_CACHE/benchmark, else ./results/benchmark."""
    from ablate.locations import cache_base

    if cache_dir is not None:
        return Path(cache_dir).expanduser().resolve()
    return cache_base() / "benchmark"


def is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file() and (folder / MANIFEST).is_file()


def ensure_benchmark(
    cache_dir: str | Path | None = None,
    *,
    n_identities: int = DEFAULTS["n_identities"],
    videos_per_identity: int = DEFAULTS["videos_per_identity"],
    frames_per_video: int = DEFAULTS["frames_per_video"],
    image_size: int = DEFAULTS["image_size"],
    methods: Sequence[str] = DEFAULT_METHODS,
    seed: int = DEFAULTS["seed"],
    photo_identity: bool = DEFAULTS["photo_identity"],
    progress: bool = False,
) -> Path:
    """Manifest of the cached benchmark for these parameters; builds it if missing or unfinished.

    The cache folder is `cache_root(cache_dir)/synthetic-<hash of parameters and
    VERSION>`. A build goes to a private temporary folder renamed into place
    only once complete (marker written last), so concurrent or interrupted
    builds never leave a half-written benchmark behind.
    """
    p = BenchmarkParams(
        n_identities,
        videos_per_identity,
        frames_per_video,
        image_size,
        tuple(methods),
        seed,
        photo_identity,
    )
    root = cache_root(cache_dir)
    final = root / f"synthetic-{p.key()}"
    if is_complete(final):
        return final / MANIFEST
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale(root, final.name)
    if final.exists():  # unfinished folder from an older layout or a crash: redo it
        shutil.rmtree(final)
    tmp = root / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        build_benchmark(tmp, **asdict(p), progress=progress)
        os.rename(tmp, final)
    except OSError:
        if not is_complete(final):  # not a lost race with another builder: a real failure
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final / MANIFEST


def _remove_stale(root: Path, name: str) -> None:
    """Delete temporary folders of builds that died long ago (a live build is recent)."""
    for tmp in root.glob(f".{name}.tmp-*"):
        if time.time() - tmp.stat().st_mtime > _STALE_TMP_S:
            shutil.rmtree(tmp, ignore_errors=True)
