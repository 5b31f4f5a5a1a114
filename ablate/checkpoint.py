"""Run folders: safetensors weights with the composed recipe beside them.

    <run>/recipe.yaml            the composed recipe (what the numbers mean)
    <run>/trainable.safetensors  every trained module (analysis), at the selected step
    <run>/inference.safetensors  encoder + head only: what a detector ships, same step
    <run>/run.json               steps, timings, parameter counts, selection info

Both weight files come from the one step chosen on the source validation split
(`checkpoint_step` in run.json and in each file's safetensors metadata).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import DictConfig
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ablate.core.errors import AblateError
from ablate.core.names import RUN_INFO
from ablate.recipe import load_yaml, to_yaml
from ablate.registry import registry

INFERENCE = "inference.safetensors"
TRAINABLE = "trainable.safetensors"
RECIPE = "recipe.yaml"
BASE_SHA = "encoder_base_sha256"  # run.json and the weight files' metadata


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_run(
    folder: Path, cfg: DictConfig, trainable: dict[str, torch.Tensor],
    inference: dict[str, torch.Tensor], info: dict,
) -> Path:
    """Write a run folder; files are written under temporary names, then renamed."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"format": "ablate-run-v1", "step": str(info.get("checkpoint_step", ""))}
    if info.get(BASE_SHA):  # only the trained tensors are stored: say which base they need
        meta[BASE_SHA] = str(info[BASE_SHA])
    for name, state in ((TRAINABLE, trainable), (INFERENCE, inference)):
        tmp = folder / (name + ".tmp")
        save_file(_contiguous(state), str(tmp), metadata=meta)
        tmp.replace(folder / name)
    (folder / RECIPE).write_text(to_yaml(cfg))
    (folder / RUN_INFO).write_text(json.dumps(info, indent=2, default=str))
    return folder


def resolve_run(path: str | Path) -> Path:
    """A run folder, given the folder or any file inside it."""
    p = Path(path).expanduser()
    folder = p.parent if p.is_file() else p
    if not (folder / INFERENCE).is_file() or not (folder / RECIPE).is_file():
        raise AblateError(
            f"{path} is not a run folder (needs {INFERENCE} and {RECIPE}); "
            "pass the folder `ablate train` printed"
        )
    return folder


def load_classifier(path: str | Path, device: str = "cpu"):  # noqa: ANN201
    """Rebuild encoder + head from a run folder; the teacher is never loaded.

    A run whose encoder trained only in part (`backbone.tuning` other than full, from a
    weights file) stores the trained tensors and the file's sha256: the frozen rest is read
    from the recipe's `backbone.pretrained_path`, and only from a file with that hash."""
    # lazy: loads diffusers and timm only when called
    from ablate.model.build import build_classifier

    folder = resolve_run(path)
    cfg, base_sha = rebuild_recipe(folder)
    with quiet_encoder_notes():
        classifier = build_classifier(cfg)
    check_frozen_base(folder, cfg, classifier, base_sha)
    state = load_file(str(folder / INFERENCE), device="cpu")
    missing, unexpected = classifier.load_state_dict(state, strict=False)
    missing = set(missing) - (classifier.frozen_base_keys() if base_sha else set())
    if missing or unexpected:
        raise AblateError(
            f"{folder / INFERENCE} does not match its recipe ({len(missing)} missing, "
            f"{len(unexpected)} unexpected tensors); was the file replaced?"
        )
    return classifier.to(device).eval(), cfg


def rebuild_recipe(folder: Path) -> tuple[DictConfig, str | None]:
    """A run's recipe, ready to rebuild its modules from the run's own files, and the sha256
    of the encoder file its trained tensors need (None: the run stores the encoder whole).

    A whole encoder needs no weights file here (its path is cleared; a paper encoder is
    built random and overwritten); a partly trained one needs its file, checked present."""
    cfg = load_yaml(folder / RECIPE)
    with safe_open(str(folder / INFERENCE), framework="pt") as handle:
        base_sha = (handle.metadata() or {}).get(BASE_SHA)
    if base_sha is None:
        cfg.backbone.pretrained_path = None  # the checkpoint holds the trained weights
        if "random_init" in registry("backbone").get(cfg.backbone.name).arguments():
            cfg.backbone.random_init = True  # ...so a paper encoder needs no ImageNet file here
    else:
        _check_base_present(folder, cfg, base_sha)
    return cfg, base_sha


@contextmanager
def quiet_encoder_notes() -> Iterator[None]:
    """Hide the encoder's "random init" note while a run is rebuilt: its file overwrites it."""
    logger = logging.getLogger("ablate.model.backbone")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_frozen_base(folder: Path, cfg: DictConfig, classifier, base_sha: str | None) -> None:  # noqa: ANN001
    """A partly trained run's frozen rest must be the file it was trained on (by hash)."""
    found = classifier.frozen_base_sha
    if base_sha is not None and found != base_sha:
        raise AblateError(
            f"run {folder.name} was trained on an encoder file with sha256 {base_sha[:12]}..., "
            f"but {cfg.backbone.pretrained_path} has {str(found)[:12]}...: its trained tensors "
            "fit only their own base; put the original file back at that path")


def _check_base_present(folder: Path, cfg: DictConfig, base_sha: str) -> None:
    """The encoder file a partly-trained run needs is where its recipe says (its hash is
    compared once the build has read it: TimmBackbone.base_sha256)."""
    given = cfg.backbone.get("pretrained_path")
    if not given or not Path(str(given)).expanduser().is_file():
        raise AblateError(
            f"run {folder.name} stores only what backbone.tuning={cfg.backbone.get('tuning')} "
            f"trained; its frozen encoder is the weights file {given} (sha256 "
            f"{base_sha[:12]}...), which is not there: put it back at that path")
