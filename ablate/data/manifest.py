"""The frame table every dataset is reduced to, its schema and its checks.

One row per face frame. A manifest is the only thing training and evaluation
read, so all dataset-specific knowledge stops at the adapters that write it.

Columns:
    path         image file (relative to the manifest's folder, or absolute)
    label        0 real, 1 fake
    video_id     unique per dataset; frames of a video share it (video-level metrics)
    dataset      adapter name (ffpp, celebdf, ...)
    split        train | val | test
    method       manipulation method, "real" for real frames
    frame        frame index inside its video
    source_path  identity donor frame (guided training); empty where unknown
    target_path  frame the source face was blended into; empty where unknown

Optional columns (written when the table has them; read as empty when a file lacks them,
so older manifests load unchanged):
    identity     the unit a bootstrap resamples in clusters: videos sharing a person
                 (FF++: target original id A of real A and every fake A_B; Celeb-DF: idX;
                 DFD: the actor id); empty where unknown (each video its own cluster)
    family       generator family of the method (DF40: FS, FR, EFS, FE); empty elsewhere

Real frames have source_path = target_path = path.

Beside a manifest `m.csv`, `m.csv.json` records how it was made (adapter, layout,
preset and the resolved frame counts, notes) with the sha256 of the manifest file it
describes; `read_protocol` returns it only while that hash still matches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from ablate.core.errors import AblateError

log = logging.getLogger(__name__)

COLUMNS = [
    "path",
    "label",
    "video_id",
    "dataset",
    "split",
    "method",
    "frame",
    "source_path",
    "target_path",
]
OPTIONAL_COLUMNS = ("identity", "family")
REQUIRED = COLUMNS[:7]  # source/target may be absent: they are unknown for most test sets
PATH_COLUMNS = ("path", "source_path", "target_path")
TEXT_COLUMNS = ("path", "video_id", "dataset", "split", "method", "source_path", "target_path",
                *OPTIONAL_COLUMNS)
SPLITS = ("train", "val", "test")
LABELS = (0, 1)
EXAMPLES = 5  # problem examples shown per kind


# ---------------------------------------------------------------- reading / writing


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet table as text columns, without resolving or checking it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise AblateError(f"manifest {path} does not exist; build one with `ablate data manifest`")
    try:
        if _is_parquet(path):
            df = pd.read_parquet(path)
        else:
            # keep_default_na=False: a video called "NA" or "null" stays a string
            df = pd.read_csv(
                path,
                dtype={c: str for c in TEXT_COLUMNS},
                keep_default_na=False,
                na_values={c: [""] for c in (*COLUMNS, *OPTIONAL_COLUMNS)},
            )
    except ImportError as err:
        raise AblateError(
            f"cannot read Parquet manifest {path} ({err}); install pyarrow or use a .csv manifest"
        ) from None
    except Exception as err:  # noqa: BLE001 - any parser failure is a bad file to the user
        raise AblateError(
            f"cannot read manifest {path}: {type(err).__name__}: {_one_line(err)}; "
            "it must be a CSV (.csv) or Parquet (.parquet) frame table"
        ) from None
    _require_columns(df, path)
    for col in ("source_path", "target_path", *OPTIONAL_COLUMNS):
        if col not in df.columns:
            df[col] = pd.NA
    known = COLUMNS + list(OPTIONAL_COLUMNS)
    return df[known + [c for c in df.columns if c not in known]]


def load_manifest(path: str | Path) -> pd.DataFrame:
    """Read, validate and resolve a manifest: paths become absolute, labels/frames ints.

    The manifest's own location is kept in `df.attrs["manifest"]`, and the path
    text as written in the file in the `path_text` column (for messages).
    """
    path = Path(path).expanduser().resolve()
    df = read_table(path)
    df = resolve_paths(validate(df, where=str(path)), path.parent)
    df.attrs["manifest"] = str(path)
    df.attrs["protocol"] = read_protocol(path)
    return df


def save_manifest(df: pd.DataFrame, path: str | Path, protocol: dict | None = None) -> Path:
    """Validate and write `df`; paths under the manifest's folder are written relative.

    Written to a temporary file beside `path`, then renamed over it: concurrent trials may
    build the same manifest, and a reader never sees a half-written one. `protocol` (how
    the table was made) goes to the sidecar `<path>.json`, with the file's sha256; without
    one, a sidecar left from an earlier manifest at `path` is removed (it would describe
    other rows)."""
    path = Path(path).expanduser().resolve()
    table = validate(df, where="the table to save")
    out = table[COLUMNS + [c for c in OPTIONAL_COLUMNS if c in table.columns]]
    for col in PATH_COLUMNS:
        out[col] = [_relative(p, path.parent) for p in out[col]]
    path.parent.mkdir(parents=True, exist_ok=True)
    # same suffix, so pandas infers the same compression (.csv.gz) as for `path`
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        if _is_parquet(path):
            try:
                out.to_parquet(tmp, index=False)
            except ImportError as err:
                raise AblateError(
                    f"cannot write Parquet manifest {path} ({err}); install pyarrow or use .csv"
                ) from None
        else:
            out.to_csv(tmp, index=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _write_protocol(path, protocol, len(out))
    return path


def protocol_path(manifest: str | Path) -> Path:
    """The sidecar that records how `manifest` was made: `<manifest>.json`."""
    manifest = Path(manifest)
    return manifest.with_name(manifest.name + ".json")


def read_protocol(manifest: str | Path) -> dict | None:
    """The recorded protocol of `manifest`, or None when there is none or it describes
    another version of the file (its sha256 no longer matches)."""
    manifest = Path(manifest).expanduser()
    side = protocol_path(manifest)
    if not side.is_file():
        return None
    try:
        record = json.loads(side.read_text())
    except ValueError:
        log.warning("%s is not JSON; ignoring it", side)
        return None
    if not isinstance(record, dict) or record.get("sha256") != _file_sha(manifest):
        log.warning("%s describes another version of %s; ignoring it", side, manifest.name)
        return None
    return record


def _write_protocol(path: Path, protocol: dict | None, rows: int) -> None:
    side = protocol_path(path)
    if protocol is None:
        side.unlink(missing_ok=True)
        return
    record = {**protocol, "manifest": path.name, "rows": rows, "sha256": _file_sha(path)}
    tmp = side.with_name(f".{side.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")
        os.replace(tmp, side)
    finally:
        tmp.unlink(missing_ok=True)


def _file_sha(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_paths(df: pd.DataFrame, folder: str | Path) -> pd.DataFrame:
    """Make every path column absolute (relative ones are relative to `folder`)."""
    df = df.copy()
    df["path_text"] = df["path"]
    for col in PATH_COLUMNS:
        df[col] = [_absolute(p, Path(folder)) for p in df[col]]
    return df


# ---------------------------------------------------------------- validation


def validate(df: pd.DataFrame, where: str = "manifest") -> pd.DataFrame:
    """Raise AblateError on a table that training must not see (schema, labels, splits).

    Returns a copy with int label and frame columns, so later code can trust them.
    """
    _require_columns(df, where)
    if df.empty:
        raise AblateError(f"{where} has no rows; rebuild it with `ablate data manifest`")
    bad = _bad_label_mask(df)
    if bad.any():
        raise AblateError(
            f"{where}: {int(bad.sum())} rows have a label outside {{0, 1}} "
            f"(e.g. {_examples(df.loc[bad, 'label'])}); use 0 for real and 1 for fake"
        )
    bad = ~df["split"].isin(SPLITS)
    if bad.any():
        raise AblateError(
            f"{where}: {int(bad.sum())} rows have a split outside {'/'.join(SPLITS)} "
            f"(e.g. {_examples(df.loc[bad, 'split'])}); fix the split column"
        )
    frames = pd.to_numeric(df["frame"], errors="coerce")
    bad = frames.isna() | (frames != frames.round())
    if bad.any():
        raise AblateError(
            f"{where}: {int(bad.sum())} rows have a non-integer frame "
            f"(e.g. {_examples(df.loc[bad, 'frame'])}); frame is the index inside its video"
        )
    bad = df["path"].isna() | (df["path"].astype(str).str.strip() == "")
    if bad.any():
        raise AblateError(f"{where}: {int(bad.sum())} rows have an empty path; fill or drop them")
    df = df.copy()
    for col in ("source_path", "target_path"):
        if col not in df.columns:
            df[col] = pd.NA
    df["label"] = pd.to_numeric(df["label"]).astype(int)
    df["frame"] = frames.astype(int)
    return df


def _require_columns(df: pd.DataFrame, where: str | Path) -> None:
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise AblateError(
            f"{where} lacks column(s) {', '.join(missing)}; a manifest needs "
            f"{', '.join(COLUMNS)} (source_path/target_path optional)"
        )


def _bad_label_mask(df: pd.DataFrame) -> pd.Series:
    labels = pd.to_numeric(df["label"], errors="coerce")
    return ~labels.isin(LABELS)


# ---------------------------------------------------------------- check


@dataclass
class CheckReport:
    """What `check_manifest` found: problems by kind (with the offending rows) and counts."""

    manifest: str
    rows: int
    images_opened: int
    images_total: int
    counts: pd.DataFrame
    problems: dict[str, list] = field(default_factory=dict)
    protocol: dict | None = None  # how the manifest was made (its sidecar), when recorded

    @property
    def ok(self) -> bool:
        return not any(self.problems.values())

    def format(self) -> str:
        """A readable summary: counts table, then each problem kind with a few examples."""
        lines = [f"manifest {self.manifest}: {self.rows} rows"]
        lines.append(format_protocol(self.protocol))
        lines.append(self.counts.to_string(index=False) if len(self.counts) else "(no rows)")
        lines.append(f"opened {self.images_opened} of {self.images_total} distinct images")
        found = {k: v for k, v in self.problems.items() if v}
        if not found:
            lines.append("no problems found")
        for kind, items in found.items():
            shown = ", ".join(str(x) for x in items[:EXAMPLES])
            more = f" (+{len(items) - EXAMPLES} more)" if len(items) > EXAMPLES else ""
            lines.append(f"PROBLEM {kind}: {len(items)}: {shown}{more}")
        return "\n".join(lines)


def check_manifest(
    path: str | Path, guided: bool = True, max_images: int | None = None
) -> CheckReport:
    """Find everything that would hurt a run, without stopping at the first problem.

    Opens every distinct image (or a seeded sample of `max_images` of them) so
    corrupt files surface here, not hours into training. `guided` adds the
    checks that guided training needs: every fake has an existing source and target.
    """
    path = Path(path).expanduser().resolve()
    df = resolve_paths(read_table(path), path.parent)
    problems: dict[str, list] = {}
    problems["bad labels"] = _rows(df, _bad_label_mask(df), "label")
    problems["bad splits"] = _rows(df, ~df["split"].isin(SPLITS), "split")
    problems["duplicate rows (same path and split)"] = sorted(
        set(df.loc[df.duplicated(["path", "split"]), "path_text"])
    )
    problems["videos in several splits"] = _leaking_videos(df)
    exists = _exists_cache(df)
    problems["missing files"] = sorted({p for p in df["path"] if not exists(p)})
    if guided:
        problems.update(_guided_problems(df, exists))
    to_open = _images_to_open(df, guided, exists)
    opened = _sample(to_open, max_images)
    problems["unreadable images"] = [
        p for p in _progress(opened, "opening images") if not _opens(p)
    ]
    counts = count_frames(df)
    return CheckReport(
        str(path), len(df), len(opened), len(to_open), counts, problems, read_protocol(path)
    )


def format_protocol(protocol: dict | None) -> str:
    """One line: which adapter, layout and frame-count preset made a manifest."""
    if not protocol:
        return "protocol: not recorded (no current <manifest>.json beside it)"
    counts = ", ".join(
        f"{k}={protocol.get(k)}"
        for k in ("frames_per_video", "frames_per_video_eval", "frames_per_real_video",
                  "frames_per_fake_video", "fake_real_ratio")
    )
    return (f"protocol: adapter {protocol.get('adapter')}, layout {protocol.get('layout')}, "
            f"preset {protocol.get('preset')} ({counts})")


def count_frames(df: pd.DataFrame) -> pd.DataFrame:
    """Frames and videos per dataset / split / method / label."""
    keys = ["dataset", "split", "method", "label"]
    if df.empty:
        return pd.DataFrame(columns=[*keys, "frames", "videos"])
    grouped = df.groupby(keys, dropna=False)
    return (
        grouped.agg(frames=("path", "size"), videos=("video_id", "nunique"))
        .reset_index()
        .sort_values(keys)
        .reset_index(drop=True)
    )


def _guided_problems(df: pd.DataFrame, exists) -> dict[str, list]:
    fakes = df[pd.to_numeric(df["label"], errors="coerce") == 1]
    no_pair = fakes["source_path"].isna() | fakes["target_path"].isna()
    partners = pd.concat([fakes["source_path"], fakes["target_path"]]).dropna()
    return {
        "fakes without source/target": sorted(set(fakes.loc[no_pair, "path_text"])),
        "missing source/target files": sorted({p for p in partners if not exists(p)}),
    }


def _leaking_videos(df: pd.DataFrame) -> list[str]:
    splits = df.groupby(["dataset", "video_id"])["split"].nunique()
    return [f"{d}/{v}" for (d, v), n in splits.items() if n > 1]


def _images_to_open(df: pd.DataFrame, guided: bool, exists) -> list[str]:
    paths = set(df["path"])
    if guided:
        paths |= set(df["source_path"].dropna()) | set(df["target_path"].dropna())
    return sorted(p for p in paths if exists(p))


def _exists_cache(df: pd.DataFrame):
    """`os.path.isfile` memoised: partner frames repeat across many fake rows."""
    seen: dict[str, bool] = {}

    def exists(p: str) -> bool:
        if p not in seen:
            seen[p] = os.path.isfile(p)
        return seen[p]

    return exists


def _opens(path: str) -> bool:
    """True if the file decodes fully as an image (truncated files fail too)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
        return True
    except Exception:  # noqa: BLE001 - PIL raises many types for a bad file
        return False


