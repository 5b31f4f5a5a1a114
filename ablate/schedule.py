"""A recipe's training schedule: how many optimiser steps, at which steps the source
validation runs, and what is kept. `ablate.train` runs it and `ablate train --dry-run`
prints it from these same functions, so the two cannot disagree.

Steps come from `train.epochs` x batches per epoch when epochs is set, else from
`train.steps`; `recipe.compose` has already let an explicit `train.steps` displace a
preset's epochs. Batches per epoch need the training set: `training_batches` counts it
where that is cheap (the embedded benchmark, a manifest already on disk) and otherwise
says why it cannot, so the dry-run prints the formula with B unknown.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablate.core.errors import AblateError
from ablate.core.schema import group_setting, setting
from ablate.core.selection import proxy_name, rule


@dataclass(frozen=True)
class Schedule:
    """What a recipe's training does, as far as it is known before any data is loaded."""

    batch_size: int  # the global batch (split over `processes`)
    processes: int
    steps_setting: int | None  # train.steps, when it decides the steps (epochs unset)
    epochs: int | None  # train.epochs, when it decides the steps
    eval_every: int | str  # the setting: steps between evaluations, "epoch" or 0
    batches_per_epoch: int | None  # None: unknown, `why_unknown` says why
    why_unknown: str | None = None
    frames: int | None = None  # usable training frames, where they were counted
    select: str = "best_val"  # train.select: which evaluation's weights are kept
    proxy: str | None = None  # train.proxy: the set `proxy` chooses on

    @property
    def steps(self) -> int | None:
        """Optimiser steps; None when they depend on an unknown number of batches per epoch."""
        if self.epochs:
            return None if self.batches_per_epoch is None else self.epochs * self.batches_per_epoch
        return self.steps_setting

    @property
    def every(self) -> int | None:
        """Steps between evaluations (0: only at the end); None when it is an unknown epoch."""
        if self.eval_every == "epoch":
            return None if self.batches_per_epoch is None else max(self.batches_per_epoch, 1)
        return int(self.eval_every)

    def evaluations(self) -> list[int] | None:
        """The steps at which training validates (None when not known yet)."""
        if self.steps is None or self.every is None:
            return None
        return evaluation_steps(self.steps, self.every)

    def lines(self) -> list[str]:
        """The schedule as `ablate train --dry-run` prints it."""
        per = self.batch_size // max(self.processes, 1)
        split = f" ({per} per process x {self.processes} processes)" if self.processes > 1 else ""
        return ["schedule:",
                f"  batch size: {self.batch_size}{split}",
                f"  optimiser steps: {self._steps_line()}",
                f"  source-val evaluations: {self._evaluations_line()}",
                f"  checkpoint kept: {self._checkpoint_line()}"]

    def _steps_line(self) -> str:
        if not self.epochs:
            return f"{self.steps} (train.steps={self.steps})"
        if self.batches_per_epoch is None:
            return (f"{self.epochs} x B (train.epochs={self.epochs} x B batches per epoch; "
                    f"B unknown: {self.why_unknown})")
        frames = ""
        if self.frames is not None:
            dropped = (", the last partial batch dropped"
                       if self.frames > self.batch_size and self.frames % self.batch_size else "")
            frames = f": {self.frames} training frames / batch {self.batch_size}{dropped}"
        return (f"{self.steps} (train.epochs={self.epochs} x {self.batches_per_epoch} batches "
                f"per epoch{frames})")

    def _evaluations_line(self) -> str:
        setting_text = f"train.eval_every={self.eval_every}"
        steps, every = self.steps, self.every
        if steps is not None and every is not None:
            return f"{_summary(evaluation_steps(steps, every), every)} ({setting_text})"
        last = "the last step" if steps is None else f"step {steps}"
        if every == 0:
            return f"only at the end ({setting_text}): 1 evaluation, at {last}"
        if every is None and self.epochs:  # once per epoch, epochs known
            return (f"every B steps, once per epoch ({setting_text}): {self.epochs} "
                    f"evaluations, last at step {self.epochs} x B")
        if every is None:  # once per epoch, the number of epochs unknown
            return (f"every B steps, once per epoch ({setting_text}): floor({steps} / B) "
                    f"evaluations, plus one at step {steps} unless B divides it; B unknown: "
                    f"{self.why_unknown}")
        return (f"every {every} steps ({setting_text}): floor({self.epochs} x B / {every}) "
                f"evaluations, plus one at the last step unless {every} divides it")

    def _checkpoint_line(self) -> str:
        """What train() keeps: one run folder, written at the end (ablate/checkpoint.py)."""
        evaluations = self.evaluations()
        if evaluations is not None and len(evaluations) == 1:
            chosen = f"step {evaluations[0]}, the only evaluation"
        elif self.select == "last":
            chosen = "the last step (train.select=last)"
        elif self.select == "proxy":
            chosen = (f"the evaluation with the best val AUC on {self.proxy} "
                      "(train.select=proxy; the threshold from source val)")
        else:
            chosen = "the evaluation with the best source-val AUC"
        return (f"one run folder at the end: trainable + inference weights of {chosen}; "
                "nothing is written before (a sweep trial also gets the training state at "
                "each evaluation, to resume from)")


