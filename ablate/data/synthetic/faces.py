"""Procedural synthetic people: drawing one frame of a parametric face.

Each identity (a synthetic person) is a set of face parameters (skin, face shape,
eyes, brows, nose, mouth, hair, ears, clothes, skin texture) drawn once; a frame
draws that face in a scene's pose and a frame's expression, supersampled and
area-downsampled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ablate.data.synthetic.scene import SUPERSAMPLE, Landmarks, Scene, State, head_pose


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
    side = size * SUPERSAMPLE
    pose = head_pose(scene, state)
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
