"""The content identity of a trial: what its numbers were computed on, beyond its settings.

`recipe_hash` names a recipe's settings, but two trials with equal settings can still have run
on other data (an edited `configs/data/ffpp.yaml`, c23 -> c40; re-extracted frames) or another
teacher (`ablate teachers fit` re-run, a replaced weights file). `reuse_key` adds a
fingerprint of each; its `identity` is the key under which a stored result may be reused.

Data: per dataset the recipe reads (`data.train` with the recipe's adapter overrides, each of
`data.tests` as evaluation resolves it, a dataset `train.proxy` names), a hash of the adapter
settings (location keys left out: moving a tree keeps its identity) and of the manifest rows,
in the manifest's own order (the seeded shuffle draws row positions, so reordered rows are
other batches and other numbers; adapters and the benchmark write a fixed, sorted order), with
paths relative to the rows' common folder, plus the bytes of a few evenly spaced frames (the
same layout filled with other images is other data).

Teacher: None for the baseline; else the teacher config with `path` / `lora` replaced by a
sha256 of the weight files they point at. A tiny twin without `path` is built in code from
its seed, so its config is its identity ("builtin:..."). File digests are kept in
`<cache>/file_digests.json` keyed by absolute path and checked against (size, mtime_ns), so
multi-GB weights are read once, not once per trial.

Encoder: `backbone.pretrained_path`'s bytes, when set. Precision: what `train.precision`
resolved to on the run's device. Neither is a path: a run moved to another mount point keeps
its identity (ablate/core/identity.py has the rule and how old identities stay valid).

Torch-free: the sweep driver and the results side call it.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from ablate.core import schema
from ablate.core.errors import AblateError
from ablate.core.files import sha256_file
from ablate.core.identity import PRECISION_DEFAULT, identity
from ablate.core.names import ADAPTER_META, ADAPTER_WEIGHTS, FINGERPRINT_HEX, FITTED_META
from ablate.core.paths import TEACHERS_DIR
from ablate.core.selection import held_out_method, proxy_name
from ablate.data.manifest import COLUMNS, PATH_COLUMNS, load_manifest
from ablate.data.sources import Source, dataset_overrides, locate, recipe_overrides
from ablate.locations import cache_base
from ablate.recipe import is_guided, recipe_hash

PROVENANCE = (FITTED_META, ADAPTER_META)  # what a fit/adapt used, not weights
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".json", ".txt", ".model")
LOCATION_KEYS = ("root", "manifest", "splits_dir")  # where a dataset is, not what it holds
PROBE_FRAMES = 16  # frames whose bytes join a dataset's fingerprint
DIGEST_FILE = "file_digests.json"
DIGEST_VERSION = 1  # bump when a cached digest's meaning changes (then all are recomputed)
SHORT = FINGERPRINT_HEX  # hex digits of the fingerprints


def reuse_key(cfg: DictConfig, precision: str = PRECISION_DEFAULT) -> dict[str, str | None]:
    """recipe_hash, data_sha, teacher_sha and identity: a short sha over them, the
    precision the run computes in (`train.precision` resolved on its device: the caller
    knows the device) and the encoder's pretrained weights (ablate/core/identity.py), the
    key under which a finished trial's result may be reused."""
    parts: dict[str, str | None] = {
        "recipe_hash": recipe_hash(cfg),
        "data_sha": data_fingerprint(cfg),
        "teacher_sha": teacher_fingerprint(cfg),
    }
    parts["identity"] = identity(parts["recipe_hash"], parts["data_sha"], parts["teacher_sha"],
                                 precision, backbone_fingerprint(cfg))
    return parts


def backbone_fingerprint(cfg: DictConfig) -> str | None:
    """None when the encoder starts from random init; else the digest of the pretrained
    weights `backbone.pretrained_path` points at ("missing:<value>" when absent)."""
    value = cfg.backbone.get("pretrained_path")
    if not value:
        return None
    where = Path(str(value)).expanduser()
    if not where.exists():
        return f"missing:{value}"
    with DigestCache.open() as cache:
        return weights_digest(where, cache)[:SHORT]


