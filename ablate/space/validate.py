"""validate_space: everything checkable before a sweep spends anything, in seconds, with
every problem in one error. It runs the probes (probe.py), the file checks (assets.py),
the ASHA rung check and the dry run (dryrun.py) in that order."""

from __future__ import annotations

import math
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from ablate.core.errors import AblateError
from ablate.core.schema import setting
from ablate.schedule import training_batches
from ablate.space.assets import _check_datasets, _check_encoders, _check_teachers
from ablate.space.budget import planned_evaluations
from ablate.space.check import _Check
from ablate.space.dryrun import _dry_run
from ablate.space.files import derive_space, load_space
from ablate.space.model import SearchSpace
from ablate.space.probe import _composable, _design_configs, _probe_configs, _registered


def validate_space(space: SearchSpace, build: bool = True) -> list[str]:
    """Check a space before a sweep spends anything; raise one error listing every problem.

    Composes the fixed overrides with each param at a representative value, checks
    slot choices against the registries and (build=True) builds each distinct
    detector once and runs one guided forward on 2 random images. Returns notes.
    """
    check = _Check(space)
    params = _registered(check)
    params = _composable(check, params)
    cfgs = _design_configs(check) if space.design else _probe_configs(check, params)
    _check_teachers(check, list(cfgs.values()))
    _check_encoders(check, list(cfgs.values()))
    _check_datasets(check, list(cfgs.values()))
    if cfgs and space.early_stopping.enabled:
        _check_rungs(check, next(iter(cfgs.values())))
    if build:
        _dry_run(check, cfgs)
    if any(m.startswith("test_") for m in space.metrics):
        check.notes.append(
            "an objective is a test-set metric: recipes are then chosen on the test sets and "
            "their test numbers are optimistically biased; use val_auc for honest cross-dataset "
            "claims"
        )
    if space.sampler.name == "grid" and space.design is None:
        size = math.prod(len(p.choices) for p in space.params)
        if size != space.trials:
            check.notes.append(f"grid has {size} points but budget.trials is {space.trials}")
    if check.problems:
        n = len(check.problems)
        lines = "\n".join(f"  - {p}" for p in check.problems)
        where = f" ({space.source_path})" if space.source_path else ""
        raise AblateError(
            f"search space {space.name} has {n} problem{'s' if n > 1 else ''}{where}:\n{lines}"
        )
    return check.notes


def check_sweep(name_or_path: str, settings: dict[str, Any]) -> tuple[SearchSpace, list[str]]:
    """`ablate sweep --dry-run`: the space as the sweep would run it (`--set` applied, as a
    derived copy in a temporary folder, so a dry run leaves nothing behind), validated and
    each recipe dry-run built, with the notes. Nothing is started or written: it answers
    "would this sweep start?" in seconds, before a GPU-week is booked."""
    space = load_space(name_or_path)
    if not settings:
        return space, validate_space(space)
    with tempfile.TemporaryDirectory() as folder:  # problems name the user's file, not the copy
        derived = replace(load_space(derive_space(space, settings, Path(folder))),
                          source_path=space.source_path)
        return derived, validate_space(derived)


def _check_rungs(check: _Check, cfg: Any) -> None:
    """ASHA can only stop a trial between val reports; say when it never gets to."""
    grace = check.space.early_stopping.grace_period
    batches = training_batches(cfg)[0]
    if batches is None and setting(cfg, "train.epochs") and setting(cfg, "train.eval_every") != "epoch":
        return  # epochs x an unknown epoch length: the count is not known before the data is
    reports = planned_evaluations(cfg.train, batches)
    if not setting(cfg, "train.eval_every"):
        check.notes.append("early_stopping is on but train.eval_every is 0: one val report "
                           "per trial, so ASHA stops nothing (set train.eval_every in fixed)")
    elif reports <= grace:
        check.notes.append(f"early_stopping: {reports} val reports per trial <= "
                           f"grace_period {grace}, so ASHA stops nothing")
