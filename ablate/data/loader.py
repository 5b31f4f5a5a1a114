"""Manifests -> datasets -> loaders. The only place a recipe meets the torch side of the data layer.

Names become manifests in `ablate.data.sources` (torch-free; its names are re-exported here).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from ablate.core.errors import AblateError
from ablate.core.schema import setting
from ablate.core.selection import held_out_method, proxy_name
from ablate.data.dataset import FrameCache, ManifestDataset
from ablate.data.host_plan import frame_cache_dir, needed_files
from ablate.data.sampler import ResumableLoader
from ablate.data.sources import (
    MANIFEST_DIR,
    benchmark_datasets,
    dataset_overrides,
    recipe_overrides,
    resolve_dataset,
)
from ablate.recipe import is_guided

if TYPE_CHECKING:
    from ablate.sharding import Shard

__all__ = ["MANIFEST_DIR", "benchmark_datasets", "resolve_dataset", "source_table",
           "split_rows", "train_and_val", "train_val_proxy", "proxy_rows", "eval_frame_cache",
           "make_loader"]


def split_rows(table: pd.DataFrame, split: str, name: str) -> pd.DataFrame:
    rows = table[table["split"] == split]
    if rows.empty:
        have = ", ".join(sorted(table["split"].unique())) or "none"
        raise AblateError(f"dataset {name} has no {split!r} rows (it has: {have})")
    return rows.reset_index(drop=True)


def full_source(cfg: DictConfig) -> pd.DataFrame:
    """The training source's rows, every split and method (a `holdout:METHOD` proxy checked
    against them): what `source_table` and `proxy_rows` cut, read once per run."""
    table = resolve_dataset(cfg.data.train, recipe_overrides(cfg))
    method = held_out_method(proxy_name(cfg))
    if method is not None:
        _check_held_out(table, method, str(cfg.data.train))
    return table


def source_table(cfg: DictConfig, full: pd.DataFrame | None = None) -> pd.DataFrame:
    """The training source's rows (all splits), less a `train.proxy=holdout:METHOD` method:
    a held-out method is neither trained on nor part of the source val split. `full`:
    `full_source(cfg)` when the caller has it already."""
    table = full_source(cfg) if full is None else full
    method = held_out_method(proxy_name(cfg))
    if method is None:
        return table
    return table[table["method"] != method].reset_index(drop=True)


def _check_held_out(table: pd.DataFrame, method: str, name: str) -> None:
    """A held-out method must be one the training set has fakes of (and not all of them)."""
    methods = sorted(set(table.loc[table["label"] == 1, "method"].astype(str)))
    if method not in methods:
        raise AblateError(f"train.proxy=holdout:{method}: {name} has no fakes of method "
                          f"{method!r} (its methods: {', '.join(methods) or 'none'})")
    if len(methods) == 1:
        raise AblateError(f"train.proxy=holdout:{method}: {method} is the only method of "
                          f"{name}; nothing would be left to train on")


def proxy_rows(cfg: DictConfig, full: pd.DataFrame | None = None) -> pd.DataFrame | None:
    """The val rows `train.select=proxy` chooses on (None without `train.proxy`): a dataset's
    val split, or for `holdout:METHOD` the training source's val fakes of METHOD with its val
    reals (the reals are shared with the source val split: AUC needs both classes). `full`:
    `full_source(cfg)` when the caller has it already."""
    name = proxy_name(cfg)
    if name is None:
        return None
    method = held_out_method(name)
    if method is None:
        rows = split_rows(resolve_dataset(name, dataset_overrides(cfg, name)), "val", name)
    else:
        table = full_source(cfg) if full is None else full
        val = split_rows(table, "val", cfg.data.train)
        rows = val[(val["method"] == method) | (val["label"] == 0)].reset_index(drop=True)
    if rows["label"].nunique() < 2:
        raise AblateError(f"train.proxy={name}: its val split has only "
                          f"{'fakes' if rows['label'].iloc[0] == 1 else 'reals'}; an AUC to "
                          "choose a step on needs both")
    return rows


def _dataset(cfg: DictConfig, rows: pd.DataFrame, guided: bool, augment: str,
             cache: FrameCache) -> ManifestDataset:
    return ManifestDataset(
        rows, cfg.image_size, guided=guided, augment=augment, cache=cache,
        max_skip_fraction=cfg.data.max_skip_fraction,
    )


def train_and_val(cfg: DictConfig) -> tuple[ManifestDataset, ManifestDataset]:
    """The source domain's train split (guided unless the recipe is the baseline) and val
    split (for selection only)."""
    train, val, _ = train_val_proxy(cfg)
    return train, val


def train_val_proxy(
    cfg: DictConfig,
) -> tuple[ManifestDataset, ManifestDataset, ManifestDataset | None]:
    """`train_and_val` and the proxy's val rows (`proxy_rows`; None without `train.proxy`),
    all three in one frame cache planned over their frames together."""
    full = full_source(cfg)
    table = source_table(cfg, full)
    _refuse_shared_videos(table, str(cfg.data.train))
    train_rows = split_rows(table, "train", cfg.data.train)
    val_rows = split_rows(table, "val", cfg.data.train)
    extra = proxy_rows(cfg, full)
    # RAM or the disk store, decided before a frame is decoded (ablate/data/host_plan.py)
    files = needed_files(train_rows, is_guided(cfg)) | set(val_rows["path"])
    files |= set(extra["path"]) if extra is not None else set()
    cache = FrameCache(frame_cache_dir(cfg, files, "train"))

    # the baseline needs no source/target frames: fakes without pairs are training rows too
    train = _dataset(cfg, train_rows, is_guided(cfg), cfg.data.augment, cache)
    val = _dataset(cfg, val_rows, False, "none", cache)
    proxy = _dataset(cfg, extra, False, "none", cache) if extra is not None else None
    return train, val, proxy


def eval_frame_cache(cfg: DictConfig) -> FrameCache:
    """Evaluation streams its frames: each is decoded when its batch is scored and dropped
    after (the corrupt-frame pass before scoring decodes and drops too), so memory stays
    flat however large the test sets are (scripts/bench_eval_memory.py measures it); test
    frames are read each once, so holding them would buy nothing. With
    `data.frame_cache_dir` set they are read from (and added to) that memory-mapped store."""
    return FrameCache(setting(cfg, "data.frame_cache_dir"), memory=False)


def _refuse_shared_videos(table: pd.DataFrame, name: str) -> None:
    """A video in two splits of the source domain would let selection (val) see training or
    test frames: DeepfakeBench, for one, lists Celeb-DF's and DFDC-P's val videos as test."""
    per_video = table.groupby(["dataset", "video_id"])["split"].agg(lambda s: sorted(set(s)))
    shared = per_video[per_video.map(len) > 1]
    if len(shared):
        (_, video), splits = next(iter(shared.items()))
        raise AblateError(
            f"training source {name}: {len(shared)} video(s) are in more than one split, e.g. "
            f"{video} in {' and '.join(splits)}; checkpoints would be chosen on frames "
            "that are also trained or tested on. Give each video one split (`ablate data "
            "check` lists them)")


def make_loader(dataset: ManifestDataset, batch_size: int, shuffle: bool, seed: int = 0,
                workers: int = 0, pin_memory: bool = False, prefetch: int = 2,
                shard: Shard | None = None) -> DataLoader:
    """Each epoch's order is a function of (seed, epoch), so a resumed run can `seek` to
    any batch without loading the ones before it (ablate/data/sampler.py).

    `workers` processes load and augment batches ahead of the step (`prefetch` batches
    each), `pin_memory` puts them in page-locked memory for an asynchronous copy to the
    GPU; the batches are the same as with neither (each frame's augmentation is seeded
    from (seed, epoch, index)). With a `shard`, `batch_size` is the global batch, of which
    this data-parallel process loads its slice.
    """
    extra = {"prefetch_factor": prefetch} if workers else {}
    return ResumableLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, seed=seed,
        drop_last=shuffle and len(dataset) > batch_size, num_workers=workers,
        pin_memory=pin_memory, shard=shard, **extra,
    )
