"""Experiment tracking: runs and sweeps in the tools researchers already use.

- Every run folder gets TensorBoard event files (training curves, the source-val
  selection, and test metrics once evaluated): `tensorboard --logdir results/runs`.
  Written with tensorboardX (a dependency of Ray Tune), read with `tensorboard`.
- A sweep can also log to MLflow (`--mlflow URI`: a folder such as `mlruns` or a
  tracking server URL) and Weights & Biases (`--wandb PROJECT`, offline unless
  $WANDB_MODE says otherwise), through Ray Tune's own logger callbacks.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ablate.core.errors import AblateError

log = logging.getLogger(__name__)

EVENTS_DIR = "tensorboard"  # inside a run folder


def write_curves(folder: Path, curves: Iterable[tuple[int, str, float]]) -> Path:
    """Training curves `(step, "loss/total", value)` as scalars under <run>/tensorboard/."""
    from tensorboardX import SummaryWriter

    out = Path(folder) / EVENTS_DIR
    try:
        # event files are named by the second and host: a unique suffix keeps a second write
        # (evaluation right after training) from replacing the first
        with SummaryWriter(str(out), filename_suffix=f".{os.getpid()}.{time.time_ns()}") as w:
            for step, name, value in curves:
                if value is not None and math.isfinite(float(value)):
                    w.add_scalar(name, float(value), int(step))
    except OSError as err:  # a viewer's copy must never fail a finished run
        log.warning("no TensorBoard events in %s: %s", out, err.strerror or err)
    return out


def write_metrics(folder: Path, rows: Iterable[dict[str, Any]], step: int) -> Path:
    """Final metrics (rows of dataset, split, level, metric, value) as `split/dataset/level_metric`
    scalars at `step` (the checkpoint's), beside the curves."""
    curves = [(step, f"{r['split']}/{r['dataset']}/{r['level']}_{r['metric']}", r["value"])
              for r in rows if r.get("value") is not None]
    return write_curves(folder, curves)


def tune_callbacks(mlflow: str | None, wandb: str | None, experiment: str) -> list[Any]:
    """Ray Tune logger callbacks for MLflow / W&B; one-line errors when not installed."""
    callbacks = []
    if mlflow:
        _require("mlflow", "ablate sweep --mlflow")
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        uri = mlflow
        if "://" not in mlflow:  # a local folder: MLflow's file store (MLflow 3 asks to opt in)
            uri = Path(mlflow).expanduser().resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        callbacks.append(MLflowLoggerCallback(tracking_uri=uri, experiment_name=experiment,
                                              save_artifact=False))
    if wandb:
        _require("wandb", "ablate sweep --wandb")
        from ray.air.integrations.wandb import WandbLoggerCallback

        os.environ.setdefault("WANDB_MODE", "offline")  # nothing leaves the machine by default
        callbacks.append(WandbLoggerCallback(project=wandb, group=experiment,
                                             excludes=["seed_results"]))
    return callbacks


def _require(module: str, what: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        fix = "pip install 'ablate[tracking]'" if module == "mlflow" else "pip install wandb"
        raise AblateError(f"{what} needs the {module} package, which is not installed; {fix}")
