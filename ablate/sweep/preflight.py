"""Memory preflight: before any trial starts, every distinct recipe the sweep will run is
estimated (`ablate.bench.estimate`: fake tensors, no GPU, no weights) against the GPU
memory one trial gets, so a recipe that cannot fit stops the sweep before a GPU-week.

Which recipes: an explicit grid or a design runs known cells, and each is estimated. A
search samples, so its recipes are not known in advance; the preflight estimates the
one-param-at-a-time variations the dry run composes (every choice, both ends of a range)
and then the heaviest corner: each param at its heaviest probed value, together. Two
params that are each harmless but heavy together are caught by that corner.

What a trial gets: `gpu` x the card's memory (`--device-memory GB`, else this machine's
first CUDA device). A data-parallel trial (`processes` > 1) holds one replica per
process, each with its share of the global batch, so its estimate is at that batch.
`gpu: auto` in a space packs trials by their estimates: each trial asks for the fraction
1/k of a GPU, with k the most copies of the heaviest recipe that fit on one card.

A recipe that does not fit is one line naming it, its estimate and the levers that would
make it fit; nothing is changed silently: the user decides.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

from ablate.bench.estimate import estimate_recipe
from ablate.bench.estimate_table import levers_that_fit
from ablate.core.errors import AblateError
from ablate.recipe import compose
from ablate.space.model import SearchSpace, format_value
from ablate.space.probe import assignment, probe_assignments
from ablate.sweep.trial import memory_key

GB = 2**30


@dataclass(frozen=True)
class Estimated:
    """One distinct recipe of the sweep and what its training step needs on one card."""

    label: str
    overrides: tuple[str, ...]
    needs_gb: float  # peak + the stated margin for what fake tensors cannot see
    batch: int | None = None  # a data-parallel replica's share of the batch (None: all of it)

    @property
    def key(self) -> str:
        return memory_key(list(self.overrides))


def trial_recipes(space: SearchSpace, grid: dict[str, list[str]] | None) -> dict[str, list[str]]:
    """{label: overrides without a seed} of the recipes to estimate (see module docstring)."""
    if grid:
        return {label: [*space.overrides({}), *extra] for label, extra in grid.items()}
    return {label: space.overrides(params)
            for label, params in probe_assignments(list(space.params)).items()}


def _heaviest_corner(space: SearchSpace, found: dict[str, Estimated],
                     probes: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Each param at the probed value whose recipe needed most, together (None when that is
    one of the probes already)."""
    defaults = assignment(list(space.params), {})
    heaviest: dict[str, tuple[float, Any]] = {}
    for label, params in probes.items():
        if label not in found:
            continue
        varied = [k for k, v in params.items() if defaults.get(k, v) != v or k not in defaults]
        # a probe speaks for the one param it varies; the defaults' probe for every param
        for key in varied if len(varied) == 1 else (params if not varied else []):
            if key not in heaviest or found[label].needs_gb > heaviest[key][0]:
                heaviest[key] = (found[label].needs_gb, params[key])
    corner = assignment(list(space.params), {k: v for k, (_, v) in heaviest.items()})
    return None if corner in probes.values() else corner


def _label(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={format_value(v)}" for k, v in params.items()) or "(fixed only)"


def estimate_sweep(space: SearchSpace, grid: dict[str, list[str]] | None,
                   processes: int = 1) -> list[Estimated]:
    """Every distinct recipe of the sweep, estimated (progress on stderr: tens of seconds
    per full-size recipe on a CPU)."""
    recipes = trial_recipes(space, grid)
    probes = {} if grid else probe_assignments(list(space.params))
    found: dict[str, Estimated] = {}

    def one(label: str, overrides: list[str]) -> None:
        print(f"preflight: estimating {label} ...", file=sys.stderr, flush=True)
        batch = replica_batch(overrides, processes)
        found[label] = Estimated(label, tuple(overrides),
                                 estimate_recipe(overrides, batch=batch).needs_gb, batch)

    for label, overrides in recipes.items():
        one(label, overrides)
    corner = None if grid else _heaviest_corner(space, found, probes)
    if corner is not None:
        one(f"heaviest corner: {_label(corner)}", space.overrides(corner))
    return list(found.values())


def replica_batch(overrides: list[str], processes: int) -> int | None:
    """Each process of a data-parallel trial holds a replica and its share of the batch."""
    if processes <= 1:
        return None
    return max(1, int(compose(overrides).train.batch_size) // processes)


def per_trial_gb(gpu: float, processes: int, device_gb: float) -> float:
    """The memory one replica of a trial may use: its GPU share over its processes."""
    return device_gb * gpu / max(processes, 1)


def check_estimates(found: list[Estimated], share_gb: float, device_gb: float) -> None:
    """AblateError listing, one line each, the recipes whose estimate exceeds `share_gb`,
    with the levers that would make each fit."""
    over = [e for e in found if e.needs_gb > share_gb]
    if not over:
        return
    lines = []
    for e in over:
        fits = levers_that_fit(list(e.overrides), share_gb, e.batch)
        hint = (f"fits with {', '.join(fits)}" if fits else
                "no lever set fits: lower train.batch_size or image_size, or use a bigger card")
        lines.append(f"{e.label}: needs ~{e.needs_gb:.1f} GB, a trial gets {share_gb:.1f} GB "
                     f"of a {device_gb:g} GB card; {hint}")
    raise AblateError(f"{len(over)} recipe(s) of this sweep cannot fit (memory preflight; "
                      "levers go in the space's fixed settings or --set): " + " | ".join(lines))


def packed_gpu_share(found: list[Estimated], device_gb: float) -> float:
    """`gpu: auto`: the fraction 1/k of a card each trial asks for, k the most copies of the
    heaviest recipe that fit on one card (AblateError when not even one does)."""
    heaviest = max(e.needs_gb for e in found)
    copies = math.floor(device_gb / heaviest) if heaviest > 0 else 1
    if copies < 1:
        check_estimates(found, device_gb, device_gb)
    return 1 / max(copies, 1)


def local_device_gb() -> float | None:
    """The memory of this machine's first CUDA device in GB, or None without one."""
    # lazy: loads torch only when called (the sweep driver starts without it)
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory / GB
