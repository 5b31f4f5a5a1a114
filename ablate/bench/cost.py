"""What a recipe costs, as a structure search's objectives and constraints read it.

- `train_gflops`: model FLOPs of one training step at the recipe's batch (forward and
  backward of every trained module, and the frozen teacher's guided calls), counted by
  `torch.utils.flop_counter` as `ablate bench` counts them (flops.py: math attention, no
  recomputation, latent cache warm, the optimiser's elementwise work not counted), over a
  step run on fake tensors: no weights, no data, the same count on any machine;
- `latency_ms`: inference latency of the classifier alone (encoder + head, what `ablate
  predict` runs), one image at a time, the median of timed calls after warm-up on the
  device given. Measured, so it depends on the device and on what else runs there: compare
  latencies only within one sweep on one kind of machine.
"""

from __future__ import annotations

import statistics
from dataclasses import replace
from time import perf_counter

import torch
from omegaconf import DictConfig
from torch import nn

from ablate.bench.estimate import build
from ablate.bench.fake_memory import WarmCache
from ablate.bench.flops import count_flops
from ablate.model.speed import Speed
from ablate.train import update

LATENCY_WARMUP = 3
LATENCY_REPEATS = 20


def train_gflops(cfg: DictConfig) -> float:
    """GFLOPs of one training step of `cfg` at `train.batch_size`, on fake tensors."""
    built = build(cfg)
    speed = replace(Speed.from_config(cfg.train, torch.device("cpu")), attention="math",
                    grad_checkpointing=False, compile=False)
    cache = WarmCache() if speed.latent_cache and built.detector.guided else None
    with built.mode:
        flops = count_flops(lambda: update(built.detector, built.batch, built.optimizer,
                                           torch.device("cpu"), cfg.train.grad_clip, speed,
                                           cache))
    return flops / 1e9


@torch.inference_mode()
def latency_ms(classifier: nn.Module, image_size: int, device: torch.device,
               repeats: int = LATENCY_REPEATS, warmup: int = LATENCY_WARMUP) -> float:
    """Median milliseconds of `classifier` on one [1, 3, S, S] image on `device`."""
    was_training = classifier.training
    classifier.eval()
    image = torch.rand(1, 3, image_size, image_size, device=device)  # [1, 3, S, S]
    times = []
    try:
        for i in range(warmup + repeats):
            _sync(device)
            start = perf_counter()
            classifier(image)
            _sync(device)
            elapsed = perf_counter() - start
            if i >= warmup:
                times.append(elapsed)
    finally:
        classifier.train(was_training)
    return 1000 * statistics.median(times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
