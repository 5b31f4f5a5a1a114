"""The measurements behind `ablate bench`, all in one process on one device.

Synthetic images of the recipe's size and batch (timing does not depend on pixel
values; half the batch fake, whose source and target differ from the image),
medians over `repeats` timed calls after `warmup` untimed ones:

  encoder          encoder-only train step: backbone + head + BCE, backward, optimiser
  baseline         the plain detector (guide=none) through `train_step`: should equal encoder
  guided           guided train step with the recipe's speed settings, latent cache warm
  guided_cold      the same with an empty latent cache (the first epoch's cost)
  straightforward  the guided step the plain way: no cache, one branch after the
                   other, fp32, contiguous memory, not compiled
  eval             `ablate.scoring.score` over `eval_batches` batches of PNG frames
                   read through a ManifestDataset (decoded once, as in `ablate eval`)
  eval_model       what `score` does per batch without the data pipeline: the shipped
                   Classifier's forward (encoder + head, its inference precision) + sigmoid
  bare             the timm model's own forward over the same batches (no_grad, same
                   precision and memory format): the floor the evaluation path is held to

The guided step's FLOPs are counted once after its timed calls (flops.py), for its
achieved TFLOP/s and MFU. `ablate bench --memory-matrix` (levers.py) and
`--data-wait` (datawait.py) are separate runs.

Guided, guided_cold and straightforward alternate round by round, so a busy
machine slows all of them alike. When they differ in memory format or compile is
on, switching per round would be costly, so they run in blocks instead
(straightforward first), each with a fresh optimiser.
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from ablate.bench.flops import format_mfu, guided_step_flops, peak_for, utilisation
from ablate.core.errors import AblateError
from ablate.data.dataset import ManifestDataset
from ablate.device import pick_device
from ablate.model.build import build_classifier, build_detector, loss_weights
from ablate.model.detector import DiffusionFakeDetector
from ablate.model.latent_cache import LatentCache
from ablate.model.speed import (
    Speed,
    autocast,
    configure_classifier,
    configure_detector,
    memory_format,
    reference_stance,
    tune_kernels,
)
from ablate.recipe import compose, is_guided, recipe_hash
from ablate.scoring import score
from ablate.train import make_optimizer, seed_everything, train_step

SPEEDUP_GOAL = 1.5  # straightforward / guided
EVAL_GOAL = 0.9  # eval throughput / bare forward throughput
GPU_PEAK_GOAL_GB = 24.0
GPU_GOAL_RECIPE = ("teacher=sd15", "teacher.random_init=true", "backbone=efficientnet_b4",
                   "backbone.random_init=true",
                   "image_size=256", "train.batch_size=16")


@dataclass
class Phase:
    """One thing to time. `setup` puts the modules in its configuration."""

    name: str
    images: int  # images per timed call
    step: Callable[[], Any]
    setup: Callable[[], None] = lambda: None
    times: list[float] = field(default_factory=list)
    peaks_mb: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        median = statistics.median(self.times)
        return {
            "median_s": median, "min_s": min(self.times), "max_s": max(self.times),
            "repeats": len(self.times), "images_per_s": self.images / median,
            "peak_mem_mb": max(self.peaks_mb) if self.peaks_mb else None,
        }


def guided_training(cfg: Any, dev: torch.device, speed: Speed) -> tuple[
        DiffusionFakeDetector, torch.optim.Optimizer, LatentCache | None]:
    """A fresh guided detector in train mode with `speed`'s settings, its optimiser and its
    latent cache: where every separately measured guided step starts."""
    detector = build_detector(cfg).to(dev)
    detector.train()
    configure_detector(detector, speed)
    params = [p for p in detector.parameters() if p.requires_grad]
    optimizer = make_optimizer(cfg, params, speed.fused_optimizer)
    cache = LatentCache(max_memory_mb=speed.latent_cache_mb) if speed.latent_cache else None
    return detector, optimizer, cache


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(phase: Phase, device: torch.device) -> None:
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    tick = time.perf_counter()
    phase.step()
    _sync(device)
    phase.times.append(time.perf_counter() - tick)
    if device.type == "cuda":
        phase.peaks_mb.append(torch.cuda.max_memory_allocated(device) / 2**20)


def measure(phases: list[Phase], device: torch.device, warmup: int, repeats: int,
            interleave: bool) -> None:
    """Round by round (interleave) or one block per phase; medians are taken later."""
    if interleave:
        for _ in range(warmup):
            for phase in phases:
                phase.setup()
                phase.step()
        for _ in range(repeats):
            for phase in phases:
                phase.setup()
                _timed(phase, device)
        return
    for phase in phases:
        phase.setup()
        for _ in range(warmup):
            phase.step()
        for _ in range(repeats):
            _timed(phase, device)


def synthetic_batch(size: int, batch: int, seed: int = 0) -> dict[str, Any]:
    """Images/sources/targets [B, 3, size, size] in [-1, 1] on the CPU (as a loader gives
    them); odd rows fake with their own source and a flipped target, even rows real."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    labels = torch.arange(batch).remainder(2).float()  # [B]: 0, 1, 0, 1, ...
    fake = labels.view(-1, 1, 1, 1) > 0
    sources = torch.where(fake, torch.rand(batch, 3, size, size, generator=g) * 2 - 1, images)
    targets = torch.where(fake, images.flip(-1), images)
    return {"image": images, "source": sources, "target": targets, "label": labels,
            "video_id": [f"v{i}" for i in range(batch)], "path": [f"p{i}" for i in range(batch)]}


