"""The protocol of one test set: what a number was measured on, counted from what was scored.

Why: a cross-dataset AUC means little beside another without the protocol behind it (how
many frames per video, which videos, which compression and crops, which official list, frame
or video level). Papers state theirs in a sentence; this module writes ours as a small dict,
attached to every test metric row (`ablate.evaluate`) and stored with it (results schema v5,
column `protocol`, JSON), so a report can print it under each column and refuse to lay
numbers of different protocols side by side as if they were one.

Everything is taken from what evaluation actually used, never from what a config would
build today: the resolved `Source` (its settings, the manifest's sidecar record of how it was
built), the rows scored, and the crop markers `ablate data prepare` leaves in each video
folder. What none of these says is None (unknown), never guessed.

The dict (PROTOCOL_VERSION 1):

    version           1
    test_set          the name the rows are stored under (`celebdf`, a manifest path, ...)
    display_name      the data config's `display_name`, else None (reports fall back to
                      `ablate report --name`, else the name)
    split             which split's rows it describes: test (test rows), train (the
                      source-val row of a sweep trial: the training data)
    level             frame | video (the metric row's own level; None on the set's base dict)
    adapter           the dataset adapter that built the manifest (ffpp, celebdf, ...)
    preset            the frame-count preset (paper, deepfakebench, official_code)
    frames_per_video  {median, max} counted on the scored rows, and `asked`: what the
                      sampling asked for this split (int, "all", {real, fake}) or None
    frames            rows scored
    videos_real, videos_fake   distinct videos per label among the scored rows
    compression       c23 / c40 / raw where the dataset has it (FF++, DFD), else None
    crop              {preset, detector, detector_version, align, scale, size} from the
                      prepare markers of every scored video (all must agree), else the data
                      config's `crop:` statement, else None
    official_list     {file, sha256} of the official list the split came from (Celeb-DF's
                      List_of_testing_videos.txt, FF++'s test.json, DFDC-P's dataset.json;
                      sha256: its first 16 hex digits when the file is readable, else None)

Torch-free (the report imports it for the presets' rule).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ablate.core.errors import AblateError
from ablate.core.protocol import PROTOCOL_VERSION, mixed_presets
from ablate.data.manifest import read_protocol
from ablate.data.sources import (
    DESCRIPTIVE_KEYS,
    Source,
    dataset_settings,
    locate,
    recipe_overrides,
    resolve_dataset,
)
from ablate.locations import find
from ablate.provenance import PART

CROP_KEYS = ("preset", "detector", "detector_version", "align", "scale", "size")
_HEX = 16


# ---------------------------------------------------------------- descriptive config keys


def config_extras(name: str) -> dict[str, Any]:
    """The DESCRIPTIVE_KEYS of data config `name` ({} for a manifest path, a benchmark
    family, or a config without them); a `crop:` with unknown keys is a one-line error."""
    if Path(name).suffix in (".csv", ".parquet") or PART in name:
        return {}
    config = find("configs", f"data/{name}.yaml")
    if config is None:
        return {}
    data = yaml.safe_load(config.read_text()) or {}
    extras = {k: data[k] for k in DESCRIPTIVE_KEYS if data.get(k) is not None}
    crop = extras.get("crop")
    if crop is not None:
        bad = sorted(set(crop) - set(CROP_KEYS)) if isinstance(crop, dict) else [str(crop)]
        if bad:
            raise AblateError(f"{config}: crop must be a mapping of {', '.join(CROP_KEYS)}; "
                              f"got {', '.join(bad)}")
    return extras


# ---------------------------------------------------------------- the protocol of one set


def dataset_protocol(name: str, rows: pd.DataFrame, split: str = "test",
                  overrides: dict | None = None) -> dict[str, Any]:
    """The protocol of dataset `name` as scored on `rows` (see the module doc); level None
    (each metric row sets its own with `at_level`)."""
    return protocol_of(locate(name, overrides), rows, split, config_extras(name))


def source_protocol(cfg: Any) -> str:
    """The training data's protocol (its train split, as trained on: the recipe's adapter
    overrides applied), as the JSON a sweep stores on a trial's source-val row: what
    `ablate report --strict-protocol` holds the test sets' presets against."""
    name, overrides = str(cfg.data.train), recipe_overrides(cfg)
    table = resolve_dataset(name, overrides)
    rows = table[table["split"] == "train"]
    return at_level(dataset_protocol(name, rows, "train", overrides), "frame")


