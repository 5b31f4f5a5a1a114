"""One tiny forward of a recipe's detector on random images: a search space's dry run.

It catches shape and width mistakes in seconds, before a trial spends minutes finding them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from omegaconf import OmegaConf

from ablate.core.errors import AblateError
from ablate.model.build import build_detector, build_teacher
from ablate.recipe import is_guided


@contextmanager
def quiet_single_thread() -> Iterator[None]:
    """One torch thread (tiny forwards gain nothing from more, and on a busy machine
    oversubscribed threads made validation 10x slower) and no per-build log chatter."""
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


def build_and_forward(cfg: Any, teachers: dict[str, Any]) -> None:
    """build_detector + one guided forward on 2 random images (catches shape/width errors)."""
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