def eval_frames(folder: Path, n: int, size: int, seed: int = 1) -> ManifestDataset:
    """`n` random PNG frames written to `folder`, read back through a ManifestDataset:
    what `ablate eval` iterates over (frames decoded once into its memory cache)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        path = folder / f"frame{i:05d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        rows.append({"path": str(path), "label": i % 2, "video_id": f"v{i // 8}",
                     "dataset": "bench", "split": "test", "method": "real" if i % 2 == 0
                     else "bench", "frame": i % 8, "source_path": None, "target_path": None})
    return ManifestDataset(pd.DataFrame(rows), size, guided=False)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def encoder_phases(cfg: Any, device: torch.device, speed: Speed, batch: dict,
                   warmup: int, repeats: int, eval_batches: int,
                   eval_batch_size: int) -> dict[str, dict[str, Any]]:
    """(a) the encoder-only train step, then (d) evaluation against the bare forward;
    only the classifier is on the device. Returns each phase's summary."""
    classifier = build_classifier(cfg).to(device)
    configure_classifier(classifier, speed)
    params = [p for p in classifier.parameters() if p.requires_grad]
    state = {"optimizer": make_optimizer(cfg, params, speed.fused_optimizer)}
    fmt = memory_format(speed)
    grad_clip = cfg.train.grad_clip

    def encoder_step() -> float:
        images = batch["image"].to(device, non_blocking=True).contiguous(memory_format=fmt)
        labels = batch["label"].to(device)
        state["optimizer"].zero_grad(set_to_none=True)  # as train_step: before the forward
        with autocast(device, speed):
            logits = classifier.logits(*classifier.encode(images))  # as Classifier.forward
            loss = F.binary_cross_entropy_with_logits(logits, labels)
        if not torch.isfinite(loss):  # as train_step: one host sync per step
            raise RuntimeError("encoder loss is not finite")
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        state["optimizer"].step()
        return float(loss.detach())

    # the plain baseline (guide=none) through the real train_step: it must cost what the
    # hand-written encoder step costs, since nothing but the classifier is built
    baseline_detector = DiffusionFakeDetector(classifier, loss_weights=loss_weights(cfg))
    state["baseline"] = make_optimizer(cfg, params, speed.fused_optimizer)

    def baseline_step() -> None:
        train_step(baseline_detector, batch, state["baseline"], device, grad_clip, speed)

    encoder = Phase("encoder", len(batch["image"]), encoder_step)
    baseline = Phase("baseline", len(batch["image"]), baseline_step)
    classifier.train()
    measure([encoder, baseline], device, warmup, repeats, interleave=True)
    state.clear()  # the optimisers' states leave the device before evaluation
    classifier.zero_grad(set_to_none=True)
    _free(device)

    classifier.eval()
    n = eval_batches * eval_batch_size
    with tempfile.TemporaryDirectory(prefix="ablate-bench-") as tmp:
        frames = eval_frames(Path(tmp), n, cfg.image_size)
    images = torch.stack([frames[i]["image"] for i in range(n)])  # [n, 3, S, S]
    chunks = list(images.split(eval_batch_size))
    model = classifier.backbone.model  # the timm model itself

    def evaluate() -> None:
        score(classifier, frames, batch_size=eval_batch_size, device=device, progress=False)

    @torch.no_grad()
    def eval_model() -> None:  # what `score` does per batch, minus the data pipeline
        for x in chunks:
            torch.sigmoid(classifier(x.to(device))).float().cpu()

    @torch.no_grad()
    def bare() -> None:
        with autocast(device, speed):
            for x in chunks:
                model(x.to(device)).float().cpu()

    phases = [Phase("eval", n, evaluate), Phase("eval_model", n, eval_model),
              Phase("bare", n, bare)]
    measure(phases, device, warmup, repeats, interleave=True)
    return {p.name: p.summary() for p in [encoder, baseline, *phases]}


