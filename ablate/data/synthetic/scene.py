"""What a real video is filmed in: the scene, the per-frame head motion, the camera.

A real video is one scene (background texture, lighting, white balance, camera
noise/blur, base pose) and `frames_per_video` frames with pose jitter, talking
mouth and blinks; every rendered frame then goes through the same camera.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

SUPERSAMPLE = 2  # procedural faces are drawn at 2x and area-downsampled (anti-aliasing)


@dataclass(frozen=True)
class Landmarks:
    """Where the face is in a frame, in pixels: what a face-swap pipeline would detect."""

    points: np.ndarray  # 3 x 2 (x, y): left eye, right eye, mouth centre
    centre: tuple[float, float]  # face ellipse centre (x, y)
    axes: tuple[float, float]  # face ellipse semi-axes (along its own x, y)
    angle: float  # ellipse rotation, radians, image coordinates (y down)


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
        # imported here, inside the try, so that a failing import lands in the except
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


def head_pose(scene: Scene, state: State) -> tuple[float, float, float, float]:
    """The frame's head pose (cx, cy, scale, angle): the scene's base pose plus the frame's offset."""
    cx, cy, sc, ang = scene.pose
    return cx + state.dx, cy + state.dy, sc * (1 + state.dscale), ang + state.dangle


def camera(img: np.ndarray, scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Lens blur and sensor noise, then 8-bit quantisation: what every real frame gets."""
    out = img * 255.0
    if scene.blur > 0.05:
        out = cv2.GaussianBlur(out, (0, 0), scene.blur)
    out = out + rng.normal(0, scene.noise, out.shape)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
