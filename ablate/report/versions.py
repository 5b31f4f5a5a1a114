"""Which code produced a report's numbers: one code version per trial, counted per version.

A trial's version is its own `code_version` column when the trials table has one
(and it is filled), else its sweep's `code_version`. A reused trial's numbers were
computed by the trial it copies (often in an older sweep), so it carries that
trial's version: a sweep resumed on new code, or one that reuses old results,
says that its numbers come from more than one code version.
"""

from __future__ import annotations

import pandas as pd

UNKNOWN = "unknown"


def _text(value: object) -> str | None:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return str(value).strip() or None


def own_versions(trials: pd.DataFrame, sweep_versions: dict[str, object]) -> pd.Series:
    """Per trial (same index): its `code_version` column, else its sweep's, else `unknown`."""
    column = trials.get("code_version")  # optional: older databases have no such column
    sweeps = [_text(sweep_versions.get(s)) for s in trials["sweep"]]
    own = [None] * len(trials) if column is None else [_text(v) for v in column]
    return pd.Series([o or s or UNKNOWN for o, s in zip(own, sweeps, strict=True)],
                     index=trials.index, dtype=str)


def result_versions(trials: pd.DataFrame, origins: pd.DataFrame,
                    sweep_versions: dict[str, object]) -> pd.Series:
    """Per trial (same index): the version of the code that computed its numbers.

    `origins`: trials that reused rows may point to (any sweep; may be empty), with
    columns id, sweep and optionally code_version.
    """
    own = own_versions(trials, sweep_versions)
    if origins.empty or "reused_from" not in trials:
        return own
    origin = own_versions(origins, sweep_versions).set_axis(origins["id"].to_numpy())
    copied = [None if pd.isna(i) else origin.get(int(i)) for i in trials["reused_from"]]
    return pd.Series([c or o for c, o in zip(copied, own, strict=True)], index=trials.index,
                     dtype=str)


def version_counts(counted: pd.DataFrame, column: str = "result_version") -> pd.DataFrame:
    """code_version, trials: how many counted trials each version produced, most first."""
    counts = counted[column].value_counts()
    frame = pd.DataFrame({"code_version": counts.index.astype(str),
                          "trials": counts.to_numpy().astype(int)})
    return frame.sort_values(["trials", "code_version"], ascending=[False, True],
                             ignore_index=True)


def versions_line(counts: pd.DataFrame) -> str:
    """`v1 (12 trials)`, or `numbers from 2 code versions: v1 (11 trials), v0 (1 trial)`."""
    parts = [f"{r.code_version} ({r.trials} trial{'' if r.trials == 1 else 's'})"
             for r in counts.itertuples()]
    if len(parts) <= 1:
        return parts[0] if parts else UNKNOWN
    return f"numbers from {len(parts)} code versions: {', '.join(parts)}"