def _rows(df: pd.DataFrame, mask: pd.Series, col: str) -> list[str]:
    return [
        f"row {i}: {col}={v!r} ({p})"
        for i, v, p in zip(
            df.index[mask], df.loc[mask, col], df.loc[mask, "path_text"], strict=True
        )
    ]


def _sample(items: list[str], k: int | None) -> list[str]:
    if k is None or k >= len(items):
        return items
    return sorted(random.Random(0).sample(items, k))


def _progress(items: list[str], desc: str):
    return tqdm(items, desc=desc, unit="img", disable=None, leave=False)


# ---------------------------------------------------------------- small helpers


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


def _absolute(p, folder: Path):
    if not isinstance(p, str) or not p:
        return pd.NA
    p = os.path.expanduser(p)
    return p if os.path.isabs(p) else os.path.normpath(os.path.join(folder, p))


def _relative(p, folder: Path):
    if not isinstance(p, str) or not p:
        return pd.NA
    absolute = Path(os.path.abspath(os.path.expanduser(p)))
    if absolute.is_relative_to(folder):
        return absolute.relative_to(folder).as_posix()
    return str(absolute)


def _examples(values: pd.Series) -> str:
    return ", ".join(repr(v) for v in list(dict.fromkeys(values))[:3])


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())[:200]
