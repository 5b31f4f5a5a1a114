"""The dry run of validate_space: build each distinct detector once (tiny teachers only)
and run one guided forward on 2 random images, which catches shape and width mistakes
in seconds rather than minutes into a trial. torch is imported lazily."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ablate.core.errors import AblateError
from ablate.space.check import _Check
from ablate.space.model import MODEL_KEYS, TINY_PREFIX


@contextmanager
def _quiet_single_thread() -> Iterator[None]:
    """One torch thread (tiny forwards gain nothing from more, and on a busy machine
    oversubscribed threads made validation 10x slower) and no per-build log chatter."""
    import torch

    threads = torch.get_num_threads()
    loggers = [logging.getLogger(n) for n in ("diffusers", "ablate.model")]
    levels = [lg.level for lg in loggers]
    torch.set_num_threads(1)
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _dry_run(check: _Check, cfgs: dict[str, Any]) -> None:
    """Build each distinct detector once (tiny teachers only) and run one guided forward."""
    with _quiet_single_thread():
        _dry_run_all(check, cfgs)


def _dry_run_all(check: _Check, cfgs: dict[str, Any]) -> None:
    teachers: dict[str, Any] = {}
    built: set[str] = set()
    skipped: dict[str, int] = {}
    from ablate.recipe import is_guided

    for label, cfg in cfgs.items():
        name = str(cfg.teacher.name)
        if is_guided(cfg) and not name.startswith(TINY_PREFIX):
            skipped[name] = skipped.get(name, 0) + 1
            continue
        identity = _model_identity(cfg)
        if identity in built:
            continue
        built.add(identity)
        try:
            _build_and_forward(cfg, teachers)
        except AblateError as err:
            check.problem(f"dry-run build of {label}: {err}")
        except Exception as err:  # noqa: BLE001 (shape errors etc. are what we look for)
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            check.problem(f"dry-run build of {label}: {type(err).__name__}: {first}")
    if built:
        how = "one per design cell" if check.space.design else "params varied one at a time"
        check.notes.append(f"dry-run built {len(built)} distinct detector(s), one guided "
                           f"forward each ({how})")
    for name, n in skipped.items():
        check.notes.append(f"dry-run build skipped for {n} configuration(s) with real teacher "
                           f"{name} (loading it takes minutes); only teacher.path was checked")


def _model_identity(cfg: Any) -> str:
    """The recipe parts a build depends on (train.lr and friends do not change it; the
    baseline builds only the encoder, so its filter or teacher do not either)."""
    from omegaconf import OmegaConf

    from ablate.recipe import is_guided

    keys = MODEL_KEYS if is_guided(cfg) else ("backbone", "guide", "image_size")
    parts = {k: OmegaConf.to_container(cfg[k], resolve=True) if k != "image_size" else cfg[k]
             for k in keys}
    return json.dumps(parts, sort_keys=True, default=str)


def _build_and_forward(cfg: Any, teachers: dict[str, Any]) -> None:
    """build_detector + one guided forward on 2 random images (catches shape/width errors)."""
    import torch
    from omegaconf import OmegaConf

    from ablate.model.build import build_detector, build_teacher
    from ablate.recipe import is_guided

    teacher = None
    if is_guided(cfg):  # the baseline builds no teacher
        key = json.dumps(OmegaConf.to_container(cfg.teacher, resolve=True), sort_keys=True)
        if key not in teachers:
            teachers[key] = build_teacher(cfg)
        teacher = teachers[key]
        teacher.check_image_size(cfg.image_size)  # build_detector skips it for a passed teacher
    detector = build_detector(cfg, teacher=teacher)
    g = torch.Generator().manual_seed(0)
    size = int(cfg.image_size)
    images = torch.rand(2, 3, size, size, generator=g) * 2 - 1
    with torch.no_grad():
        losses = detector.guided_losses(images, images.flip(-1), images, torch.tensor([0.0, 1.0]),
                                        generator=g)
    if not torch.isfinite(losses["total"]):
        raise AblateError(f"the guided loss is not finite ({float(losses['total'])})")
