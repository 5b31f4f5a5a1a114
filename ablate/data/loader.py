"""Dataset names -> manifests -> loaders. The only place a recipe meets the data layer.

A dataset is named in one of three ways:
- a manifest file (`.csv`/`.parquet`) path: used as it is;
- a family of the embedded benchmark (`synth-blend`, `synth-colour`, ...): built once, cached;
- a dataset config `configs/data/<name>.yaml` (adapter + root): its manifest is
  built from the frame folders on first use and reused after.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from ablate.data.dataset import FrameCache, ManifestDataset
from ablate.data.manifest import load_manifest
from ablate.errors import AblateError

MANIFEST_DIR = Path("results/manifests")


def benchmark_datasets() -> list[str]:
    """Names of the embedded benchmark's datasets (no build needed to list them)."""
    from ablate.data.synthetic import DEFAULT_METHODS, dataset_name

    return [dataset_name(m) for m in DEFAULT_METHODS]


def resolve_dataset(name: str, settings: dict | None = None) -> pd.DataFrame:
    """The frame table of one dataset (all splits), as described in the module doc."""
    path = Path(name).expanduser()
    if path.suffix in (".csv", ".parquet"):
        if not path.is_file():
            raise AblateError(f"manifest {path} does not exist; build one with `ablate data manifest`")
        return load_manifest(path)
    if name in benchmark_datasets():
        from ablate.data.synthetic import ensure_benchmark

        table = load_manifest(ensure_benchmark())
        return table[table["dataset"] == name].reset_index(drop=True)
    from ablate.locations import find
    from ablate.recipe import options

    config = find("configs", f"data/{name}.yaml")
    if config is None:
        known = ", ".join(benchmark_datasets() + options("data"))
        raise AblateError(f"unknown dataset {name!r}; use a manifest path or one of: {known}")
    data_cfg = OmegaConf.to_container(OmegaConf.load(config), resolve=True)
    # recipe-level settings apply only where the dataset has them (source_is: FF++ only)
    data_cfg.update({k: v for k, v in (settings or {}).items() if k in data_cfg})
    manifest = data_cfg.get("manifest") or str(MANIFEST_DIR / f"{name}.csv")
    if Path(manifest).is_file():
        return load_manifest(manifest)
    if not data_cfg.get("root"):
        raise AblateError(
            f"dataset {name} has no manifest yet and no root: set root in {config} "
            f"(the folder of extracted face frames) or pass a manifest path instead of {name!r}"
        )
    from ablate.data.adapters import build_from_config

    build_from_config({**data_cfg, "manifest": manifest})
    return load_manifest(manifest)


def _adapter_overrides(cfg: DictConfig) -> dict:
    """Recipe-level data settings forwarded to an adapter (which original is the source)."""
    return {"source_is": cfg.data.source_is} if cfg.data.get("source_is") else {}


def split_rows(table: pd.DataFrame, split: str, name: str) -> pd.DataFrame:
    rows = table[table["split"] == split]
    if rows.empty:
        have = ", ".join(sorted(table["split"].unique())) or "none"
        raise AblateError(f"dataset {name} has no {split!r} rows (it has: {have})")
    return rows.reset_index(drop=True)


def source_table(cfg: DictConfig) -> pd.DataFrame:
    return resolve_dataset(cfg.data.train, _adapter_overrides(cfg))


def _dataset(cfg: DictConfig, rows: pd.DataFrame, guided: bool, augment: str,
             cache: FrameCache) -> ManifestDataset:
    return ManifestDataset(
        rows, cfg.image_size, guided=guided, augment=augment, cache=cache,
        max_skip_fraction=cfg.data.max_skip_fraction,
    )


def train_and_val(cfg: DictConfig) -> tuple[ManifestDataset, ManifestDataset]:
    """The source domain's train split (guided unless the recipe is the baseline) and val
    split (for selection only)."""
    table = source_table(cfg)
    cache = FrameCache()
    from ablate.recipe import is_guided

    # the baseline needs no source/target frames: fakes without pairs are training rows too
    train = _dataset(cfg, split_rows(table, "train", cfg.data.train), is_guided(cfg),
                     cfg.data.augment, cache)
    val = _dataset(cfg, split_rows(table, "val", cfg.data.train), False, "none", cache)
    return train, val


def make_loader(dataset: ManifestDataset, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, drop_last=shuffle and len(dataset) > batch_size,
        generator=generator, num_workers=0,
    )
