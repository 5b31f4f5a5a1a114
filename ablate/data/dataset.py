"""A torch Dataset over manifest rows: (x, s, t, label, video_id) for guided training.

Face crops are small and re-read every epoch, so each file is decoded and
resized once: into an in-memory cache of uint8 arrays (S*S*3 bytes per frame,
about 190 KiB at 256 px) and/or memory-mapped shards under `cache_dir`
(`data.frame_cache_dir`) that later runs, trials and loader workers share; a run whose
frames exceed its host budget is sent to the store before any is decoded
(ablate/data/host_plan.py). By default every needed file is decoded at construction
(`preload=True`, in threads, in the order one thread would), which is also how corrupt or
missing frames are found before training starts: rows that need such a file are skipped
and reported, and more than `max_skip_fraction` of them is an error. Nothing is dropped
silently.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from ablate.core.errors import AblateError
from ablate.data.augment import Augment, build_augment
from ablate.data.frame_store import FrameStore, frame_key
from ablate.data.host_plan import needed_files
from ablate.data.manifest import SPLITS, load_manifest, validate

log = logging.getLogger(__name__)

EXAMPLES = 5


def decode_image(path: str, size: int) -> np.ndarray:
    """Decode an image file to RGB uint8 [size, size, 3]; raises on a corrupt file."""
    # lazy: PIL only once frames are read
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BICUBIC)
        return np.asarray(img, dtype=np.uint8).copy()


def _try_decode(path: str, size: int) -> np.ndarray | BaseException:
    """decode_image in a pool thread: a bad file's error is returned, not raised, so the
    frames after it still come back in order."""
    try:
        return decode_image(path, size)
    except Exception as err:  # noqa: BLE001 - PIL raises many types for a bad file
        return err


def decode_threads() -> int:
    """Threads that decode frames ahead of training: the CPU threads torch is given (Ray
    sets them per trial, OMP_NUM_THREADS), at most the machine's cores."""
    return max(1, min(torch.get_num_threads(), os.cpu_count() or 1))


class FrameCache:
    """Decoded, resized frames keyed by (path, size): memory first, then the memory-mapped
    frame store under `cache_dir` (ablate/data/frame_store.py), which later runs, other
    trials and loader workers share. A frame edited on disk is decoded again.

    With a store, only its memory-mapped rows are kept in memory (and the frames decoded since
    its last flush, in the store): the first run of a large set must not hold it all decoded.
    """

    def __init__(self, cache_dir: str | Path | None = None, memory: bool = True) -> None:
        self.memory = memory
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self._arrays: dict[tuple[str, int], np.ndarray] = {}
        self._stores: dict[int, FrameStore] = {}

    def get(self, path: str, size: int) -> np.ndarray:
        array = self.lookup(path, size)
        return self.put(path, size, decode_image(path, size)) if array is None else array

    def lookup(self, path: str, size: int) -> np.ndarray | None:
        """The frame if held in memory or stored on disk, else None (nothing is decoded)."""
        key = (path, size)
        if key in self._arrays:
            return self._arrays[key]
        store = self._store(size)
        if store is None:
            return None
        array = store.get(frame_key(path))
        if self.memory and isinstance(array, np.memmap):  # kept here once mapped
            self._arrays[key] = array
        return array

    def put(self, path: str, size: int, array: np.ndarray) -> np.ndarray:
        """Keep a frame just decoded: in the store where there is one (which holds it until
        its next flush), else in memory (unless `memory` is off)."""
        store = self._store(size)
        if store is not None:
            store.add(frame_key(path), array)
        elif self.memory:
            self._arrays[(path, size)] = array
        return array

    def preload(self, files: list[str], size: int, desc: str = "") -> dict[str, str]:
        """Decode every one of `files` not held yet, in threads (PIL releases the GIL while it
        decodes and resizes), kept in the order given, as one thread would: the same arrays
        and the same store shards. Returns file -> "unreadable images" for those that fail."""
        problems: dict[str, str] = {}
        todo = []
        for file in files:
            try:
                if self.lookup(file, size) is None:
                    todo.append(file)
            except Exception:  # noqa: BLE001 - e.g. gone since it was listed
                problems[file] = "unreadable images"
        threads = decode_threads()
        chunk = threads * 16  # decoded frames held at once beyond the cache: a few MB
        with ThreadPoolExecutor(threads) as pool, tqdm(
                total=len(todo), desc=desc, unit="img", disable=None, leave=False) as bar:
            for start in range(0, len(todo), chunk):
                part = todo[start:start + chunk]
                for file, found in zip(part, pool.map(_try_decode, part, [size] * len(part)),
                                       strict=True):
                    try:
                        if isinstance(found, BaseException):
                            raise found
                        self.put(file, size, found)
                    except Exception:  # noqa: BLE001 - PIL raises many types for a bad file
                        problems[file] = "unreadable images"
                    bar.update()
        return problems

    def flush(self) -> None:
        """Write newly decoded frames to the store (a no-op without one)."""
        for store in self._stores.values():
            store.flush()

    @contextmanager
    def decoding(self, files: Iterable[str], size: int) -> Iterator[None]:
        """Around decoding `files` ahead of use: with a store, one process at a time decodes
        a given set (`FrameStore.claim`) and what it decoded is flushed at the end."""
        store = self._store(size)
        with store.claim(files) if store is not None else nullcontext():
            yield

    def stored(self, size: int) -> int:
        """Frames of `size` in the store on disk (0 without one)."""
        store = self._store(size)
        return 0 if store is None else len(store)

    def __len__(self) -> int:
        return len(self._arrays)

    def _store(self, size: int) -> FrameStore | None:
        if self.cache_dir is None:
            return None
        if size not in self._stores:
            self._stores[size] = FrameStore(self.cache_dir, size)
        return self._stores[size]


def unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 channels-last pixels ([..., S, S, 3]) -> float [..., 3, S, S] in [-1, 1]."""
    return pixels.movedim(-1, -3).float().div(127.5).sub(1.0)


def _augmented(pixels: torch.Tensor, augment: Augment) -> torch.Tensor:
    """uint8 [S, S, 3] -> augment on uint8 [3, S, S] -> float [3, S, S] in [-1, 1]."""
    return unit_range(augment(pixels.movedim(-1, -3)).movedim(-3, -1))


@dataclass(frozen=True)
class Skipped:
    """A manifest row left out, and why."""

    path: str
    reason: str
    file: str


class ManifestDataset(Dataset):
    """Manifest rows -> dicts of tensors; images in [-1, 1], shape [3, S, S].

    Item: {"image", "source", "target", "clean", "label" (float scalar), "video_id", "path"};
    "source"/"target"/"clean" only when `guided` (reals use their own frame for both).
    `augment` names a preset of `ablate.data.augment` applied to "image" only; source
    and target are only resized, as in the released code, and "clean" is the image
    un-augmented (what augment="none" gives), from which weight targets are computed.
    With `preload=False` frames are decoded on first use instead: missing files are
    still skipped at construction, but a corrupt one then raises AblateError when reached.
    Pass one `cache` to several datasets to share decoded frames between them.
    """

    def __init__(
        self,
        manifest_df: pd.DataFrame | str | Path,
        image_size: int,
        split: str | None = None,
        guided: bool = False,
        augment: str = "none",
        cache_dir: str | Path | None = None,
        memory_cache: bool = True,
        preload: bool = True,
        max_skip_fraction: float = 0.05,
        cache: FrameCache | None = None,
    ) -> None:
        if image_size <= 0:
            raise AblateError(f"image_size must be a positive integer, got {image_size}")
        self.image_size = image_size
        self.guided = guided
        self.augment = augment
        self._augment = build_augment(augment, image_size)  # validates the name
        self.cache = cache if cache is not None else FrameCache(cache_dir, memory=memory_cache)
        rows = _select(_as_table(manifest_df), split)
        problems = self._file_problems(rows, preload)
        reasons = self._row_reasons(rows, problems)
        self.skipped = [
            Skipped(rows.at[i, "path"], reason, _bad_file(rows.loc[i], problems, reason))
            for i, reason in reasons.dropna().items()
        ]
        self.rows = rows[reasons.isna()].reset_index(drop=True)
        # plain dicts: a pandas .iloc per item cost more than decoding a cached frame
        self._records = self.rows.to_dict("records")
        self._report(len(rows), split, max_skip_fraction)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """`key`: an index (augmented from torch's global RNG), or (index, seed) as the
        training loader's sampler gives (augmented from `seed` alone, whichever process
        loads it; the global RNG is left as it was)."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        row = self._records[index]
        pixels = self._pixels(row["path"])  # [S, S, 3] uint8
        clean = unit_range(pixels)  # [3, S, S] in [-1, 1]
        if self.augment == "none":
            image = clean
        elif seed is None:
            image = _augmented(pixels, self._augment)
        else:
            with torch.random.fork_rng(devices=[]):  # the CPU generator, not CUDA's
                torch.default_generator.manual_seed(seed)
                image = _augmented(pixels, self._augment)
        item = {
            "image": image,
            "label": torch.tensor(float(row["label"])),
            "video_id": str(row["video_id"]),
            "path": str(row["path"]),
        }
        if self.guided:
            real = row["label"] == 0
            item["clean"] = clean
            item["source"] = clean if real else self._load(row["source_path"])
            item["target"] = clean if real else self._load(row["target_path"])
        return item

    def images(self, indices: list[int]) -> torch.Tensor:
        """Frames `indices` as one batch [N, 3, S, S] in [-1, 1], no augmentation.

        Evaluation's path: one stack and one conversion per batch instead of one
        per item plus a DataLoader collate (which cost a quarter of eval time).
        """
        arrays = [self.cache.get(self._records[i]["path"], self.image_size) for i in indices]
        return unit_range(torch.from_numpy(np.stack(arrays)))  # [N, S, S, 3] uint8 -> [N, 3, S, S]

    def skip_summary(self) -> str:
        """Counts of skipped rows by reason, with example files."""
        if not self.skipped:
            return "no rows skipped"
        by_reason = Counter(s.reason for s in self.skipped)
        parts = []
        for reason, n in by_reason.items():
            files = [s.file for s in self.skipped if s.reason == reason][:EXAMPLES]
            parts.append(f"{n} {reason} (e.g. {', '.join(files)})")
        return f"skipped {len(self.skipped)} rows: " + "; ".join(parts)

    # -------------------------------------------------------------- internals

    def _pixels(self, path: str) -> torch.Tensor:
        """The cached frame as uint8 [S, S, 3] (shares memory with the cache: read only)."""
        try:
            array = self.cache.get(path, self.image_size)
        except Exception as err:  # noqa: BLE001 - only reachable with preload=False
            raise AblateError(
                f"cannot decode frame {path} ({type(err).__name__}); run "
                "`ablate data check` on the manifest, or keep preload=True to skip bad frames"
            ) from None
        return torch.from_numpy(array)

    def _load(self, path: str) -> torch.Tensor:
        return unit_range(self._pixels(path))  # [S, S, 3] uint8 -> [3, S, S]

    def _row_reasons(self, rows: pd.DataFrame, problems: dict[str, str]) -> pd.Series:
        """Reason each row is unusable (NaN if usable): its image or, guided, a partner."""
        reason = rows["path"].map(problems)
        if self.guided:
            fake = rows["label"] == 1
            for col in ("source_path", "target_path"):
                partner = rows[col].map(problems).where(fake)
                reason = reason.fillna(partner)
            no_pair = fake & (rows["source_path"].isna() | rows["target_path"].isna())
            reason = reason.mask(no_pair & reason.isna(), "fakes without source/target")
        return reason

    def _file_problems(self, rows: pd.DataFrame, preload: bool) -> dict[str, str]:
        """file -> reason it is unusable; with preload, decodes every file into the cache."""
        files = needed_files(rows, self.guided)
        ordered = sorted(files)
        problems = {f: "missing files" for f in ordered if not os.path.isfile(f)}
        if preload:
            desc = f"decoding frames at {self.image_size}px"
            with self.cache.decoding(files, self.image_size):
                problems.update(self.cache.preload(
                    [f for f in ordered if f not in problems], self.image_size, desc))
        self.cache.flush()
        return problems

    def _report(self, total: int, split: str | None, max_skip_fraction: float) -> None:
        if not self.skipped:
            return
        message = f"{self.skip_summary()} of {total} ({'all splits' if split is None else split})"
        if len(self.skipped) > max_skip_fraction * total:
            raise AblateError(
                f"{message}: more than max_skip_fraction={max_skip_fraction:g}; "
                "fix the frames or the manifest (`ablate data check`)"
            )
        log.warning(message)

    def __repr__(self) -> str:
        return (
            f"ManifestDataset({len(self)} rows, size={self.image_size}, guided={self.guided},"
            f" skipped={len(self.skipped)})"
        )


def _as_table(manifest: pd.DataFrame | str | Path) -> pd.DataFrame:
    """A manifest path is loaded (paths resolved); a table is validated as is."""
    if isinstance(manifest, str | Path):
        return load_manifest(manifest)
    return validate(manifest, where="manifest table")


def _select(df: pd.DataFrame, split: str | None) -> pd.DataFrame:
    if split is None:
        return df.reset_index(drop=True)
    if split not in SPLITS:
        raise AblateError(f"split must be one of {', '.join(SPLITS)} or None, got {split!r}")
    rows = df[df["split"] == split].reset_index(drop=True)
    if rows.empty:
        found = ", ".join(sorted(df["split"].unique()))
        raise AblateError(
            f"manifest has no {split} rows (it has: {found}); rebuild it with that split"
        )
    return rows


def _bad_file(row: pd.Series, problems: dict[str, str], reason: str) -> str:
    """The file that made `row` unusable (for the report's examples)."""
    for col in ("path", "source_path", "target_path"):
        if problems.get(row[col]) == reason:
            return row[col]
    return row["path"]