def guided_phases(cfg: Any, device: torch.device, speed: Speed, batch: dict,
                  warmup: int, repeats: int) -> dict[str, dict[str, Any]]:
    """(b) optimised guided step, warm and cold cache, and (c) the straightforward one."""
    detector = build_detector(cfg).to(device)
    detector.train()
    params = [p for p in detector.parameters() if p.requires_grad]
    plain = Speed.straightforward(speed.attention)
    interleave = not speed.compile and speed.channels_last == plain.channels_last
    cache = LatentCache(max_memory_mb=speed.latent_cache_mb) if speed.latent_cache else None
    optimizers: dict[Speed, torch.optim.Optimizer] = {}  # one per settings (fused or not)
    grad_clip = cfg.train.grad_clip

    def setup(settings: Speed) -> Callable[[], None]:
        def apply() -> None:
            configure_detector(detector, settings)
            if settings not in optimizers:
                if not interleave:  # blocks: the last block's states leave the device first
                    optimizers.clear()
                    _free(device)
                optimizers[settings] = make_optimizer(cfg, params, settings.fused_optimizer)
        return apply

    def guided() -> None:
        train_step(detector, batch, optimizers[speed], device, grad_clip, speed, cache)

    def guided_cold() -> None:
        if cache is not None:
            cache.clear()
        guided()

    def straightforward() -> None:
        with reference_stance() if speed.compile else contextlib.nullcontext():
            train_step(detector, batch, optimizers[plain], device, grad_clip, plain, None)

    n = len(batch["image"])
    phases = [
        Phase("straightforward", n, straightforward, setup(plain)),
        Phase("guided", n, guided, setup(speed)),
    ]
    if cache is not None:
        phases.append(Phase("guided_cold", n, guided_cold, setup(speed)))
    measure(phases, device, warmup, repeats, interleave)
    found = {p.name: p.summary() for p in phases}
    # counted once, untimed, after the timed calls (warm cache, as `guided` ran)
    found["guided"]["flops"] = guided_step_flops(detector, batch, optimizers[speed], device,
                                                 grad_clip, speed, cache)
    return found


