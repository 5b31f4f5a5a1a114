"""Published rows (`ablate report --external FILE|NAME`): a paper's numbers beside ours.

Why: a reader wants the paper's Table 1 next to the sweep's own, but a reported number is
not a measurement of ours: it has no seeds, no per-frame scores and its own protocol. So
published rows are read from a small YAML file that must say where they come from
(`source`) and how they were measured (`protocol`), are typeset apart (grey with a dagger
in HTML / LaTeX, a dagger and italics in Markdown, "reported" in the CSVs and the Seeds
column), and are added to display tables only after every statistic is computed: they never
enter a mean, an interval, a bold "best", a rank, a paired test or a plot.

File format (numbers in percent, as papers print them):

    source: Sun et al., DiffusionFake, NeurIPS 2024, Table 1     # or per row
    protocol:                       # or per row (merged over the file's); required
      train: {data: FF++ (4 methods), compression: c23, frames_per_video: 270}
      test: {frames_per_video: 100, level: frame, official_list: Celeb-DF v2 test list}
      crop: MTCNN-style face crops
      checkpoint_selection: null    # null: not stated
    tests: {Celeb-DF: celebdf, DFD: dfd}   # the file's names -> test sets (optional)
    rows:
      - label: EN-B4 + DiffusionFake
        auc: {Celeb-DF: 83.17, DFD: 91.71, avg: 81.88}   # avg: the published average
        eer: {...}

`avg` is shown in the Avg column only when the file's test sets (the `tests:` mapping, else
the row's own sets) are exactly the report's; it is never recomputed here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ablate.core.errors import AblateError
from ablate.core.paths import config_names_without_plugins
from ablate.provenance import is_part
from ablate.report.display import Table
from ablate.report.tables import AVG

PUBLISHED = Path(__file__).resolve().parent / "published"
SHIPPED = {"diffusionfake": "diffusionfake_table1.yaml"}  # --external NAME -> file here
METRICS = ("auc", "eer", "ap")
AVG_KEY = AVG  # the average column: the YAML key and the main table's column alike
MARK = "†"
PROTOCOL_KEYS = {"train": ("data", "compression", "frames_per_video"),
                 "test": ("frames_per_video", "level", "official_list"),
                 "crop": None, "checkpoint_selection": None, "eer": None, "notes": None}
LEVELS = ("frame", "video")


@dataclass
class ExternalRow:
    """One published row: label, citation, protocol, and values (percent) per test set."""

    label: str
    source: str
    protocol: dict[str, Any]
    file: str
    values: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> set -> %
    named: dict[str, str] = field(default_factory=dict)  # our test set -> the file's name
    avg: dict[str, float] = field(default_factory=dict)  # metric -> published average
    avg_over: list[str] = field(default_factory=list)  # test sets the average is over

    @property
    def level(self) -> str:
        return str(self.protocol["test"]["level"])


# ---------------------------------------------------------------- reading and checking


def resolve(spec: str) -> Path:
    """A shipped name (`diffusionfake`) or a path to a YAML file."""
    if spec in SHIPPED:
        return PUBLISHED / SHIPPED[spec]
    path = Path(spec).expanduser()
    if not path.is_file():
        raise AblateError(f"--external {spec}: no such file, and not a shipped name (shipped: "
                          f"{', '.join(sorted(SHIPPED))})")
    return path


def load_external(specs: list[str] | tuple[str, ...], tests: list[str],
                  names: dict[str, str]) -> list[ExternalRow]:
    """Every row of every file, checked; `tests`/`names`: the report's test sets and headers
    (a file's test set must be one of them, or a configs/data name)."""
    rows: list[ExternalRow] = []
    for spec in specs:
        rows += _load(resolve(spec), tests, names)
    return rows


def _load(path: Path, tests: list[str], names: dict[str, str]) -> list[ExternalRow]:
    where = f"external rows file {path}"
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise AblateError(f"{where}: cannot read it as YAML ({' '.join(str(err).split())})") \
            from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list) or not data["rows"]:
        raise AblateError(f"{where}: needs a non-empty `rows:` list (see docs/report.md)")
    mapping = data.get("tests") or {}
    if not isinstance(mapping, dict):
        raise AblateError(f"{where}: `tests:` must map the file's test-set names to ours")
    known = {**{t: t for t in tests}, **{v: k for k, v in names.items()},
             **{n: n for n in config_names_without_plugins("data")}}
    out = []
    for i, row in enumerate(data["rows"], start=1):
        if not isinstance(row, dict) or not row.get("label"):
            raise AblateError(f"{where}: row {i} needs a `label`")
        label = str(row["label"])
        source = row.get("source") or data.get("source")
        if not source or not str(source).strip():
            raise AblateError(f"{where}: row {label!r} has no `source` (the citation: give "
                              "`source:` for the file or the row)")
        protocol = _protocol(data.get("protocol"), row.get("protocol"), f"{where}: row {label!r}")
        ext = ExternalRow(label, str(source).strip(), protocol, str(path))
        for metric in METRICS:
            per = row.get(metric)
            if per is None:
                continue
            if not isinstance(per, dict):
                raise AblateError(f"{where}: row {label!r}: {metric} must map test sets to "
                                  "numbers (percent)")
            for name, value in per.items():
                number = _number(value, f"{where}: row {label!r} {metric} {name}")
                if str(name) == AVG_KEY:
                    ext.avg[metric] = number
                    continue
                ours = _ours(str(name), mapping, known, f"{where}: row {label!r}")
                ext.values.setdefault(metric, {})[ours] = number
                ext.named[ours] = str(name)
        if not ext.values and not ext.avg:
            raise AblateError(f"{where}: row {label!r} has no numbers (give "
                              f"{' / '.join(METRICS)}: {{test set: percent}})")
        every = [_ours(str(n), mapping, known, where) for n in mapping] if mapping else sorted(
            {t for v in ext.values.values() for t in v})
        ext.avg_over = list(dict.fromkeys(every))
        out.append(ext)
    return out


