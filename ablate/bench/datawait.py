"""`ablate bench --data-wait`: how long the guided step waits for its next batch.

The real input pipeline: PNG frames written to a temporary folder (half of them
fakes with their own source and target frames), a guided `ManifestDataset` over them
with the recipe's augmentation (frames decoded once at construction, as training
does), `make_loader` with the recipe's `train.loader_workers` and `pin_memory`, and
the recipe's guided `train_step` on each batch. The latent cache is filled before
the timed steps (an untimed pass), so the step costs what a later epoch's does.

Per step: the time blocked in `next()` on the loader ("wait") and the step itself.
Reported: the median wait, wait as a share of wait + step (summed over the timed
steps), and images per second over wait + step. Workers start when the iterator
is made: the warm-up steps absorb that. Measured for workers=0 and for the
recipe's workers (or `--loader-workers N`).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ablate.core.errors import AblateError
from ablate.device import pick_device
from ablate.recipe import compose, is_guided, recipe_hash


def guided_frames(folder: Path, n: int, size: int, augment: str,
                  max_skip_fraction: float, seed: int = 2) -> Any:
    """`n` random PNG frames in `folder`, odd ones fakes whose source is the frame before
    and target the frame after: a guided ManifestDataset, as training builds it."""
    # lazy: loads torchvision only when called
    from ablate.data.dataset import ManifestDataset

    rng = np.random.default_rng(seed)
    paths = [folder / f"frame{i:05d}.png" for i in range(n)]
    for path in paths:
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    rows = [{"path": str(paths[i]), "label": i % 2, "video_id": f"v{i // 8}",
             "dataset": "bench", "split": "train", "method": "bench" if i % 2 else "real",
             "frame": i % 8,
             "source_path": str(paths[i - 1]) if i % 2 else None,
             "target_path": str(paths[(i + 1) % n]) if i % 2 else None} for i in range(n)]
    return ManifestDataset(pd.DataFrame(rows), size, guided=True, augment=augment,
                           max_skip_fraction=max_skip_fraction)


def warm_cache(detector: Any, dataset: Any, batch_size: int, cache: Any,
               device: torch.device) -> None:
    """Every frame's teacher latents into the cache, untimed (later epochs find them)."""
    # lazy: loads torchvision only when called
    from ablate.data.loader import make_loader
    from ablate.train import cached_posteriors

    for batch in make_loader(dataset, batch_size, shuffle=False):  # the step's own keys
        cached_posteriors(detector, batch, cache, device)


def timed_epoch(step: Any, loader: Any, device: torch.device, warmup: int,
                repeats: int) -> dict[str, Any]:
    """`warmup` + `repeats` steps fed by `loader`; for the timed ones, the seconds blocked
    in `next()` and the seconds in the step (device synchronised)."""
    # lazy: loads diffusers and safetensors only when called
    from ablate.bench.run import _sync

    waits, steps, images = [], [], 0
    batches = iter(loader)
    for i in range(warmup + repeats):
        tick = time.perf_counter()
        batch = next(batches)
        got = time.perf_counter()
        step(batch)
        _sync(device)
        if i >= warmup:
            waits.append(got - tick)
            steps.append(time.perf_counter() - got)
            images += len(batch["label"])
    del batches  # workers stop here, before the next setting starts its own
    total = sum(waits) + sum(steps)
    return {"steps": repeats, "images": images, "wait_s": statistics.median(waits),
            "wait_mean_s": statistics.fmean(waits), "step_s": statistics.median(steps),
            "wait_fraction": sum(waits) / total if total > 0 else 0.0,
            "images_per_s": images / total if total > 0 else 0.0}


def data_wait(overrides: list[str] | tuple[str, ...] = (), device: str = "auto",
              warmup: int = 2, repeats: int = 5, workers: int | None = None,
              threads: int | None = None) -> dict[str, Any]:
    """Wait per step for workers=0 and the recipe's (or `workers`) loader processes."""
    # lazy: loads diffusers and safetensors only when called
    from ablate.bench.run import guided_training, machine
    from ablate.data.loader import make_loader
    from ablate.model.speed import Speed, tune_kernels
    from ablate.train import seed_everything, train_step

    if threads:
        torch.set_num_threads(threads)
    cfg = compose(list(overrides))
    if not is_guided(cfg):
        raise AblateError("--data-wait feeds the guided step; give a guided recipe, "
                          "not guide=none")
    dev = pick_device(device if device != "auto" else cfg.train.device)
    speed = Speed.from_config(cfg.train, dev)
    settings = sorted({0, speed.loader_workers if workers is None else workers})
    seed_everything(cfg.seed)
    tune_kernels(dev)
    before = machine(dev)
    detector, optimizer, cache = guided_training(cfg, dev, speed)
    bs = cfg.train.batch_size

    def step(batch: dict) -> None:
        train_step(detector, batch, optimizer, dev, cfg.train.grad_clip, speed, cache)

    results = {}
    with tempfile.TemporaryDirectory(prefix="ablate-datawait-") as tmp:
        frames = guided_frames(Path(tmp), (warmup + repeats + 1) * bs, cfg.image_size,
                               cfg.data.augment, cfg.data.max_skip_fraction)
        if cache is not None:
            warm_cache(detector, frames, bs, cache, dev)
        for n in settings:
            loader = make_loader(frames, bs, shuffle=True, seed=cfg.seed, workers=n,
                                 pin_memory=speed.pin_memory)
            results[f"workers={n}"] = {"workers": n, **timed_epoch(step, loader, dev, warmup,
                                                                   repeats)}
    return {
        "overrides": list(overrides), "recipe_hash": recipe_hash(cfg), "device": str(dev),
        "image_size": cfg.image_size, "batch_size": bs, "augment": cfg.data.augment,
        "pin_memory": speed.pin_memory, "latent_cache": speed.latent_cache,
        "warmup": warmup, "repeats": repeats,
        "machine": {"start": before, "end_load_avg": machine(dev)["load_avg"]},
        "results": results,
    }


def format_data_wait(report: dict[str, Any]) -> str:
    """The table `ablate bench --data-wait` prints."""
    lines = [
        f"data wait  device {report['device']}  {report['image_size']} px  batch "
        f"{report['batch_size']}  augment {report['augment']}  pin_memory "
        f"{report['pin_memory']}  (median of {report['repeats']} steps after "
        f"{report['warmup']} warm-up)",
        f"load average at start {report['machine']['start']['load_avg']}, "
        f"end {report['machine']['end_load_avg']}", "",
        f"{'loader':<12} {'wait s':>9} {'mean wait s':>12} {'step s':>9} {'wait share':>11} "
        f"{'img/s':>9}",
    ]
    for name, r in report["results"].items():
        lines.append(f"{name:<12} {r['wait_s']:>9.4f} {r['wait_mean_s']:>12.4f} "
                     f"{r['step_s']:>9.4f} {r['wait_fraction']:>11.1%} "
                     f"{r['images_per_s']:>9.1f}")
    return "\n".join(lines)
