"""Decoded frames on disk, in memory-mapped uint8 shards that runs, trials and loader workers
share through the page cache.

A real training set does not fit in memory decoded (FF++ at 256 px: ~190 KiB a frame, tens
of GB), and one small file per frame costs a file open per read. Here each batch of newly
decoded frames becomes one shard: a raw uint8 array [n, S, S, 3] and a JSON list of the
frames' keys, written to temporary names and renamed, the index last, so a shard is seen
whole or not at all (two trials building at once each add their own; a key found twice is
served from either). A key is the file's absolute path, modification time and size: an
edited frame is decoded again, never served stale. Processes that preload the same set of
frames at once (the processes of a data-parallel run, trials on one dataset) take turns
through `claim`: the first decodes, the others find its shards.

    <folder>/<S>px/shard-<id>.u8     the pixels, row i = the i-th key
    <folder>/<S>px/shard-<id>.json   {"size": S, "keys": [...]}
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np

log = logging.getLogger(__name__)

FLUSH_EVERY = 1024  # frames held before they are written as a shard (lazy decoding)


def frame_key(path: str) -> str:
    """What identifies a decoded frame: the file and the version of it on disk."""
    stat = os.stat(path)
    return f"{os.path.abspath(path)}|{stat.st_mtime_ns}|{stat.st_size}"


_HELD: set[Path] = set()  # the claims this process holds


def _lock(handle: IO[str], folder: Path) -> bool:
    """flock `handle`, waiting (and saying so) while another process holds it; False where
    the file system refuses locks."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        log.warning("another process is decoding these frames into %s; waiting for it "
                    "to store them", folder)
    except OSError as err:
        log.warning("frame store %s cannot be locked (%s); decoding without waiting for "
                    "other processes", folder, err.strerror)
        return False
    fcntl.flock(handle, fcntl.LOCK_EX)
    return True


class FrameStore:
    """The shards of one image size under `folder`; `get` serves memory-mapped rows (treat
    them as read only), `add` holds new frames until `flush` writes them as one shard."""

    def __init__(self, folder: str | Path, size: int) -> None:
        self.size = size
        self.folder = Path(folder).expanduser() / f"{size}px"
        self.folder.mkdir(parents=True, exist_ok=True)
        self._rows: dict[str, tuple[Path, int]] = {}  # key -> (shard, row)
        self._maps: dict[Path, np.memmap] = {}
        self._pending: dict[str, np.ndarray] = {}
        self.refresh()

    def refresh(self) -> None:
        """Learn the shards other processes have written since."""
        for index in sorted(self.folder.glob("shard-*.json")):
            pixels = index.with_suffix(".u8")
            if pixels in self._maps or not pixels.is_file():
                continue
            try:
                meta = json.loads(index.read_text())
            except (OSError, ValueError):
                continue  # not ours, or damaged: its frames are decoded again
            keys = meta.get("keys", [])
            if meta.get("size") != self.size or pixels.stat().st_size != len(keys) * self._bytes:
                continue
            self._maps[pixels] = None  # type: ignore[assignment] - opened on first read
            for row, key in enumerate(keys):
                self._rows.setdefault(key, (pixels, row))

    @property
    def _bytes(self) -> int:
        return self.size * self.size * 3

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: str) -> np.ndarray | None:
        """The frame [S, S, 3] uint8, or None when it is not stored."""
        if key in self._pending:
            return self._pending[key]
        found = self._rows.get(key)
        if found is None:
            return None
        pixels, row = found
        shard = self._maps.get(pixels)
        if shard is None:
            # copy-on-write: torch can wrap a row without a read-only warning, and a write
            # to it (none is made) would stay in this process, never reach the file
            shard = np.memmap(pixels, dtype=np.uint8, mode="c").reshape(
                -1, self.size, self.size, 3)  # [n, S, S, 3]
            self._maps[pixels] = shard
        return shard[row]

    def add(self, key: str, frame: np.ndarray) -> None:
        if frame.shape != (self.size, self.size, 3) or frame.dtype != np.uint8:
            raise ValueError(f"a stored frame is uint8 [{self.size}, {self.size}, 3], "
                             f"not {frame.dtype} {list(frame.shape)}")
        self._pending[key] = frame
        if len(self._pending) >= FLUSH_EVERY:
            self.flush()

    @contextmanager
    def claim(self, files: Iterable[str]) -> Iterator[None]:
        """Hold while decoding `files` into this store: another process claiming the same
        files waits here, then finds them stored instead of decoding (and storing) them a
        second time. The lock is the OS's (flock): it goes with a killed process. Where the
        folder cannot be locked (read only, a file system without locks) nobody waits."""
        names = "\n".join(sorted(files)).encode()
        lock = self.folder / f".decoding-{hashlib.sha256(names).hexdigest()[:16]}.lock"
        if lock in _HELD:  # claimed already by this process: one flock per open file
            yield
            return
        try:
            handle = open(lock, "a")  # noqa: SIM115 - held across the yield below
        except OSError as err:
            log.warning("frame store %s cannot be locked (%s); decoding without waiting for "
                        "other processes", self.folder, err.strerror)
            handle = None
        try:
            if handle is not None and not _lock(handle, self.folder):
                handle.close()
                handle = None
            _HELD.add(lock)
            self.refresh()  # what the process before us stored
            yield
        finally:
            _HELD.discard(lock)
            self.flush()  # before the next process looks
            if handle is not None:
                handle.close()  # releases the flock

    def flush(self) -> None:
        """Write the held frames as one shard (pixels first, the index that reveals them last)."""
        if not self._pending:
            return
        name = f"shard-{uuid.uuid4().hex}"
        keys = list(self._pending)
        pixels, index = self.folder / f"{name}.u8", self.folder / f"{name}.json"
        tmp = self.folder / f".{name}.tmp"
        with open(tmp, "wb") as handle:
            for key in keys:
                handle.write(np.ascontiguousarray(self._pending[key]).tobytes())
        os.replace(tmp, pixels)
        tmp.write_text(json.dumps({"size": self.size, "keys": keys}))
        os.replace(tmp, index)
        self._pending.clear()
        self.refresh()
