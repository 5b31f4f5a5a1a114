"""What a structure search searched, as the report reads it (no plotting, no data):
the searched params, the costs it can weigh, and the order categories are shown in.
Shared by `structure` (the numbers) and `plots` (the figures)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

COSTS = ("params_trainable", "train_gflops", "latency_ms", "peak_mem_mb")
LOG_COSTS = ("params_trainable", "train_gflops")  # spans orders of magnitude: log x axis
COST_NAMES = {"params_trainable": "Trainable params", "train_gflops": "Train GFLOPs",
              "latency_ms": "Latency (ms)", "peak_mem_mb": "Peak mem (MB)"}
ABSENT = "(absent)"


@dataclass(frozen=True)
class Param:
    """One searched param: `key` as the space names it (filter, filter.heads, train.lr)."""

    key: str
    kind: str  # "choice" | "int" | "float"
    choices: tuple[Any, ...] = ()  # a choice's values, in the space's order
    log: bool = False
    when: dict[str, tuple[str, ...]] = field(default_factory=dict)  # parent -> values (str)

    @property
    def categorical(self) -> bool:
        return self.kind == "choice"


def param_order(param: Param, values: pd.Series) -> list[Any]:
    """A categorical param's categories: the space's order, then any other value seen."""
    seen = list(dict.fromkeys(values.dropna()))
    listed = [c for c in param.choices if any(_same(c, v) for v in seen)]
    rest = sorted((v for v in seen if not any(_same(c, v) for c in listed)), key=str)
    return [*listed, *rest]


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, default=str) == json.dumps(b, default=str) or str(a) == str(b)
