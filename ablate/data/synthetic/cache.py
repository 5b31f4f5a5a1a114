"""Where the embedded benchmark is cached, and when it is (re)built."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from ablate.data.synthetic.benchmark import (
    DEFAULT_METHODS,
    DEFAULTS,
    MANIFEST,
    MARKER,
    BenchmarkParams,
    build_benchmark,
)
from ablate.locations import cache_base

_STALE_TMP_S = 3600  # unfinished builds older than this are removed by ensure_benchmark


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """`cache_dir`, else $ABLATE_CACHE/benchmark, else ./results/benchmark."""
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