def protocol_of(source: Source, rows: pd.DataFrame, split: str = "test",
                extras: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The protocol dict from a resolved Source, its sidecar record and the rows used."""
    extras = extras or {}
    record = read_protocol(source.manifest) or {}
    settings = {**(record.get("settings") or {}), **(source.settings or {})}
    adapter = settings.get("name") or record.get("adapter")
    return {
        "version": PROTOCOL_VERSION,
        "test_set": source.name,
        "display_name": extras.get("display_name"),
        "split": split,
        "level": None,
        "adapter": adapter,
        "preset": record.get("preset") or settings.get("preset"),
        "frames_per_video": {**frame_counts(rows), "asked": frames_asked(record, split)},
        **video_counts(rows),
        "compression": settings.get("compression"),
        "crop": crop_of(rows) or _stated_crop(extras.get("crop")),
        "official_list": official_list(adapter, settings),
    }


def part_protocol(base: Mapping[str, Any], part: str, rows: pd.DataFrame) -> dict[str, Any]:
    """A breakdown `<set>::<part>` of a test set: the set's protocol with its own counts."""
    shown = base.get("display_name")
    suffix = part.split(PART, 1)[1] if PART in part else part
    return {**base, "test_set": part, "display_name": f"{shown}{PART}{suffix}" if shown else None,
            "frames_per_video": {**frame_counts(rows),
                                 "asked": (base.get("frames_per_video") or {}).get("asked")},
            **video_counts(rows)}


def at_level(protocol: Mapping[str, Any], level: str) -> str:
    """The protocol of one metric row, as the JSON text the results DB stores."""
    return json.dumps({**protocol, "level": level}, sort_keys=True, default=str)


def frame_counts(rows: pd.DataFrame) -> dict[str, Any]:
    """Median and max frames per video among the rows (None without rows)."""
    if rows.empty:
        return {"median": None, "max": None}
    per = rows.groupby(_video_key(rows)).size()
    median = float(per.median())
    return {"median": int(median) if median.is_integer() else median, "max": int(per.max())}


def video_counts(rows: pd.DataFrame) -> dict[str, int]:
    """Rows scored and distinct videos per label (a video is (dataset, video_id))."""
    videos = rows.assign(_v=_video_key(rows)).drop_duplicates("_v")
    labels = videos["label"].astype(int)
    return {"frames": int(len(rows)), "videos_real": int((labels == 0).sum()),
            "videos_fake": int((labels == 1).sum())}


def _video_key(rows: pd.DataFrame) -> pd.Series:
    dataset = rows["dataset"].astype(str) if "dataset" in rows.columns else ""
    return dataset + "\x00" + rows["video_id"].astype(str)


def frames_asked(record: Mapping[str, Any], split: str) -> Any:
    """What the manifest's sampling asked per video of `split` (its sidecar record): an int,
    "all" (every frame), {real, fake} for per-label counts, or None with no record."""
    if "frames_per_video_eval" not in record:
        return None

    def shown(n: Any) -> Any:
        return "all" if n is None else int(n)

    per_split = record.get("frames_per_video" if split == "train" else "frames_per_video_eval")
    real, fake = record.get("frames_per_real_video"), record.get("frames_per_fake_video")
    if real is None and fake is None:
        return shown(per_split)
    return {"real": shown(per_split if real is None else real),
            "fake": shown(per_split if fake is None else fake)}


# ---------------------------------------------------------------- crops


def crop_of(rows: pd.DataFrame) -> dict[str, Any] | None:
    """The crop settings in the prepare markers of every video folder scored, when every
    folder has one and all agree; else None (some frames were cropped elsewhere, or
    differently)."""
    # lazy: the prepare package loads cv2, which only evaluation (never the report) pays for
    from ablate.data.prepare.files import read_marker

    if rows.empty or "path" not in rows.columns:
        return None
    found: set[str] = set()
    for folder in sorted({str(Path(p).parent) for p in rows["path"].astype(str)}):
        marker = read_marker(Path(folder))
        if marker is None:
            return None
        settings = marker.get("settings") or {}
        crop = {"preset": marker.get("preset"), "detector": settings.get("detector"),
                "detector_version": marker.get("detector_version") or None,
                "align": settings.get("align"), "scale": settings.get("scale"),
                "size": settings.get("size")}
        found.add(json.dumps(crop, sort_keys=True))
        if len(found) > 1:
            return None
    return json.loads(found.pop()) if found else None


def _stated_crop(stated: Any) -> dict[str, Any] | None:
    """The data config's `crop:` statement, every CROP_KEYS key present (unknown: None)."""
    if not isinstance(stated, Mapping):
        return None
    return {k: stated.get(k) for k in CROP_KEYS}


# ---------------------------------------------------------------- official lists


def official_list(adapter: str | None, settings: Mapping[str, Any]) -> dict[str, Any] | None:
    """The official file a dataset's test split comes from, with its digest when readable."""
    root = settings.get("root")
    base = Path(str(root)).expanduser() if root else None
    if adapter == "celebdf":
        return _listed(str(settings.get("test_list") or "List_of_testing_videos.txt"), base)
    if adapter == "dfdc_preview":
        return _listed(str(settings.get("metadata") or "dataset.json"), base)
    if adapter == "ffpp":
        folder = settings.get("splits_dir")
        if folder:
            return _listed("test.json", Path(str(folder)).expanduser())
        places = [] if base is None else [p for p in (base / "splits", base)
                                           if (p / "test.json").is_file()]
        return _listed("test.json", places[0] if len(places) == 1 else None)
    return None


def _listed(file: str, folder: Path | None) -> dict[str, Any]:
    path = None if folder is None else folder / file
    sha = None
    if path is not None and path.is_file():
        sha = hashlib.sha256(path.read_bytes()).hexdigest()[:_HEX]
    return {"file": Path(file).name, "sha256": sha}


# ---------------------------------------------------------------- comparing, checking


def check_presets(train: str, tests: Iterable[str], overrides: dict | None = None) -> None:
    """Before training: refuse (one line) a recipe whose training and test data configs
    mix presets where a published protocol fixes them (see `mixed_presets`). Manifest paths
    and benchmark families have no config preset and count as unknown."""
    def preset(name: str, extra: dict | None = None) -> str | None:
        return (dataset_settings(name, extra) or {}).get("preset")

    why = mixed_presets(preset(train, overrides), {t: preset(t) for t in tests})
    if why:
        raise AblateError(f"strict protocol: {why}; use one preset for data.train and "
                          "data.tests, or drop the strict check")