def _protocol(base: Any, own: Any, where: str) -> dict[str, Any]:
    """The file's protocol with the row's merged over it; every group and key known."""
    if base is None and own is None:
        raise AblateError(f"{where} has no protocol (give `protocol:` for the file or the row: "
                          "how the numbers were measured; null for what the source does not "
                          "say)")
    merged: dict[str, Any] = {}
    for part in (base, own):
        if part is None:
            continue
        if not isinstance(part, dict):
            raise AblateError(f"{where}: protocol must be a mapping")
        for key, value in part.items():
            if key not in PROTOCOL_KEYS:
                raise AblateError(f"{where}: unknown protocol key {key!r}; known: "
                                  f"{', '.join(PROTOCOL_KEYS)}")
            fields = PROTOCOL_KEYS[key]
            if fields is None:
                merged[key] = value
                continue
            if not isinstance(value, dict) or set(value) - set(fields):
                raise AblateError(f"{where}: protocol {key} must be a mapping of "
                                  f"{', '.join(fields)}")
            merged[key] = {**merged.get(key, {}), **value}
    test = merged.get("test") or {}
    if test.get("level") not in LEVELS:
        raise AblateError(f"{where}: protocol test.level must be frame or video (the level "
                          "its numbers were computed at)")
    merged.setdefault("train", {})
    return merged


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not 0 <= value <= 100:
        raise AblateError(f"{where}: {value!r} is not a number in [0, 100] (percent)")
    return float(value)


def _ours(name: str, mapping: dict, known: dict[str, str], where: str) -> str:
    target = str(mapping.get(name, name))
    if target not in known:
        raise AblateError(f"{where}: unknown test set {name!r}; name one of this report's "
                          "test sets or a configs/data dataset, or map it under `tests:`")
    return known[target]


# ---------------------------------------------------------------- typesetting


def protocol_text(row: ExternalRow) -> str:
    """The published protocol as one clause; what the source leaves out is `not stated`."""
    p = row.protocol

    def say(value: Any) -> str:
        return "not stated" if value is None else str(value)

    train, test = p.get("train") or {}, p.get("test") or {}
    return (f"train {say(train.get('data'))}, compression {say(train.get('compression'))}, "
            f"{say(train.get('frames_per_video'))} frames/video; test "
            f"{say(test.get('frames_per_video'))} frames/video, {test.get('level')} level, "
            f"official list {say(test.get('official_list'))}; crop {say(p.get('crop'))}; "
            f"checkpoints {say(p.get('checkpoint_selection'))}; EER {say(p.get('eer'))}"
            + (f"; {p['notes']}" if p.get("notes") else ""))


