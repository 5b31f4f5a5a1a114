"""Designs: a space that lists its recipes instead of sampling them.

A search (TPE, random, ...) rarely holds the rest of a recipe fixed, so its per-slot
rows are hints. An ablation needs matched cells, and a design makes them:

- ``one-at-a-time``: the reference recipe, plus for each factor every other level
  with every other factor held at the reference. 1 + sum(levels - 1) cells.
- ``factorial``: every combination of the factors' levels. prod(levels) cells.

Every cell runs the space's ``seeds`` (0..N-1, the same for every cell), so the
report can pair cells seed by seed. A factor is a recipe key (``guide``,
``filter``, ``guide.shared``, ``train.lr``); its levels are scalars.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from ablate.core.names import NO_GUIDE, is_guidance_key
from ablate.space.model import Param, Scalar, format_value

DESIGNS = ("one-at-a-time", "factorial")
REFERENCE_LABEL = "reference"


@dataclass(frozen=True)
class Cell:
    """One recipe of a design: a level for every factor."""

    label: str
    levels: dict[str, Scalar]
    changed: tuple[str, ...]  # the factors whose level is not the reference's

    @property
    def is_baseline(self) -> bool:
        return self.levels.get("guide") == NO_GUIDE

    def overrides(self) -> list[str]:
        """Hydra overrides of this cell (added after the space's fixed settings). The plain
        baseline (guide=none) builds no filter, weight module, teacher or guide, so the
        levels of those factors are left out of its recipe rather than set and ignored."""
        return [f"{k}={format_value(v)}" for k, v in self.levels.items()
                if not (self.is_baseline and is_guidance_key(k))]


@dataclass(frozen=True)
class Design:
    """`kind` over `factors` (key -> levels, in order), around `reference` (key -> level)."""

    kind: str
    factors: dict[str, tuple[Scalar, ...]]
    reference: dict[str, Scalar]

    def cells(self) -> list[Cell]:
        """The design's recipes, reference first, in a stable order."""
        ref = self.reference
        if self.kind == "one-at-a-time":
            out = [Cell(REFERENCE_LABEL, dict(ref), ())]
            for key, levels in self.factors.items():
                for level in levels:
                    if level != ref[key]:
                        out.append(Cell(f"{key}={format_value(level)}", {**ref, key: level},
                                        (key,)))
            return out
        out = []
        for combo in itertools.product(*self.factors.values()):
            levels = dict(zip(self.factors, combo, strict=True))
            changed = tuple(k for k, v in levels.items() if v != ref[k])
            label = (REFERENCE_LABEL if not changed
                     else " ".join(f"{k}={format_value(levels[k])}" for k in changed))
            out.append(Cell(label, levels, changed))
        return sorted(out, key=lambda c: c.label != REFERENCE_LABEL)  # reference first

    def params(self) -> list[Param]:
        """The factors as choice params, reference level first: what validation probes
        (each level with the other factors at the reference) and `--set` may not fix."""
        return [Param(k, "choice", (self.reference[k], *(v for v in levels
                                                         if v != self.reference[k])))
                for k, levels in self.factors.items()]

    @property
    def size(self) -> int:
        """Cells, without building them."""
        if self.kind == "one-at-a-time":
            return 1 + sum(len(levels) - 1 for levels in self.factors.values())
        return math.prod(len(levels) for levels in self.factors.values())

    def grid(self) -> dict[str, list[str]]:
        """label -> overrides: what the sweep runs (one Tune trial per cell)."""
        return {c.label: c.overrides() for c in self.cells()}
