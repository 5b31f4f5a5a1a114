"""How the frames a run trained on were prepared, so that new frames are cut the same way.

Why: a detector has only ever seen crops of one kind (a detector, an alignment, a margin, a
size); a frame cut differently is out of its distribution and its score means little. So
predict finds the settings `ablate data prepare` used for the run's training data
(`data.train`) and applies them, first found wins:

  1. a family of the embedded benchmark (`synth-*`): its frames are whole square images of
     a face, rendered, never detected nor cropped (`ablate data prepare` never ran on them);
     so: no detector, the frame's centre square at the benchmark's frame size (a benchmark
     frame as it is), and as many frames per video as the benchmark renders;
  2. the prepare markers (`prepared.json`) of the training rows' folders, read from the
     train manifest when it is already on this machine (nothing is built): every setting as
     prepare recorded it; all must agree (`MARKERS_READ` folders, spread over the rows);
  3. the data config's `crop:` statement (`ablate.data.protocol.config_extras`): its preset,
     then its keys;
  4. else the `deepfakebench` preset, flagged as a guess (`Preparation.known` False).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from ablate.core.errors import AblateError, first_line
from ablate.data.manifest import load_manifest
from ablate.data.prepare.files import read_marker
from ablate.data.prepare.settings import PRESETS, Settings, resolve_settings
from ablate.data.protocol import config_extras
from ablate.data.sources import (
    benchmark_datasets,
    dataset_settings,
    manifest_cache_path,
    recipe_overrides,
)
from ablate.data.synthetic import DEFAULTS as BENCHMARK

FALLBACK = "deepfakebench"
MARKERS_READ = 64  # folders whose markers are read: enough to see a mix, quick on FF++


@dataclass(frozen=True)
class Preparation:
    """The settings new frames are cut with, and where they were found."""

    settings: Settings
    source: str  # where they come from, in words; for the fallback, why none was found
    known: bool = True  # False: nothing said how the data were prepared (the fallback)
    preset: str | None = None  # the `ablate data prepare --preset` recorded, if any

    def describe(self) -> str:
        s = self.settings
        frames = "every frame" if s.frames == 0 else f"{s.frames} frames per video"
        if s.detector == "none":
            cut = f"no face detection: each frame's centre square at {s.size} px"
        else:
            cut = (f"detector {s.detector} (min score {s.min_face_score:g}, boxes smoothed over "
                   f"{s.smooth} sampled frames), align {s.align}, scale {s.scale:g}, "
                   f"{s.size} px crops")
        return f"{cut}, {frames}"


def preparation_of(cfg: Any) -> Preparation:
    """The preparation of the recipe `cfg`'s training data (see the module doc)."""
    name = str(cfg.data.train)
    if name in benchmark_datasets():
        settings = resolve_settings(frames=int(BENCHMARK["frames_per_video"]),
                                    size=int(BENCHMARK["image_size"]), detector="none",
                                    align="none", smooth=1)
        return Preparation(settings, f"the embedded benchmark {name}: its frames are face "
                                     "images already, never detected or cropped")
    try:
        found = _from_markers(name, cfg)
    except AblateError as err:
        found = first_line(err)
    if isinstance(found, Preparation):
        return found
    stated = _from_crop_statement(name)
    if stated is not None:
        return stated
    return Preparation(resolve_settings(FALLBACK), found, known=False, preset=FALLBACK)


def fallback_note(name: str, preparation: Preparation) -> str | None:
    """The one line that says the preparation is a guess, or None when it is known."""
    if preparation.known:
        return None
    return (f"note: how {name}'s training frames were prepared is unknown here "
            f"({preparation.source}); cutting frames with the {FALLBACK} preset "
            f"({preparation.describe()})")


def _train_manifest(name: str, cfg: Any) -> Path | None:
    """The training data's manifest file when it is on this machine; None otherwise."""
    if Path(name).suffix in (".csv", ".parquet"):
        path = Path(name).expanduser()
        return path if path.is_file() else None
    settings = dataset_settings(name, recipe_overrides(cfg))
    if settings is None:
        return None
    path = Path(settings.get("manifest") or manifest_cache_path(name, settings)).expanduser()
    return path if path.is_file() else None


def _from_markers(name: str, cfg: Any) -> Preparation | str:
    """The settings in the markers of the training rows' folders, else why there are none
    (no manifest here, a folder without a marker, folders that disagree)."""
    manifest = _train_manifest(name, cfg)
    if manifest is None:
        return "its manifest is not on this machine"
    rows = load_manifest(manifest)
    train = rows[rows["split"] == "train"]
    paths = (train if not train.empty else rows)["path"].astype(str)
    folders = sorted({str(Path(p).parent) for p in paths})
    picked = np.unique(np.linspace(0, len(folders) - 1, min(MARKERS_READ, len(folders)))
                       .round().astype(int))
    seen: dict[Settings, str | None] = {}
    for k in picked.tolist():
        marker = read_marker(Path(folders[k]))
        if marker is None:
            return f"no prepare marker in {folders[k]}"
        settings = _settings(marker.get("settings") or {})
        seen.setdefault(settings, marker.get("preset"))
        if len(seen) > 1:
            return "its training folders were prepared with different settings"
    (settings, preset), = seen.items()
    return Preparation(settings, f"the prepare markers of {name}'s training frames",
                       preset=preset)


def _settings(recorded: Mapping[str, Any]) -> Settings:
    """A marker's settings (older markers may lack some: defaults); match_crops is left out,
    it decides which faces an FF++ fake is cut with, not how a frame is cut."""
    names = {f.name for f in fields(Settings)}
    settings = resolve_settings(**{k: v for k, v in recorded.items() if k in names})
    return replace(settings, match_crops=Settings.match_crops)


def _from_crop_statement(name: str) -> Preparation | None:
    """The data config's `crop:` statement (its preset first, then its own keys)."""
    crop = config_extras(name).get("crop")
    if not isinstance(crop, Mapping):
        return None
    preset = crop.get("preset") if crop.get("preset") in PRESETS else None
    given = {k: crop.get(k) for k in ("detector", "align", "scale", "size")}
    return Preparation(resolve_settings(preset, **given),
                       f"the crop: statement of data config {name}", preset=preset)