def add_to_table(table: Table, rows: list[ExternalRow], columns: list[tuple[str, str]],
                 whole: list[str], level: str = "frame") -> int:
    """Append the rows at `level` that share a column with `table` (columns: (test set or
    'avg', metric) per cell after the label, then Seeds); marked apart. Returns how many."""
    added = 0
    for ext in rows:
        if ext.level != level:
            continue
        cells = [_cell(ext, d, m, whole) for d, m in columns]
        if all(c == "-" for c in cells):
            continue
        table.rows.append([f"{ext.label} {MARK}", *cells, "reported"])
        table.bold.append([False] * (len(cells) + 2))
        table.apart.append(True)
        added += 1
    if added:
        table.note += (f" {MARK} Reported by its source, not measured here (see 'Published "
                       "results' for its source and protocol): never in a mean, interval, "
                       "bold, rank or test.")
    return added


def _cell(ext: ExternalRow, dataset: str, metric: str, whole: list[str]) -> str:
    if dataset == AVG_KEY:
        comparable = set(ext.avg_over) == set(whole)
        return f"{ext.avg[metric]:.2f}" if metric in ext.avg and comparable else "-"
    value = ext.values.get(metric, {}).get(dataset)
    return "-" if value is None else f"{value:.2f}"


def published_table(rows: list[ExternalRow], names: dict[str, str]) -> Table:
    """Every published row with every number it gives, its source and protocol."""
    sets = list(dict.fromkeys(t for r in rows for m in METRICS for t in r.values.get(m, {})))
    metrics = [m for m in METRICS if any(m in r.values or m in r.avg for r in rows)]
    columns = [(t, m) for t in sets for m in metrics if any(t in r.values.get(m, {})
                                                            for r in rows)]
    columns += [(AVG_KEY, m) for m in metrics if any(m in r.avg for r in rows)]
    body = []
    for r in rows:
        cells = [(f"{r.avg[m]:.2f}" if m in r.avg else "-") if t == AVG_KEY else
                 (f"{r.values[m][t]:.2f}" if t in r.values.get(m, {}) else "-")
                 for t, m in columns]
        over = f"avg over {len(r.avg_over)} sets" if r.avg else ""
        body.append([f"{r.label} {MARK}", *cells, r.level, over])
    theirs = {t: n for r in rows for t, n in r.named.items()}  # a set this report lacks
    header = ["Row", *(f"{'Avg' if t == AVG_KEY else names.get(t, theirs.get(t, t))} "
                       f"{m.upper()}" for t, m in columns), "Level", "Note"]
    sources = list(dict.fromkeys(r.source for r in rows))
    protocols = list(dict.fromkeys(protocol_text(r) for r in rows))
    note = (f"{MARK} Reported, not measured here (%); never in any statistic of this report. "
            f"Source: {'; '.join(sources)}. Protocol: {' | '.join(protocols)}.")
    return Table("Published results (reported, not measured)", header, body,
                 [[False] * len(header) for _ in body], note=note,
                 align="l" + "r" * (len(header) - 3) + "ll", slug="published",
                 apart=[True] * len(body))


def external_frame(rows: list[ExternalRow]) -> pd.DataFrame:
    """external.csv: one row per published number, with its source and protocol."""
    out = []
    for r in rows:
        for metric, per in r.values.items():
            out += [{"kind": "reported", "label": r.label, "dataset": t,
                     "name_in_source": r.named.get(t, t), "level": r.level, "metric": metric,
                     "value_pct": v, "avg_over": "", "source": r.source, "file": r.file,
                     "protocol": json.dumps(r.protocol, sort_keys=True)} for t, v in per.items()]
        out += [{"kind": "reported", "label": r.label, "dataset": AVG_KEY,
                 "name_in_source": AVG_KEY, "level": r.level, "metric": metric,
                 "value_pct": v, "avg_over": ",".join(r.avg_over), "source": r.source,
                 "file": r.file, "protocol": json.dumps(r.protocol, sort_keys=True)}
                for metric, v in r.avg.items()]
    return pd.DataFrame(out, columns=["kind", "label", "dataset", "name_in_source", "level",
                                      "metric", "value_pct", "avg_over", "source", "file",
                                      "protocol"])


def whole_sets(tests: list[str]) -> list[str]:
    """The test sets an average runs over (breakdowns `<set>::<part>` left out)."""
    return [t for t in tests if not is_part(t)]
