"""The protocol behind each test column, said under the tables, and the strict check.

Why: a column of AUCs is only comparable with a paper's (or another sweep's) column when
both were measured alike: frames per video, which videos, compression, crops, the official
list, frame or video level, and how checkpoints were chosen. Each test metric row carries
its protocol (results schema v5, `ablate.data.protocol`); this module turns the rows of one
column into one clause of a "Protocol:" line, says "mixed" (never picks one) where trials
disagree and "unknown" where rows predate the column, names each column (`display_name`),
and with `--strict-protocol` refuses a report whose runs mix presets that a published
protocol fixes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pandas as pd

from ablate.core.errors import AblateError
from ablate.core.protocol import COMPARED, measured_on, mixed_presets, parse
from ablate.provenance import is_part

SELECT_DEFAULT = "best_val"  # a recipe without train.select chose its checkpoint this way
SELECT_NAMES = {"best_val": "best source-val AUC", "last": "the last step",
                "proxy": "a source-domain proxy"}
UNKNOWN = "unknown"


def _test_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    if "protocol" not in metrics.columns:
        metrics = metrics.assign(protocol=None)
    return metrics[metrics["split"] == "test"]


# ---------------------------------------------------------------- display names


def display_names(metrics: pd.DataFrame, tests: list[str],
                  given: Mapping[str, str] | None = None) -> dict[str, str]:
    """Test set -> column header: `given` (`ablate report --name KEY=NAME`), else the
    display name every row of the set records, else the set's own name. Two sets never
    share a header (the second keeps its name in brackets)."""
    given = dict(given or {})
    rows = _test_rows(metrics)
    out: dict[str, str] = {}
    for test in tests:
        if test in given:
            out[test] = given[test]
            continue
        found = {(parse(t) or {}).get("display_name") for t in
                 rows.loc[rows["dataset"] == test, "protocol"]}
        out[test] = found.pop() if len(found) == 1 and None not in found else test
    seen: set[str] = set()
    for test in tests:
        if out[test] in seen:
            out[test] = f"{out[test]} ({test})"
        seen.add(out[test])
    return out


def parse_names(pairs: tuple[str, ...] | list[str]) -> dict[str, str]:
    """`KEY=NAME` pairs -> {KEY: NAME}; one-line error for a pair without `=`."""
    out = {}
    for pair in pairs:
        key, sep, name = pair.partition("=")
        if not sep or not key.strip() or not name.strip():
            raise AblateError(f"--name takes TEST_SET=DISPLAY NAME (e.g. "
                              f"results/manifests/cdf.csv=Celeb-DF v2), got {pair!r}")
        out[key.strip()] = name.strip()
    return out


# ---------------------------------------------------------------- one column's protocol


def column_protocols(metrics: pd.DataFrame, tests: list[str],
                     names: Mapping[str, str]) -> pd.DataFrame:
    """One row per test set: the protocol its trials share (`agree`), or which fields they
    disagree on (`differs`); `trials` with a protocol, `unknown` without one."""
    rows = _test_rows(metrics)
    out = []
    for test in tests:
        mine = rows[rows["dataset"] == test]
        per_trial = mine.groupby("trial_id")["protocol"].agg(
            lambda s: next((p for p in map(parse, s) if p is not None), None))
        levels = sorted(set(mine["level"].dropna().astype(str)))
        known = [p for p in per_trial if p is not None]
        distinct = {measured_on(p) for p in known}
        differs = sorted({k for p in known for k in COMPARED
                          if _text(p.get(k)) != _text(known[0].get(k))})
        first = known[0] if known else {}
        out.append({"dataset": test, "display_name": names.get(test, test),
                    "levels": ",".join(levels), "trials": len(known),
                    "unknown": int(len(per_trial) - len(known)), "agree": len(distinct) <= 1,
                    "differs": ",".join(differs),
                    **{k: (_text(first.get(k)) if len(distinct) == 1 else None)
                       for k in COMPARED}})
    columns = ["dataset", "display_name", "levels", "trials", "unknown", "agree", "differs",
               *COMPARED]
    return pd.DataFrame(out, columns=columns)


def _text(value: Any) -> Any:
    """Nested protocol values as canonical JSON text (CSV cells, comparisons)."""
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value


def describe(p: Mapping[str, Any]) -> str:
    """One protocol as a clause: frames per video, videos, compression, crop, list, preset."""
    fpv = _loads(p.get("frames_per_video")) or {}
    asked = fpv.get("asked")
    asked_text = (UNKNOWN if asked is None else "all" if asked == "all" else
                  f"{asked['real']} per real / {asked['fake']} per fake"
                  if isinstance(asked, dict) else str(asked))
    parts = [f"frames/video asked {asked_text} (scored: median {fpv.get('median', '?')}, "
             f"max {fpv.get('max', '?')})",
             f"{p.get('videos_real', '?')} real / {p.get('videos_fake', '?')} fake videos",
             f"compression {p.get('compression') or UNKNOWN}",
             f"crop {_crop(_loads(p.get('crop')))}",
             f"official list {_listed(_loads(p.get('official_list')))}",
             f"data preset {p.get('preset') or UNKNOWN}"]
    return ", ".join(parts)


def _loads(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _crop(crop: Any) -> str:
    if not isinstance(crop, dict):
        return UNKNOWN
    known = [f"{k} {crop[k]}" for k in ("detector", "detector_version", "align", "scale", "size")
             if crop.get(k) is not None]
    head = f"preset {crop['preset']}: " if crop.get("preset") else ""
    return f"({head}{', '.join(known) or UNKNOWN})"


def _listed(listed: Any) -> str:
    if not isinstance(listed, dict):
        return "none recorded" if listed is None else str(listed)
    sha = listed.get("sha256")
    return f"{listed.get('file')} (sha256 {sha})" if sha else f"{listed.get('file')}"


def protocol_line(columns: pd.DataFrame, selection: str) -> str:
    """`Protocol: <set>: <clause>; ...; checkpoints: <rule>.`, every test column said once."""
    whole = columns[~columns["dataset"].map(is_part).astype(bool)]  # parts: their set's
    if len(whole) and (whole["trials"] == 0).all():
        return ("Protocol: unknown for every test set (rows recorded before protocols were "
                f"stored); checkpoints: {selection}.")
    clauses = []
    for r in whole.itertuples():
        name, levels = r.display_name, r.levels.replace(",", " and ") or UNKNOWN
        if r.trials == 0:
            clauses.append(f"{name}: unknown (rows recorded before protocols were stored)")
        elif not r.agree:
            clauses.append(f"{name}: mixed over {r.trials} trials, differing in {r.differs.replace(',', ', ')}: "
                           "not comparable")
        else:
            text = f"{name} ({levels} level): {describe(r._asdict())}"
            if r.unknown:
                text += f"; unknown for {r.unknown} more trial(s)"
            clauses.append(text)
    if not clauses:
        return ""
    return "Protocol: " + "; ".join(clauses) + f"; checkpoints: {selection}."


# ---------------------------------------------------------------- checkpoint selection


def selection_rule(counted: pd.DataFrame) -> str:
    """Which rule chose the counted trials' checkpoints (recipe `train.select`; absent:
    best_val), one rule or each with its trial count."""
    rules = counted["recipe_json"].map(_select).value_counts()
    if len(rules) == 1:
        rule = str(rules.index[0])
        return f"{rule} ({SELECT_NAMES.get(rule, rule)}), every trial"
    parts = [f"{r} ({n} trial{'s' if n != 1 else ''})" for r, n in rules.items()]
    return "mixed: " + ", ".join(parts) + ": not comparable"


def _select(text: Any) -> str:
    try:
        recipe = json.loads(text) if isinstance(text, str) else {}
    except json.JSONDecodeError:
        recipe = {}
    train = recipe.get("train") if isinstance(recipe, dict) else None
    value = train.get("select") if isinstance(train, dict) else None
    return str(value) if value else SELECT_DEFAULT


# ---------------------------------------------------------------- --strict-protocol


def strict_check(metrics: pd.DataFrame, counted: pd.DataFrame) -> None:
    """AblateError (one line) for the first counted trial whose training data (its source-val
    row's protocol) and test sets mix presets a published protocol fixes, or whose
    protocol is not recorded (strict: what cannot be checked is refused)."""
    protocols = _parsed(metrics)
    for trial in counted.itertuples():
        mine = protocols[protocols["trial_id"] == trial.id]
        train = mine[mine["split"] == "val"]["_p"].dropna()
        tests = mine[(mine["split"] == "test") & ~mine["dataset"].map(is_part).astype(bool)]
        per_test = tests.groupby("dataset")["_p"].agg(
            lambda s: next((p for p in s if p is not None), None))
        missing = (["training data"] if train.empty else []) + [
            f"test set {d}" for d, p in per_test.items() if p is None]
        who = f"trial {trial.tune_trial_id} ({trial.label})"
        if missing:
            raise AblateError(f"--strict-protocol: {who} has no recorded protocol for "
                              f"{', '.join(missing)} (recorded before protocols were stored); "
                              "cannot check its presets: rerun it or drop --strict-protocol")
        why = mixed_presets(train.iloc[0].get("preset"),
                            {d: p.get("preset") for d, p in per_test.items()})
        if why:
            raise AblateError(f"--strict-protocol: {who}: {why}; its numbers do not follow "
                              "one published protocol")


def strict_external(published: list[Any], metrics: pd.DataFrame) -> None:
    """With published rows: AblateError (one line) where a measured column, or the training
    data, differs from what a published row's protocol fixes (frames per video of training
    and test data, training compression), or is unknown there."""
    rows = _parsed(metrics)
    train = rows[rows["split"] == "val"]
    for ext in published:
        stated_train = ext.protocol.get("train") or {}
        stated_test = ext.protocol.get("test") or {}
        checks = [("training data", train, "frames_per_video", stated_train.get(
            "frames_per_video"), _asked), ("training data", train, "compression",
                                           stated_train.get("compression"), _compression)]
        for dataset in dict.fromkeys(t for per in ext.values.values() for t in per):
            mine = rows[(rows["split"] == "test") & (rows["dataset"] == dataset)]
            if not mine.empty:
                checks.append((f"test set {dataset}", mine, "frames_per_video",
                               stated_test.get("frames_per_video"), _asked))
        for who, mine, key, stated, read in checks:
            if stated is None or mine.empty:
                continue
            found = {json.dumps(read(p), sort_keys=True) for p in mine["_p"]}
            if found != {json.dumps(stated, sort_keys=True)}:
                shown = ", ".join(sorted(f.strip('"') for f in found))
                raise AblateError(f"--strict-protocol: {ext.label} ({ext.source}) fixes {key} "
                                  f"{stated} for its {who.split()[0]} data, but this report's "
                                  f"{who} has {shown.replace('null', UNKNOWN)}")


def _asked(p: dict[str, Any] | None) -> Any:
    return None if p is None else (p.get("frames_per_video") or {}).get("asked")


def _compression(p: dict[str, Any] | None) -> Any:
    return None if p is None else p.get("compression")


def _parsed(metrics: pd.DataFrame) -> pd.DataFrame:
    """The metric rows with `_p`: each row's protocol as a dict (None: unknown)."""
    text = metrics["protocol"] if "protocol" in metrics.columns else pd.Series(
        None, index=metrics.index, dtype=object)
    return metrics.assign(_p=text.map(parse))
