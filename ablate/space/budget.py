"""What one trial spends on the time axis ASHA stops on: its planned val evaluations.
Shared by validation (can ASHA stop anything?) and the sweep (the scheduler's max_t)."""

from __future__ import annotations

from ablate.core.schema import group_setting


def planned_evaluations(train_cfg) -> int:  # noqa: ANN001
    """Source-val evaluations a trial will make (ASHA's time axis): per epoch with
    `eval_every: epoch` and `epochs`, else steps // eval_every; at least one (the last)."""
    every = group_setting(train_cfg, "train.eval_every") or 0
    epochs = group_setting(train_cfg, "train.epochs")
    if every == "epoch":
        return max(int(epochs or 1), 1)
    steps = int(group_setting(train_cfg, "train.steps") or 0)
    return max(steps // int(every), 1) if every and steps else 1