# ---------------------------------------------------------------- data


def data_fingerprint(cfg: DictConfig) -> str:
    """16 hex digits over every dataset the recipe reads (see the module doc)."""
    with DigestCache.open() as cache:
        parts = {
            "train": _dataset_part(str(cfg.data.train), recipe_overrides(cfg), cache),
            "tests": [_dataset_part(str(t), dataset_overrides(cfg, str(t)), cache)
                      for t in cfg.data.tests],
        }
        proxy = proxy_name(cfg)
        if proxy is not None and held_out_method(proxy) is None:  # selection reads it too
            parts["proxy"] = _dataset_part(proxy, dataset_overrides(cfg, proxy), cache)
    return _sha(parts)[:SHORT]


def dataset_fingerprint(name: str, overrides: dict | None = None) -> dict[str, Any]:
    """What one dataset contributes to `data_fingerprint`: its settings, rows and probed
    frames, or the error that stops it from resolving (the trial reports it for real)."""
    with DigestCache.open() as cache:
        return _dataset_part(name, overrides, cache)


def _dataset_part(name: str, overrides: dict | None, cache: DigestCache) -> dict[str, Any]:
    try:
        source = locate(name, overrides)  # builds the manifest when it is not cached yet
    except AblateError as err:
        return {"unavailable": str(err)}
    settings = None
    if source.settings is not None:
        settings = {k: v for k, v in source.settings.items() if k not in LOCATION_KEYS}
    rows, probe = rows_digest(source, cache)
    frames = [cache.file_sha(Path(p)) for p in probe]
    return {"settings": settings, "rows": rows, "frames": _sha(frames)[:SHORT]}


def rows_digest(source: Source, cache: DigestCache) -> tuple[str, list[str]]:
    """sha256 of the canonical rows and the frames to probe; cached per manifest file."""
    kind = f"rows:{source.rows_of or ''}"
    hit = cache.lookup(source.manifest, kind)
    if hit is not None:
        return hit["sha256"], hit["probe"]
    table = load_manifest(source.manifest)
    if source.rows_of is not None:
        table = table[table["dataset"] == source.rows_of]
    sha = hashlib.sha256(canonical_rows(table)).hexdigest()
    paths = sorted(set(table["path"]))
    picks = sorted({round(i * (len(paths) - 1) / max(PROBE_FRAMES - 1, 1))
                    for i in range(PROBE_FRAMES)}) if paths else []
    probe = [paths[i] for i in picks]
    cache.store(source.manifest, kind, sha256=sha, probe=probe)
    return sha, probe


def canonical_rows(table: pd.DataFrame) -> bytes:
    """The manifest columns as CSV in the table's own order, paths relative to the folder all
    of them share (so the same tree elsewhere gives the same bytes)."""
    df = table[COLUMNS].copy()
    paths = pd.concat([df[c].dropna().astype(str) for c in PATH_COLUMNS])
    prefix = ""
    if len(paths):  # the common prefix of all strings is that of the smallest and largest
        prefix = os.path.commonprefix([paths.min(), paths.max()])
        prefix = prefix[: prefix.rfind(os.sep) + 1]
    for col in PATH_COLUMNS:  # every non-empty path starts with the prefix
        df[col] = df[col].astype("string").fillna("").str.slice(len(prefix))
    for col in ("label", "frame"):
        df[col] = df[col].astype(int)
    return df.to_csv(index=False, lineterminator="\n").encode()


# ---------------------------------------------------------------- teacher


# teacher settings that name weight files (declared with file=True in ablate/core/schema.py):
# their bytes count, not their names; unset, they are left out entirely (sd3 / flux part files
# came later: a recipe without them keeps its digest)
FILE_KEYS = schema.FILE_KEYS


