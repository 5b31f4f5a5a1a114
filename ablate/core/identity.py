"""Identity by content: what a result was computed on, never where it was read from.

A recipe names weights and datasets by path (`teacher.path`, `backbone.pretrained_path`, a
manifest in `data.train`). A path says where the bytes are, not which bytes: the same weights
on another cluster's mount point are the same result, and other weights behind the same
path are another. So:

- `path_free(result)`: the recipe hash sees a file setting only as set or unset
  (`LOCAL_FILE`), and a manifest only by its file name (the name is also its column header);
- the bytes enter the reuse key (`ablate.reuse_key`): a digest of the weights, of the
  manifest's rows and probed frames;
- `train.precision: auto` means bf16 on a GPU and fp32 on a CPU: two computations. The
  identity carries the precision it resolved to (`resolve_precision`), left out at fp32 so
  that every result stored before this rule (CPU runs: fp32) keeps its identity.

Plain Python: the results database's migrations use it as the training side does.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import PurePath
from typing import Any

from ablate.core.schema import declared

LOCAL_FILE = "<local file>"  # a file setting in the recipe hash: set, bytes in the reuse key
MANIFEST_SUFFIXES = (".csv", ".parquet")  # a data.train / data.tests entry that is a path
PRECISION_DEFAULT = "fp32"  # the resolved precision left out of an identity (see module doc)
SHORT_HASH = 12  # hex digits of a recipe hash
SHORT_IDENTITY = 16  # hex digits of an identity


def file_settings() -> tuple[str, ...]:
    """Dotted keys of the settings that name local files (declared with file=True)."""
    return tuple(k for k, s in declared().items() if s.file)


def is_manifest_path(name: str) -> bool:
    """Whether a dataset entry is a manifest file rather than a dataset name."""
    return PurePath(name).suffix in MANIFEST_SUFFIXES


def path_free(result: dict[str, Any]) -> dict[str, Any]:
    """A copy of a result dict with every location replaced (see the module doc)."""
    out = copy.deepcopy(result)
    for dotted in file_settings():
        parent, leaf = dotted.split(".")
        node = out.get(parent)
        if isinstance(node, dict) and node.get(leaf):
            node[leaf] = LOCAL_FILE
    data = out.get("data")
    if isinstance(data, dict):
        if isinstance(data.get("train"), str) and is_manifest_path(data["train"]):
            data["train"] = PurePath(data["train"]).name
        if isinstance(data.get("tests"), list):
            data["tests"] = [PurePath(t).name if isinstance(t, str) and is_manifest_path(t)
                             else t for t in data["tests"]]
    return out


def hash_result(result: dict[str, Any]) -> str:
    """The recipe hash of a result dict (`ablate.recipe.result_dict`): 12 hex digits over its
    path-free form."""
    blob = json.dumps(path_free(result), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:SHORT_HASH]


def resolve_precision(word: str, on_gpu: bool, bf16_supported: bool) -> str:
    """What `train.precision` computes in: `auto` is bf16 on a GPU that has it, else fp32."""
    if word != "auto":
        return word
    return "bf16" if on_gpu and bf16_supported else "fp32"


def identity(recipe_hash: str, data_sha: str | None, teacher_sha: str | None,
             precision: str = PRECISION_DEFAULT, backbone_sha: str | None = None) -> str:
    """16 hex digits over the recipe hash and the content digests: the key under which a
    stored result may be reused. The precision (when not fp32) and the encoder's pretrained
    weights (when the recipe reads any) join it only then, so identities stored before
    they did are unchanged where they meant the same computation."""
    parts: dict[str, Any] = {"recipe_hash": recipe_hash, "data_sha": data_sha,
                             "teacher_sha": teacher_sha}
    if precision != PRECISION_DEFAULT:
        parts["precision"] = precision
    if backbone_sha is not None:
        parts["backbone_sha"] = backbone_sha
    return sha_json(parts)[:SHORT_IDENTITY]


def sha_json(value: Any) -> str:
    """sha256 of a value's canonical JSON (keys sorted)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
