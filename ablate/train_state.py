"""Resumable training state: what a run needs to continue exactly where it stopped.

A folder written at an evaluation step (`train(on_checkpoint=...)`), read back by
`train(resume_from=...)`:

    state.json             format, recipe_hash, seed, step, batches_per_epoch, selection,
                           curves, step_times, wall_s, python and numpy RNG states
    trainable.safetensors  detector.trainable_state_dict() at `step`
    best.safetensors       the selected step's trainable state (absent when that is `step`)
    optimizer.pt           optimizer.state_dict(): torch.save, read with weights_only=True
    rng.safetensors        torch's CPU RNG state and one per CUDA device

Nothing here is unpickled beyond tensors and plain containers, so a state folder
from elsewhere (a Tune checkpoint) cannot run code when loaded.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from ablate.core.errors import AblateError
from ablate.scoring import Selection

FORMAT = "ablate-train-state-v1"
META = "state.json"
TRAINABLE = "trainable.safetensors"
BEST = "best.safetensors"
OPTIMIZER = "optimizer.pt"
RNG = "rng.safetensors"


@dataclass
class TrainState:
    """Everything that changes during training, as of the end of step `step`."""

    step: int
    batches_per_epoch: int
    trainable: dict[str, Tensor]
    optimizer: dict[str, Any]
    best_state: dict[str, Tensor] | None = None
    selection: Selection | None = None
    curves: list[tuple[int, str, float]] = field(default_factory=list)
    step_times: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    rng: dict[str, Any] = field(default_factory=dict)
    # sha256 of the encoder file under a partly-trained encoder: `trainable` fits only it
    encoder_base_sha256: str | None = None


def capture_rng() -> dict[str, Any]:
    """The global RNG states training draws from: python, numpy, torch CPU and CUDA.

    CUDA only once initialised: until then no CUDA draw happened, and the resumed
    run's `torch.manual_seed` seeds it the same way."""
    rng: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                           "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(rng: dict[str, Any]) -> None:
    """Set the global RNGs to `rng` (from `capture_rng` or `load_state`)."""
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    cuda = rng.get("cuda") or []
    if cuda and torch.cuda.is_available():
        for index, state in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state, index)


def _cpu(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_state(folder: Path, state: TrainState, recipe_hash: str, seed: int) -> Path:
    """Write `state` into `folder` (created); see the module doc for the files."""
    folder.mkdir(parents=True, exist_ok=True)
    best_is_current = state.selection is not None and state.selection.step == state.step
    save_file(_cpu(state.trainable), str(folder / TRAINABLE))
    if state.best_state is not None and not best_is_current:
        save_file(_cpu(state.best_state), str(folder / BEST))
    torch.save(state.optimizer, folder / OPTIMIZER)
    python_rng = state.rng["python"]
    numpy_rng = state.rng["numpy"]
    tensors = {"torch": state.rng["torch"]}
    tensors.update({f"cuda.{i}": s for i, s in enumerate(state.rng.get("cuda") or [])})
    save_file(tensors, str(folder / RNG))
    meta = {
        "format": FORMAT, "recipe_hash": recipe_hash, "seed": seed, "step": state.step,
        "batches_per_epoch": state.batches_per_epoch,
        "selection": asdict(state.selection) if state.selection is not None else None,
        "best": "current" if best_is_current else BEST if state.best_state is not None else None,
        "curves": [list(c) for c in state.curves], "step_times": state.step_times,
        "wall_s": state.wall_s, "encoder_base_sha256": state.encoder_base_sha256,
        "rng": {"python": [python_rng[0], list(python_rng[1]), python_rng[2]],
                "numpy": [numpy_rng[0], numpy_rng[1].tolist(), *numpy_rng[2:]]},
    }
    (folder / META).write_text(json.dumps(meta))
    return folder


def load_state(folder: str | Path, recipe_hash: str, seed: int) -> TrainState:
    """The state in `folder`; refuses one saved by another recipe or seed."""
    folder = Path(folder).expanduser()
    meta = _meta(folder)
    if meta["seed"] != seed:
        raise AblateError(f"{folder} is the state of a run with seed {meta['seed']}, this run's "
                          f"seed is {seed}; resume a run only from its own checkpoints")
    if meta["recipe_hash"] != recipe_hash:
        raise AblateError(f"{folder} is the state of recipe {meta['recipe_hash']}, this recipe is "
                          f"{recipe_hash}; resume a run only from its own checkpoints")
    trainable = load_file(str(folder / TRAINABLE))
    best = (trainable if meta["best"] == "current"
            else load_file(str(folder / BEST)) if meta["best"] == BEST else None)
    tensors = load_file(str(folder / RNG))
    python_rng, numpy_rng = meta["rng"]["python"], meta["rng"]["numpy"]
    rng = {
        "python": (python_rng[0], tuple(python_rng[1]), python_rng[2]),
        "numpy": (numpy_rng[0], np.asarray(numpy_rng[1], dtype=np.uint32), *numpy_rng[2:]),
        "torch": tensors["torch"],
        "cuda": [tensors[f"cuda.{i}"] for i in range(sum(k.startswith("cuda.") for k in tensors))],
    }
    selection = meta["selection"]
    return TrainState(
        step=meta["step"], batches_per_epoch=meta["batches_per_epoch"], trainable=trainable,
        optimizer=torch.load(folder / OPTIMIZER, map_location="cpu", weights_only=True),
        best_state=best, selection=Selection(**selection) if selection else None,
        curves=[(int(s), str(n), float(v)) for s, n, v in meta["curves"]],
        step_times=[float(t) for t in meta["step_times"]], wall_s=float(meta["wall_s"]), rng=rng,
        encoder_base_sha256=meta.get("encoder_base_sha256"),
    )


def _meta(folder: Path) -> dict[str, Any]:
    file = folder / META
    try:
        meta = json.loads(file.read_text())
    except (OSError, ValueError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise AblateError(f"{folder} is not a training state (no readable {META} of format "
                          f"{FORMAT}); pass a copy of the folder on_checkpoint was given")
    return meta