def teacher_fingerprint(cfg: DictConfig) -> str | None:
    """None for the baseline; "builtin:<sha>" for a teacher built in code from its config;
    "weights:<sha>" when `teacher.path` / `teacher.lora` / `FILE_KEYS` name files (their
    bytes count); "missing:<value>" when one of them does not exist (the train step says so
    for real)."""
    if not is_guided(cfg):
        return None
    teacher = OmegaConf.to_container(cfg.teacher, resolve=True)
    assert isinstance(teacher, dict)
    parts: dict[str, Any] = {"config": {k: v for k, v in teacher.items() if k not in FILE_KEYS}}
    with DigestCache.open() as cache:
        for key in FILE_KEYS:
            value = teacher.get(key)
            if not value:
                continue
            where = stored(str(value))
            if where is not None and key == "lora" and where.is_dir():
                where = where / ADAPTER_WEIGHTS  # the one file `load_lora` reads of a folder
            if where is None or not where.exists():
                return f"missing:{value}"
            parts[key] = weights_digest(where, cache)
    kind = "weights" if len(parts) > 1 else "builtin"
    return f"{kind}:{_sha(parts)[:SHORT]}"


def stored(value: str) -> Path | None:
    """`value` as a path, else as a name under results/teachers/ (`stored_path`'s rule)."""
    for path in (Path(value).expanduser(), TEACHERS_DIR / value):
        if path.exists():
            return path
    return None


def weights_digest(path: Path, cache: DigestCache) -> str:
    """sha256 of one weights file, or over a folder's weight and config files (relative name
    and digest of each; provenance JSON and hidden files left out)."""
    if path.is_file():
        return cache.file_sha(path)
    files = sorted(
        p for p in path.rglob("*")
        if p.is_file() and p.suffix in WEIGHT_SUFFIXES and p.name not in PROVENANCE
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    return _sha([(p.relative_to(path).as_posix(), cache.file_sha(p)) for p in files])


# ---------------------------------------------------------------- digest cache


def cache_folder() -> Path:
    """Where the digest cache lives: the base the benchmark cache uses too."""
    return cache_base()


class DigestCache:
    """Digests of files, kept in a JSON file keyed by kind and absolute path and valid while
    the file's (size, mtime_ns) stay the same. Concurrent writers may lose each other's new
    entries (they are recomputed), never corrupt the file (written by rename)."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.entries: dict[str, dict[str, Any]] = self._read()
        self.dirty = False

    @classmethod
    def open(cls) -> DigestCache:
        return cls(cache_folder() / DIGEST_FILE)

    def __enter__(self) -> DigestCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.save()

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.file.read_text())
        except (OSError, ValueError):
            return {}
        ok = isinstance(data, dict) and data.get("version") == DIGEST_VERSION
        return data.get("entries", {}) if ok else {}

    def lookup(self, path: Path, kind: str) -> dict[str, Any] | None:
        stat = path.stat()
        entry = self.entries.get(f"{kind}:{path.resolve()}")
        if entry and (entry.get("size"), entry.get("mtime_ns")) == (stat.st_size, stat.st_mtime_ns):
            return entry
        return None

    def store(self, path: Path, kind: str, **values: Any) -> None:
        stat, where = path.stat(), str(path.resolve())
        self.entries[f"{kind}:{where}"] = {
            "path": where, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, **values}
        self.dirty = True

    def file_sha(self, path: Path) -> str:
        """sha256 of the file's bytes ("missing" for a file that is not there)."""
        if not path.is_file():
            return "missing"
        hit = self.lookup(path, "file")
        if hit is not None:
            return hit["sha256"]
        sha = sha256_file(path)
        self.store(path, "file", sha256=sha)
        return sha

    def save(self) -> None:
        """Write the entries (those of files still present) if any changed."""
        if not self.dirty:
            return
        kept = {k: v for k, v in self.entries.items() if os.path.exists(v.get("path", ""))}
        self.file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_name(f".{self.file.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            tmp.write_text(json.dumps({"version": DIGEST_VERSION, "entries": kept}))
            os.replace(tmp, self.file)
        except OSError:
            pass  # a cache that cannot be written costs time, not correctness
        finally:
            tmp.unlink(missing_ok=True)
        self.dirty = False


def _sha(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
