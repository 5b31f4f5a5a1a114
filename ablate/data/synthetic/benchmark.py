"""Building the embedded benchmark: identities, real and fake videos, PNGs and a manifest.

Datasets: one per manipulation family ("synth-blend", ...), each with its *own*
identities (synthetic people), reals and fakes; splits by identity (60/20/20).

Everything is seeded by (seed, dataset, role, index), so a dataset does not
depend on which other families were built, and the same seed gives the same
PNG bytes (for the same numpy/OpenCV versions).
"""

from __future__ import annotations

import hashlib
import json
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from ablate.core.errors import AblateError
from ablate.data.manifest import COLUMNS
from ablate.data.synthetic.faces import Face, render_face, sample_face
from ablate.data.synthetic.manipulations import METHODS, manipulate, sample_fake_params
from ablate.data.synthetic.photo import PHOTO, photo_available, render_photo
from ablate.data.synthetic.scene import (
    SUPERSAMPLE,
    Landmarks,
    camera,
    sample_scene,
    sample_states,
)

VERSION = "2"  # bump whenever the generator's output changes (invalidates caches)
DEFAULT_METHODS = METHODS
SPLITS = ("train", "val", "test")
MANIFEST = "manifest.csv"
MARKER = "COMPLETE.json"  # written last: its presence means the build finished
DEFAULTS = {
    "n_identities": 40,
    "videos_per_identity": 2,
    "frames_per_video": 8,
    "image_size": 64,
    "methods": DEFAULT_METHODS,
    "seed": 0,
    "photo_identity": True,
}


def dataset_name(method: str) -> str:
    """Dataset name of a manipulation family: each family is its own dataset."""
    return f"synth-{method}"


DATASETS = tuple(dataset_name(m) for m in DEFAULT_METHODS)  # what ensure_benchmark() builds


# ---------------------------------------------------------------- seeding


def _rng(seed: int, *keys: object) -> np.random.Generator:
    """Independent stream per (seed, keys): adding a family never shifts another's draws."""
    words = [int(seed) & 0xFFFFFFFF] + [zlib.crc32(str(k).encode()) for k in keys]
    return np.random.default_rng(words)


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
    scene = sample_scene(_rng(seed, *key, "scene"), size * SUPERSAMPLE)
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
