"""What one trial spends on the time axis ASHA stops on: its planned val evaluations.
Shared by validation (can ASHA stop anything?) and the sweep (the scheduler's max_t)."""

from __future__ import annotations

from ablate.core.schema import group_setting
from ablate.schedule import eval_every_steps, evaluation_steps


def planned_evaluations(train_cfg, batches_per_epoch: int | None = None) -> int:  # noqa: ANN001
    """Source-val evaluations a trial will make (ASHA's time axis). With the training set's
    batches per epoch (`ablate.schedule.training_batches`) exactly what train() will do, so
    `epochs: 20` with `eval_every: 2000` counts the evaluations of all 20 epochs; without,
    per epoch with `eval_every: epoch` and `epochs`, else steps // eval_every; at least one."""
    if batches_per_epoch:
        epochs = group_setting(train_cfg, "train.epochs")
        steps = (int(epochs) * batches_per_epoch if epochs
                 else int(group_setting(train_cfg, "train.steps")))
        return len(evaluation_steps(steps, eval_every_steps(train_cfg, batches_per_epoch)))
    every = group_setting(train_cfg, "train.eval_every") or 0
    epochs = group_setting(train_cfg, "train.epochs")
    if every == "epoch":
        return max(int(epochs or 1), 1)
    steps = int(group_setting(train_cfg, "train.steps") or 0)
    return max(steps // int(every), 1) if every and steps else 1