def machine(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on, and how busy it was."""
    info: dict[str, Any] = {
        "host_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(), "python": platform.python_version(),
        "torch": torch.__version__, "load_avg": [round(x, 2) for x in os.getloadavg()],
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run_bench(overrides: list[str] | tuple[str, ...] = (), device: str = "auto",
              warmup: int = 2, repeats: int = 5, eval_batches: int = 4,
              eval_batch_size: int = 64, threads: int | None = None,
              peak_tflops: float | None = None) -> dict[str, Any]:
    """Time (a)-(d) for one recipe and return everything as a JSON-able dict.

    `threads`: CPU threads for torch (default: its own choice). On a shared machine 1
    is steadier: two OpenMP threads stall whenever another process takes a core.
    `peak_tflops`: the device's peak for MFU (default: the GPU's datasheet entry)."""
    if threads:
        torch.set_num_threads(threads)
    cfg = compose(list(overrides))
    if not is_guided(cfg):
        raise AblateError("ablate bench times the plain baseline in every run (phase "
                          "'baseline', beside 'encoder'); give it a guided recipe, not guide=none")
    dev = pick_device(device if device != "auto" else cfg.train.device)
    speed = Speed.from_config(cfg.train, dev)
    seed_everything(cfg.seed)
    tune_kernels(dev)
    before = machine(dev)
    batch = synthetic_batch(cfg.image_size, cfg.train.batch_size, cfg.seed)
    results = encoder_phases(cfg, dev, speed, batch, warmup, repeats, eval_batches,
                             eval_batch_size)
    _free(dev)  # the classifier is gone before the detector arrives
    results |= guided_phases(cfg, dev, speed, batch, warmup, repeats)
    _free(dev)
    info = {"start": before, "end_load_avg": machine(dev)["load_avg"]}
    if dev.type == "cpu":  # no per-phase peak on a CPU: the process's peak resident memory
        info["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "overrides": list(overrides), "recipe_hash": recipe_hash(cfg), "device": str(dev),
        "image_size": cfg.image_size, "batch_size": cfg.train.batch_size,
        "teacher": cfg.teacher.name, "backbone": cfg.backbone.name,
        "warmup": warmup, "repeats": repeats,
        "eval_images": eval_batches * eval_batch_size, "eval_batch_size": eval_batch_size,
        "speed": speed.as_dict(), "straightforward": Speed.straightforward(speed.attention).as_dict(),
        "machine": info, "results": results, **ratios_and_goals(results, cfg, dev),
        "mfu": utilisation(results["guided"]["flops"], results["guided"]["median_s"],
                           peak_for(dev, speed.precision, peak_tflops)),
    }


def ratios_and_goals(results: dict[str, dict], cfg: Any, device: torch.device) -> dict[str, Any]:
    """b/a, c/b, d/bare and the issue's goals, each with whether it is met."""
    t = {name: r["median_s"] for name, r in results.items()}
    ratios = {
        "guided_over_encoder": t["guided"] / t["encoder"],  # what guidance costs per step
        "baseline_over_encoder": t["baseline"] / t["encoder"],  # ~1: the baseline adds nothing
        "straightforward_over_guided": t["straightforward"] / t["guided"],  # the speed-up
        "eval_over_bare": results["eval"]["images_per_s"] / results["bare"]["images_per_s"],
        "eval_model_over_bare": (results["eval_model"]["images_per_s"]
                                 / results["bare"]["images_per_s"]),
    }
    if "guided_cold" in t:
        ratios["guided_cold_over_guided"] = t["guided_cold"] / t["guided"]
    goals: dict[str, Any] = {
        "speedup": {"value": ratios["straightforward_over_guided"], "target": SPEEDUP_GOAL,
                    "met": ratios["straightforward_over_guided"] >= SPEEDUP_GOAL},
        "eval_vs_bare": {"value": ratios["eval_over_bare"], "target": EVAL_GOAL,
                         "met": ratios["eval_over_bare"] >= EVAL_GOAL},
        "eval_model_vs_bare": {"value": ratios["eval_model_over_bare"], "target": EVAL_GOAL,
                               "met": ratios["eval_model_over_bare"] >= EVAL_GOAL},
    }
    gpu_recipe = (cfg.teacher.name == "sd15" and cfg.backbone.name == "efficientnet_b4"
                  and cfg.image_size == 256 and cfg.train.batch_size == 16)
    peak = results["guided"]["peak_mem_mb"]
    if device.type == "cuda" and gpu_recipe and peak is not None:
        goals["gpu_peak"] = {"value_gb": peak / 1024, "target_gb": GPU_PEAK_GOAL_GB,
                             "met": peak / 1024 <= GPU_PEAK_GOAL_GB}
    else:
        goals["gpu_peak"] = {"target_gb": GPU_PEAK_GOAL_GB, "met": None,
                             "pending": "ablate bench " + " ".join(GPU_GOAL_RECIPE)
                             + " --device cuda"}
    return {"ratios": ratios, "goals": goals}


def format_report(report: dict[str, Any]) -> str:
    """The human-readable table `ablate bench` prints without --json."""
    lines = [
        f"device {report['device']}  teacher {report['teacher']}  backbone {report['backbone']}"
        f"  {report['image_size']} px  batch {report['batch_size']}  "
        f"(median of {report['repeats']} after {report['warmup']} warm-up)",
        f"load average at start {report['machine']['start']['load_avg']}, "
        f"end {report['machine']['end_load_avg']}",
        "",
        f"{'phase':<16} {'median s':>9} {'min s':>8} {'img/s':>9} {'peak MB':>9}",
    ]
    for name, r in report["results"].items():
        peak = f"{r['peak_mem_mb']:.0f}" if r["peak_mem_mb"] is not None else "-"
        lines.append(f"{name:<16} {r['median_s']:>9.4f} {r['min_s']:>8.4f} "
                     f"{r['images_per_s']:>9.1f} {peak:>9}")
    lines.append("")
    lines.append("guided step " + format_mfu(report["mfu"]))
    lines.append("")
    for name, value in report["ratios"].items():
        lines.append(f"{name:<28} {value:.2f}")
    lines.append("")
    for name, goal in report["goals"].items():
        if goal["met"] is None:
            lines.append(f"goal {name}: pending (needs a GPU: {goal['pending']})")
        else:
            value = goal.get("value", goal.get("value_gb"))
            target = goal.get("target", goal.get("target_gb"))
            lines.append(f"goal {name}: {value:.2f} vs {target} -> "
                         f"{'met' if goal['met'] else 'NOT met'}")
    return "\n".join(lines)
