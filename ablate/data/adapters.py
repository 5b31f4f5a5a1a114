"""Dataset adapters: folders of extracted face frames -> a manifest table, and its record.

The registry (`DATASETS`, one entry per `ablate data manifest ADAPTER`) is filled by one
module per dataset family: faceforensics.py (ffpp, dfd), celebdf.py, dfdc.py
(dfdc_preview), wilddeepfake.py, diffswap.py, df40.py. What they share (sampling
settings and presets, notes, frame listing, pairing, the table) is in adapter_base.py, layout
detection in layouts.py. This module is the entry point: build, write, record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import pandas as pd

from ablate.core.errors import AblateError
from ablate.data import celebdf, df40, dfdc, diffswap, faceforensics, wilddeepfake  # noqa: F401
from ablate.data.adapter_base import (  # noqa: F401 - the names other modules import from here
    DATASETS,
    PRESETS,
    REAL,
    FramePairer,
    Notes,
    Sampling,
    Video,
    _frame_index,
    format_notes,
    list_frames,
    sample_evenly,
    sampling_from,
)
from ablate.data.manifest import save_manifest

# data config keys that describe a dataset, not build it (ablate/data/protocol.py): never
# given to an adapter, never in the cache key or the data fingerprint (a new name, same data)
DESCRIPTIVE_KEYS = ("display_name", "crop")


def build_manifest(adapter: str, root: str, out: str, **settings: Any) -> pd.DataFrame:
    """Run adapter `adapter` on `root`, write the manifest to `out` and its protocol record
    to `<out>.json` (adapter, layout, preset, resolved counts, settings, notes); return the
    table. Nothing is written when the adapter fails."""
    df = DATASETS.build(adapter, root=root, **settings)
    protocol = {
        **df.attrs.get("protocol", {"adapter": adapter}),
        "settings": {k: settings[k] for k in sorted(settings)},
        "notes": df.attrs.get("notes", {}),
    }
    save_manifest(df, out, protocol=protocol)
    df.attrs["manifest"] = str(Path(out).expanduser().resolve())
    return df


def adapter_settings(adapter: str) -> dict[str, Any]:
    """Every setting an adapter takes, with its default (own ones, then shared ones)."""
    own = {k: v for k, v in DATASETS.get(adapter).arguments().items() if k != "root"}
    shared = {f.name: f.default for f in fields(Sampling)}
    return {**own, **shared}


def build_from_config(config: Mapping[str, Any]) -> pd.DataFrame:
    """Build from a configs/data/*.yaml mapping: name, root, manifest, then settings (its
    DESCRIPTIVE_KEYS left out)."""
    settings = {k: v for k, v in config.items() if k not in DESCRIPTIVE_KEYS}
    name, root, out = (settings.pop(k, None) for k in ("name", "root", "manifest"))
    if not name or not root or not out:
        raise AblateError(
            "a data config needs name, root and manifest set "
            f"(got name={name!r}, root={root!r}, manifest={out!r})"
        )
    return build_manifest(name, root, out, **settings)
