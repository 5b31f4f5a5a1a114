"""Dataset names -> manifest files, without torch (the trial identity reads this half too).

A dataset is named in one of three ways:
- a manifest file (`.csv`/`.parquet`) path: used as it is;
- a family of the embedded benchmark (`synth-blend`, `synth-colour`, ...): built once, cached;
- a dataset config `configs/data/<name>.yaml` (adapter + root + settings): its manifest is
  built from the frame folders on first use and cached as `MANIFEST_DIR/<name>-<key>.csv`.

Why the key: the settings an adapter gets (the config after recipe overrides such as
`data.source_is=A`) decide the rows, so the cache is keyed by all of them; a recipe with other
settings, or an edited config (c23 -> c40), builds its own manifest and equal settings reuse
the file. Caches of older versions (`<name>.csv`, keyed by name only) are simply not found.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from ablate.core.errors import AblateError
from ablate.core.paths import MANIFESTS_DIR
from ablate.core.schema import setting
from ablate.data.adapters import DESCRIPTIVE_KEYS, build_from_config
from ablate.data.manifest import load_manifest
from ablate.locations import find
from ablate.recipe import data_root, is_guided, options

MANIFEST_DIR = MANIFESTS_DIR
CACHE_VERSION = 2  # bump when an adapter writes other rows for the same settings (2: identity, family, WildDeepfake source videos)


@dataclass(frozen=True)
class Source:
    """Where one dataset's rows come from."""

    name: str
    manifest: Path  # the frame table file (exists once `locate` returns)
    rows_of: str | None  # keep only rows of this `dataset` value (benchmark families)
    settings: dict[str, Any] | None  # what the adapter was given; None for a given file


def benchmark_datasets() -> list[str]:
    """Names of the embedded benchmark's datasets (no build needed to list them)."""
    # lazy: loads cv2 and scipy only when called
    from ablate.data.synthetic import DEFAULT_METHODS, dataset_name

    return [dataset_name(m) for m in DEFAULT_METHODS]


def dataset_settings(name: str, overrides: dict | None = None) -> dict[str, Any] | None:
    """The settings the adapter of data config `name` gets, recipe overrides applied; None
    when `name` is no data config (a manifest path or a benchmark family)."""
    if Path(name).suffix in (".csv", ".parquet") or name in benchmark_datasets():
        return None
    config = _config_file(name)
    data_cfg = OmegaConf.to_container(OmegaConf.load(config), resolve=True)
    assert isinstance(data_cfg, dict)
    data_cfg = {k: v for k, v in data_cfg.items() if k not in DESCRIPTIVE_KEYS}
    # recipe-level settings apply only where the dataset has them (source_is: FF++ only);
    # a root (data.roots.<name>) always does: it beats the config's own
    changed = {k: v for k, v in (overrides or {}).items()
               if (k in data_cfg or k == "root") and data_cfg.get(k) != v}
    if changed and data_cfg.get("manifest"):
        if not changed.get("root", data_cfg.get("root")):
            keys = ", ".join(f"data.{k}={v}" for k, v in changed.items())
            raise AblateError(
                f"{keys} cannot apply to dataset {name}: it uses the fixed manifest "
                f"{data_cfg['manifest']} and has no root to rebuild from; set root in {config}"
            )
        data_cfg["manifest"] = None  # the fixed file holds the config's own settings only
    data_cfg.update(changed)
    return data_cfg


def recipe_overrides(cfg: DictConfig) -> dict[str, Any]:
    """Recipe-level data settings forwarded to the train set's adapter: which original is
    the source, and its root from data.roots (`dataset_overrides`). No source for the
    baseline: it reads no source/target frames, so, as in its recipe hash, it uses the
    dataset's own manifest whatever data.source_is says."""
    out = dataset_overrides(cfg, str(cfg.data.train))
    if is_guided(cfg) and setting(cfg, "data.source_is"):
        out["source_is"] = cfg.data.source_is
    return out


def dataset_overrides(cfg: DictConfig, name: str) -> dict[str, Any]:
    """What the recipe changes of dataset `name` wherever it is used (a test set too): its
    root, when data.roots.<name> gives one, beats `root:` in the dataset config, so a user
    points a recipe at their frames without editing a config file (one line if the folder
    does not exist)."""
    root = data_root(cfg, name)
    return {} if root is None else {"root": root}


def settings_key(settings: dict[str, Any]) -> str:
    """12 hex digits over every setting but the output file (root included: other frames)."""
    kept = {k: v for k, v in settings.items() if k != "manifest"}
    blob = json.dumps({"v": CACHE_VERSION, **kept}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def manifest_cache_path(name: str, settings: dict[str, Any]) -> Path:
    """Where data config `name` with these settings keeps its built manifest."""
    return MANIFEST_DIR / f"{name}-{settings_key(settings)}.csv"


def locate(name: str, overrides: dict | None = None) -> Source:
    """The manifest file of one dataset (built first when needed), as in the module doc."""
    path = Path(name).expanduser()
    if path.suffix in (".csv", ".parquet"):
        if not path.is_file():
            raise AblateError(f"manifest {path} does not exist; build one with `ablate data manifest`")
        return Source(name, path.resolve(), None, None)
    if name in benchmark_datasets():
        # lazy: loads cv2 and scipy only when called
        from ablate.data.synthetic import ensure_benchmark

        file = ensure_benchmark()
        return Source(name, file, name, {"benchmark": file.parent.name})  # synthetic-<params key>
    settings = dataset_settings(name, overrides)
    assert settings is not None
    manifest = Path(settings.get("manifest") or manifest_cache_path(name, settings)).expanduser()
    if not manifest.is_file():
        _build(name, settings, manifest)
    return Source(name, manifest.resolve(), None, settings)


def resolve_dataset(name: str, settings: dict | None = None) -> pd.DataFrame:
    """The frame table of one dataset (all splits); `settings` are recipe-level overrides."""
    source = locate(name, settings)
    table = load_manifest(source.manifest)
    if source.rows_of is None:
        return table
    return table[table["dataset"] == source.rows_of].reset_index(drop=True)


def _config_file(name: str) -> Path:
    config = find("configs", f"data/{name}.yaml")
    if config is None:
        known = ", ".join(benchmark_datasets() + options("data"))
        raise AblateError(f"unknown dataset {name!r}; use a manifest path or one of: {known}")
    return config


def _build(name: str, settings: dict[str, Any], manifest: Path) -> None:
    if not settings.get("root"):
        legacy = MANIFEST_DIR / f"{name}.csv"
        hint = (f"; {legacy} is a cache of an older version: pass its path instead of {name!r}"
                if legacy.is_file() else f" or pass a manifest path instead of {name!r}")
        raise AblateError(
            f"dataset {name} has no manifest yet and no root: set data.roots.{name}=DIR or "
            f"root in {_config_file(name)} (the folder of extracted face frames){hint}"
        )

    build_from_config({**settings, "manifest": str(manifest)})  # written atomically