def plan(cfg: Any, batches_per_epoch: int | None, why_unknown: str | None = None,
         frames: int | None = None) -> Schedule:
    """The schedule of recipe `cfg` given its batches per epoch (None: unknown, because
    `why_unknown`). A recipe that sets neither steps nor epochs is a one-line AblateError."""
    epochs = setting(cfg, "train.epochs")
    steps = setting(cfg, "train.steps")
    if not epochs and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise AblateError("set train.steps (a positive integer) or train.epochs")
    return Schedule(
        batch_size=int(setting(cfg, "train.batch_size")),
        processes=int(setting(cfg, "train.processes")),
        steps_setting=None if epochs else int(steps),
        epochs=int(epochs) if epochs else None,
        eval_every=setting(cfg, "train.eval_every"),
        batches_per_epoch=batches_per_epoch,
        why_unknown=why_unknown,
        frames=frames,
        select=rule(cfg),
        proxy=proxy_name(cfg),
    )


def total_steps(cfg: Any, batches_per_epoch: int) -> int:
    """Optimiser steps of a training run: train.epochs x batches per epoch, else train.steps."""
    steps = plan(cfg, batches_per_epoch).steps
    assert steps is not None  # batches per epoch are known
    return steps


def eval_every_steps(train_cfg: Any, batches_per_epoch: int) -> int:
    """`train.eval_every`: a number of steps, `epoch` (once per pass over the train split,
    as the released code validates), or 0 (only at the end)."""
    every = group_setting(train_cfg, "train.eval_every")  # checked by recipe.validate
    return max(batches_per_epoch, 1) if every == "epoch" else int(every)


def evaluation_steps(steps: int, every: int) -> list[int]:
    """The steps at which train() validates: each multiple of `every`, and the last step."""
    found = list(range(every, steps + 1, every)) if every > 0 else []
    return found if found and found[-1] == steps else [*found, steps]


def _summary(evaluations: list[int], every: int) -> str:
    """'every 400 steps: 20 evaluations, last at step 8000' (or the steps, when few)."""
    n, last = len(evaluations), evaluations[-1]
    plural = "evaluation" if n == 1 else "evaluations"
    if every == 0 or every >= last:
        return f"only at the end: 1 evaluation, at step {last}"
    extra = " and at the last step" if last % every else ""
    listed = f" ({', '.join(map(str, evaluations))})" if n <= 6 else ""
    return f"every {every} steps{extra}: {n} {plural}{listed}, last at step {last}"


# ------------------------------------------------------------------------------ the data


def training_batches(cfg: Any) -> tuple[int | None, int | None, str | None]:
    """(batches per epoch, usable training frames, None), counted as train() will count them,
    where that is cheap: the embedded benchmark or a manifest already on disk (only whether
    each frame exists is checked, not whether it decodes). Else (None, None, why not): a
    data config whose manifest is not built yet (training builds it first)."""
    why = _unreadable(cfg)
    if why is not None:
        return None, None, why
    # lazy: pandas and torch, only for a dry-run's count
    from ablate.data.dataset import ManifestDataset
    from ablate.data.loader import make_loader, source_table, split_rows
    from ablate.recipe import is_guided

    name = str(cfg.data.train)
    rows = split_rows(source_table(cfg), "train", name)
    frames = ManifestDataset(rows, cfg.image_size, guided=is_guided(cfg),
                             augment=cfg.data.augment, preload=False,
                             max_skip_fraction=cfg.data.max_skip_fraction)
    loader = make_loader(frames, int(cfg.train.batch_size), shuffle=True, seed=cfg.seed)
    return len(loader), len(frames), None


def _unreadable(cfg: Any) -> str | None:
    """Why the training set's manifest cannot be read now without building it (None: it can)."""
    # lazy: the data layer's names, only for a dry-run's count
    from ablate.data.sources import (
        benchmark_datasets,
        dataset_settings,
        manifest_cache_path,
        recipe_overrides,
    )

    name = str(cfg.data.train)
    path = Path(name).expanduser()
    if path.suffix in (".csv", ".parquet"):
        return None if path.is_file() else f"manifest {path} does not exist"
    if name in benchmark_datasets():
        return None  # the embedded benchmark: built once, then read from its cache
    settings = dataset_settings(name, recipe_overrides(cfg)) or {}
    manifest = Path(settings.get("manifest") or manifest_cache_path(name, settings)).expanduser()
    if manifest.is_file():
        return None
    if settings.get("root"):
        return (f"the manifest of {name} is not built yet (training builds it first, from the "
                f"frames under {settings['root']})")
    return (f"dataset {name} has no manifest yet and no root to build one from (training "
            f"stops there: set data.roots.{name}=DIR or root in configs/data/{name}.yaml)")


def run_precision(cfg: Any) -> str:
    """The precision a run of `cfg` computes in on this machine (`train.precision` resolved
    on the device it would pick): what its identity carries (ablate/core/identity.py)."""
    # lazy: loads torch only when called (the driver imports this module torch-free)
    from ablate.device import pick_device
    from ablate.model.speed import Speed

    return Speed.from_config(cfg.train, pick_device(cfg.train.device)).precision
