"""What predict scores with: a run folder or an exported model, behind one small interface.

Why one interface: the rest of predict (cutting frames, batching, rows) only needs the input
size, the decision threshold, how the training frames were prepared and a function from a
batch to logits; a run folder and a file `ablate.export` wrote both provide them, so every
other module is blind to which it got.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import OmegaConf

from ablate.checkpoint import load_classifier, resolve_run
from ablate.core.errors import AblateError
from ablate.core.names import RUN_INFO
from ablate.device import pick_device
from ablate.export.formats import SUFFIXES
from ablate.predict.preparation import Preparation, preparation_of

EXPORT_SUFFIXES = tuple(s for group in SUFFIXES.values() for s in group)  # .onnx .pt .ts ...


@dataclass(frozen=True)
class Scorer:
    """A detector ready to score: `logits` maps [N, 3, S, S] floats in [-1, 1] (S =
    `image_size`) to logits [N] on the CPU; P(fake) is their sigmoid."""

    name: str  # the run folder or exported file, for messages
    train_data: str  # the recipe's data.train
    image_size: int
    threshold: float | None  # chosen on the source validation split; None: no labels
    preparation: Preparation
    logits: Callable[[torch.Tensor], torch.Tensor]


def check_run(run: str) -> None:
    """A one-line error, before any work, when `run` is neither a run folder nor an
    exported model file."""
    path = Path(run).expanduser()
    if path.suffix.lower() in EXPORT_SUFFIXES:
        if not path.is_file():
            raise AblateError(f"{run}: no such exported model file")
        return
    try:
        resolve_run(path)
    except AblateError as err:
        raise AblateError(f"{err}, or an exported model file "
                          f"({', '.join(EXPORT_SUFFIXES)})") from None


def load_scorer(run: str, device: str = "auto") -> Scorer:
    """The Scorer of a run folder (on `device`; auto: cuda when there is one) or of an
    exported model file (.onnx, .pt, .ts; it runs where its runtime puts it)."""
    check_run(run)
    path = Path(run).expanduser()
    if path.suffix.lower() in EXPORT_SUFFIXES:
        return _exported(path)
    folder = resolve_run(path)
    dev = _device(device)
    classifier, cfg = load_classifier(folder, device=str(dev))

    @torch.no_grad()
    def logits(batch: torch.Tensor) -> torch.Tensor:
        return classifier(batch.to(dev)).float().cpu().reshape(-1)

    return Scorer(str(folder), str(cfg.data.train), int(cfg.image_size), run_threshold(folder),
                  preparation_of(cfg), logits)


def _device(name: str) -> torch.device:
    try:
        return pick_device(name)
    except AblateError:
        raise AblateError(f"--device {name}: no CUDA device is visible here; use --device cpu "
                          "(or auto)") from None
    except RuntimeError:
        raise AblateError(f"--device {name}: not a device; use auto, cpu, cuda or cuda:N") \
            from None


def run_threshold(folder: Path) -> float | None:
    """The threshold chosen on the source validation split (run.json, as `evaluate_run`
    reads it); None when the run has none."""
    file = folder / RUN_INFO
    info = json.loads(file.read_text()) if file.is_file() else {}
    threshold = (info.get("selection") or {}).get("threshold")
    return None if threshold is None else float(threshold)


def _exported(path: Path) -> Scorer:
    """An exported model: its metadata carry the size, threshold and the run's recipe."""
    # lazy: ablate.export loads its runtime (onnxruntime, TorchScript) only when used
    from ablate.export import load_exported

    model = load_exported(str(path))
    meta: dict[str, Any] = dict(model.metadata)
    recipe = yaml.safe_load(meta.get("recipe") or "") or {}
    if not isinstance(recipe, dict) or "data" not in recipe:
        raise AblateError(f"{path}: its metadata hold no recipe; export it again with "
                          "`ablate export`")
    cfg = OmegaConf.create(recipe)
    threshold = meta.get("threshold")

    def logits(batch: torch.Tensor) -> torch.Tensor:
        out = model(batch.float().cpu().contiguous())
        return torch.as_tensor(out).float().cpu().reshape(-1)

    return Scorer(str(path), str(cfg.data.train), int(meta.get("image_size") or cfg.image_size),
                  None if threshold is None else float(threshold), preparation_of(cfg), logits)
