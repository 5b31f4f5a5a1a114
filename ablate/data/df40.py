"""DF40 (`df40`): 40 forgery methods, each its own test set, with its generator family.

Source: YZY-stack/DF40 README (the method table: 10 face-swapping FS, 13 face-reenactment
FR, 12 entire-face-synthesis EFS, 5 face-editing FE) and its DeepfakeBench fork
(DeepfakeBench_DF40/training/config/test_config.yaml `label_dict` and
preprocessing/rearrange.py give the folder names: `simswap`, `one_shot_free`, `sd2.1`,
...). The preprocessed release sits as ROOT/<method>/<domain>/frames/<video>/*.png,
domain `ff` or `cdf` (the FF++ / Celeb-DF identities the fakes were made from; DF40
issue #36 shows `DF40/mobileswap/cdf/frames`), with variations this reader takes as they
come: images straight in a folder such as `e4e/ff/inversions/*.png` (each image its own
video, as DeepfakeBench reads them), no domain level (DF40_train/VQGAN/<video>/), and, for
the 9 methods outside the FF++/Celeb-DF domains, `real/` beside `fake/` in the method's
folder. The 31 others ship fakes only: their reals are FF++'s / Celeb-DF's test videos,
given here as the manifests of those datasets (`reals=[ffpp.csv, celebdf.csv]`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ablate.core.errors import AblateError
from ablate.data.adapter_base import (
    DATASETS,
    REAL,
    Notes,
    Video,
    as_list,
    assign_val,
    build_table,
    image_folders,
    list_frames,
    require_dir,
    sampling_from,
    subfolders,
)
from ablate.data.manifest import SPLITS, load_manifest

FAMILIES = {
    "FS": "face swapping",
    "FR": "face reenactment",
    "EFS": "entire face synthesis",
    "FE": "face editing",
}
# DF40 folder name -> family, in the README's order (ID 1..40)
METHODS: dict[str, str] = {
    **dict.fromkeys(
        ["fsgan", "faceswap", "simswap", "inswap", "blendface", "uniface", "mobileswap",
         "e4s", "facedancer", "deepfacelab"], "FS"),
    **dict.fromkeys(
        ["fomm", "facevid2vid", "wav2lip", "MRAA", "one_shot_free", "pirender", "tpsm", "lia",
         "danet", "sadtalker", "mcnet", "hyperreenact", "heygen"], "FR"),
    **dict.fromkeys(
        ["VQGAN", "StyleGAN2", "StyleGAN3", "StyleGANXL", "sd2.1", "ddim", "rddm", "pixart",
         "DiT", "SiT", "MidJourney", "whichisreal"], "EFS"),
    **dict.fromkeys(["CollabDiff", "e4e", "stargan", "starganv2", "styleclip"], "FE"),
}
DIFFUSION = frozenset({"sd2.1", "ddim", "rddm", "pixart", "DiT", "SiT", "MidJourney", "CollabDiff"})
ALIASES = {  # the README's display names and spellings seen in DF40's own files
    "dagan": "danet", "oneshot": "one_shot_free", "face_vid2vid": "facevid2vid",
    "fs_vid2vid": "facevid2vid", "ddpm": "ddim", "collaborative_diffusion": "CollabDiff",
    "midjounery6": "MidJourney", "midjourney6": "MidJourney", "pixart-alpha": "pixart",
    "pixart_alpha": "pixart", "inswapper": "inswap", "stylegan-xl": "StyleGANXL",
    "dit-xl": "DiT", "sit-xl": "SiT", "sd-2.1": "sd2.1",
}
DOMAINS = {"ff": "ff", "ffpp": "ff", "cdf": "cdf", "cdfv2": "cdf"}
# folders that group frames rather than being one video: their images are one video each
CONTAINERS = frozenset({"frames", "frames_all", "faces_all", "inversions", "images", "real",
                        "fake", "celeb-real", "youtube-real", "celeb-synthesis", *DOMAINS})
UNKNOWN = "unknown"
_BY_LOWER = {**{m.lower(): m for m in METHODS}, **ALIASES}


def canonical(name: str) -> str | None:
    """A folder or setting name -> the DF40 method it names, or None."""
    return _BY_LOWER.get(name.lower())


@DATASETS.register("df40", "DF40: 40 forgery methods, one test set per method, with family")
def df40(
    root: str,
    methods: Any = None,
    method: str | None = None,
    family: str | None = None,
    domain: str | None = None,
    split: str = "test",
    val_fraction: float = 0.1,
    reals: Any = None,
    allow_unknown: bool = False,
    **common: Any,
) -> pd.DataFrame:
    """DF40 method folders under `root` (see the module doc) -> one table.

    Selection: `method=NAME` (one test set), `methods=[...]`, or `family=FS|FR|EFS|FE`;
    default every method folder found. A folder that is no DF40 method is an error
    unless `allow_unknown=true` (then read with family "unknown") or left out by the
    selection. `domain=ff|cdf` keeps one source domain (default both).
    Rows: dataset "df40/<method>", method = the DF40 name, family its family; video_id
    "<method>/<path below the method folder>". A `real/` folder inside a method gives
    that method's reals (same dataset); `reals=[MANIFEST, ...]` adds the real rows of
    `split` from other manifests once, as dataset "df40/real". All rows get `split`
    (DF40's release is a test set; split=train reads DF40_train, with a seeded
    `val_fraction` of its videos moved to val).
    """
    base = require_dir(Path(root).expanduser(), "DF40 root")
    sampling = sampling_from("df40", common)
    if split not in SPLITS:
        raise AblateError(f"df40: split must be one of {', '.join(SPLITS)}, got {split!r}")
    if domain is not None and domain not in ("ff", "cdf"):
        raise AblateError(f"df40: domain must be ff, cdf or null (both), got {domain!r}")
    folders = _method_folders(base, _wanted(methods, method, family), bool(allow_unknown))
    notes = Notes()
    videos: list[Video] = []
    for name, folder in folders.items():
        found = _method_videos(name, folder, domain, split)
        if not found:
            notes.add("method folders without frames (skipped)", str(folder))
        if found and not any(v.label == 0 for v in found) and reals is None:
            notes.add("methods without real frames (add reals=[FF++/Celeb-DF test manifest])",
                      name)
        videos += found
    videos += _external_reals(reals, split)
    where = f"{base}/<method>/<ff|cdf>/frames/<video>/*.png"
    if not videos:
        raise AblateError(f"dataset 'df40': no frames found; expected {where}")
    if split == "train":
        assign_val(videos, val_fraction, sampling.seed)
    return build_table("df40", videos, sampling, (split,), where, notes)


def _wanted(methods: Any, method: str | None, family: str | None) -> list[str] | str | None:
    """The selection as canonical names, a family name, or None (everything found)."""
    given = [x for x in (methods is not None, method is not None, family is not None) if x]
    if len(given) > 1:
        raise AblateError("df40: give one of method=, methods=[...] or family=, not several")
    if family is not None:
        if family not in FAMILIES:
            raise AblateError(f"df40: family must be one of {', '.join(FAMILIES)}, got {family!r}")
        return family
    names = [method] if method is not None else (as_list(methods) if methods is not None else None)
    if names is None:
        return None
    bad = [n for n in names if canonical(n) is None]
    if bad or not names:
        raise AblateError(
            f"df40: unknown method(s) {bad or names}; DF40's methods: {', '.join(METHODS)}"
        )
    return [canonical(n) for n in names]  # type: ignore[misc]


def _method_folders(base: Path, wanted: list[str] | str | None, allow_unknown: bool
                    ) -> dict[str, Path]:
    """Method name -> its folder, for the selected methods; unknown folders handled."""
    found: dict[str, Path] = {}
    for folder in subfolders(base):
        if folder.name.startswith("."):
            continue
        name = canonical(folder.name)
        selected = (wanted is None or (isinstance(wanted, str) and METHODS.get(name or "") == wanted)
                    or (isinstance(wanted, list) and name in wanted))
        if name is None:
            if wanted is not None:
                continue  # left out by the selection
            if not allow_unknown:
                raise AblateError(
                    f"DF40 folder {folder} is not one of DF40's 40 methods "
                    f"({', '.join(METHODS)}); read only known ones with --set methods=[...], "
                    "or read it anyway (family 'unknown') with --set allow_unknown=true"
                )
            found[folder.name] = folder
        elif selected:
            if name in found:
                raise AblateError(
                    f"DF40: {found[name]} and {folder} both hold method {name}; keep one"
                )
            found[name] = folder
    if isinstance(wanted, list):
        missing = [m for m in wanted if m not in found]
        if missing:
            raise AblateError(
                f"DF40: no folder for method(s) {', '.join(missing)} under {base}; "
                f"folders found: {', '.join(sorted(p.name for p in subfolders(base)))}"
            )
    if not found:
        raise AblateError(f"DF40: no method folders under {base} (expected e.g. {base}/simswap/)")
    return found


def _method_videos(name: str, folder: Path, domain: str | None, split: str) -> list[Video]:
    family = METHODS.get(name, UNKNOWN)
    videos = []
    for images in image_folders(folder):
        parts = images.relative_to(folder).parts
        domains = {DOMAINS[p.lower()] for p in parts if p.lower() in DOMAINS}
        if domain is not None and domain not in domains:
            continue
        label = 0 if any(p.lower() == REAL for p in parts) else 1
        meth = REAL if label == 0 else name
        rel = "/".join(parts)
        prefix = f"{name}/{rel}" if rel else name
        common = dict(label=label, split=split, method=meth, dataset=f"df40/{name}",
                      family=family)
        if images == folder or images.name.lower() in CONTAINERS:
            for index, path in list_frames(images):  # loose images: one video each
                videos.append(
                    Video(f"{prefix}/{Path(path).stem}", images, frames=[(index, path)], **common)
                )
        else:
            videos.append(Video(prefix, images, **common))
    return videos


def _external_reals(reals: Any, split: str) -> list[Video]:
    """Real rows of `split` from other manifests (FF++/Celeb-DF test), one Video each."""
    if reals is None:
        return []
    videos = []
    for path in as_list(reals):
        table = load_manifest(path)
        part = table[(table["label"] == 0) & (table["split"] == split)]
        if part.empty:
            raise AblateError(
                f"df40 reals: {path} has no real rows in split {split}; give the manifest "
                "of the real videos DF40's fakes were made from (FF++ / Celeb-DF test)"
            )
        for (dataset, vid), rows in part.groupby(["dataset", "video_id"], sort=True):
            frames = list(zip(rows["frame"].astype(int), rows["path"], strict=True))
            videos.append(Video(f"{dataset}/{vid}", Path(rows["path"].iloc[0]).parent, 0,
                                split, REAL, frames=frames, dataset="df40/real"))
    return videos
