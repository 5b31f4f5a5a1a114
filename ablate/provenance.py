"""What a metric row was computed on: a hash of the test rows actually scored.

Two metric rows are comparable only when they scored the same frames. `manifest_sha`
names those rows by their content (path, label, video_id, split), so a row added,
removed, relabelled or moved to another video changes it, and a reordered manifest
or the same tree under another folder does not (paths are taken relative to the
folder all of them share, as `ablate.reuse_key.canonical_rows` does; unlike that
fingerprint, which feeds the seeded shuffle, the order of test rows changes no
number, so the rows are sorted first).

Torch-free: evaluation and the results side both use it.
"""

from __future__ import annotations

import hashlib
import os

import pandas as pd

from ablate.core.errors import AblateError
from ablate.core.names import FINGERPRINT_HEX

HASHED = ("path", "label", "video_id", "split")  # what identifies a scored row


PART = "::"  # "<test set>::<part>": a breakdown of a test set (ablate.evaluate.sub_test_sets)


def is_part(dataset: str) -> bool:
    """A breakdown of another test set: reported, never counted again in means over test sets."""
    return PART in str(dataset)


def manifest_sha(rows: pd.DataFrame) -> str:
    """16 hex digits over the scored rows' HASHED columns, order-independent."""
    missing = [c for c in HASHED if c not in rows.columns]
    if missing:
        raise AblateError(f"scored rows lack {', '.join(missing)}; cannot hash them")
    df = pd.DataFrame({c: rows[c].astype(str).to_numpy() for c in HASHED})
    if len(df):  # the common prefix of all paths is that of the smallest and largest
        prefix = os.path.commonprefix([df["path"].min(), df["path"].max()])
        df["path"] = df["path"].str.slice(len(prefix[: prefix.rfind(os.sep) + 1]))
    df["label"] = rows["label"].astype(int).to_numpy()
    df = df.sort_values(list(HASHED), kind="mergesort")
    blob = df.to_csv(index=False, lineterminator="\n").encode()
    return hashlib.sha256(blob).hexdigest()[:FINGERPRINT_HEX]
