"""`ablate bench --tuning`: one training step of a recipe per encoder tuning mode.

Rows: each mode of `backbone.tuning` (ablate/model/tuning.py: full, linear, layernorm, bias,
lora, svd) applied to the given recipe as its last override, so the recipe's own knobs
(lora_rank, svd_rank, targets, guidance, batch, image size) stay. Every row builds a fresh
detector and optimiser (the recipe's, over the parameters that train) and runs `warmup`
untimed and `repeats` timed real train steps (`ablate.train.train_step`) on one synthetic
batch; guided or not (`guide=none`) alike. Per row:

  trainable     parameters with requires_grad: of the encoder, of the head, of encoder +
                head (what ships), and of the whole detector (plus filters, branch weights
                and guide when guided; the teacher is frozen); beside each, the total
  step_s        median seconds of the whole step (forward, backward, optimiser)
  forward_s     median seconds of the same step stopped after its forward (the losses),
                so backward + optimiser = step_s - forward_s; none with
                train.branch_backward on a guided recipe (its forward runs the backward)
  setup_s       seconds to build the detector: svd's SVDs, LoRA's injection (not timed in
                step_s)
  grads_mb      bytes of the trainable parameters: what their gradients hold (as many)
  optimizer_state_mb  what the optimiser holds after the steps (AdamW / Adam: two fp32
                moments, 2 x 4 bytes per trainable parameter)
  peak_mb       CUDA: `torch.cuda.max_memory_allocated` since the row started (reserved
                beside it). CPU: each row in a process of its own (as --memory-matrix),
                its peak resident memory (VmHWM: interpreter, libraries, weights and all);
                floor_mb is the process's before it built anything, above_floor_mb the rest

A mode that cannot apply to the encoder (layernorm on a CNN, LoRA or SVD targets it lacks)
is a row with its one-line reason ("n/a: ..."), not a crash.
"""

from __future__ import annotations

import importlib.util
import logging
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import torch
from torch import nn

from ablate.bench.levers import PRELOAD, _tensor_mb, resident_peak_mb, row_or_oom, step_setup
from ablate.core.errors import AblateError
from ablate.core.schema import setting
from ablate.device import pick_device
from ablate.model.tuning import MODES
from ablate.recipe import compose, is_guided, recipe_hash

ADAM_BYTES_PER_PARAM = 2 * 4  # Adam / AdamW: two fp32 moments per trainable parameter


def parse_modes(text: str | None) -> tuple[str, ...]:
    """'linear,lora' -> ('linear', 'lora'); None or 'all' -> every mode, in MODES' order."""
    if text is None or text.strip() == "all":
        return MODES
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise AblateError(f"--tuning-modes {text!r}: {', '.join(unknown) or 'no mode'} is not a "
                          f"tuning mode; give a comma-separated list of {', '.join(MODES)} "
                          "(or all)")
    return tuple(dict.fromkeys(modes))  # once each, in the order given


def row_overrides(recipe: list[str], mode: str) -> list[str]:
    """The recipe, then the mode: a later override wins, so the row's mode is `mode`."""
    return [*recipe, f"backbone.tuning={mode}"]


def _count(module: nn.Module | None, trainable: bool) -> int:
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)


def parameter_counts(detector: nn.Module) -> dict[str, int]:
    """Trainable (requires_grad) and total parameters of the encoder, the head, both (the
    shipped classifier) and the whole detector."""
    classifier = detector.classifier
    return {
        "encoder_trainable": _count(classifier.backbone, True),
        "encoder_params": _count(classifier.backbone, False),
        "head_trainable": _count(classifier.head, True),
        "classifier_trainable": _count(classifier, True),
        "classifier_params": _count(classifier, False),
        "detector_trainable": _count(detector, True),
        "detector_params": _count(detector, False),
    }


class _ForwardDone(Exception):
    """Raised by the check `update` calls after the forward: the step stops there."""


def _stop(losses: dict[str, torch.Tensor]) -> None:
    raise _ForwardDone


def measure_row(overrides: list[str], device: str, warmup: int, repeats: int) -> dict[str, Any]:
    """Build the detector of `overrides`, time its train step (and the step's forward alone)
    and return counts, times and memory. AblateError (the mode does not apply) propagates."""
    # lazy: loads diffusers, timm and peft only when called
    from ablate.bench.run import _sync
    from ablate.model.build import build_detector
    from ablate.model.latent_cache import LatentCache
    from ablate.model.speed import configure_detector
    from ablate.train import make_optimizer, train_step, update

    cfg, dev, speed, batch, start_mb = step_setup(overrides, device)
    grad_clip = cfg.train.grad_clip

    tick = time.perf_counter()
    detector = build_detector(cfg).to(dev)
    detector.train()
    configure_detector(detector, speed)
    params = [p for p in detector.parameters() if p.requires_grad]
    optimizer = make_optimizer(cfg, params, speed.fused_optimizer)
    guided = detector.guided
    cache = (LatentCache(max_memory_mb=speed.latent_cache_mb)
             if speed.latent_cache and guided else None)
    _sync(dev)
    setup_s = time.perf_counter() - tick
    # branch_backward backpropagates inside the forward: no forward-only time to take
    split = not (guided and speed.branch_backward)

    def step() -> None:
        train_step(detector, batch, optimizer, dev, grad_clip, speed, cache)

    def forward() -> None:
        try:
            update(detector, batch, optimizer, dev, grad_clip, speed, cache, check=_stop)
        except _ForwardDone:
            pass

    def timed(call: Any) -> float:
        _sync(dev)
        start = time.perf_counter()
        call()
        _sync(dev)
        return time.perf_counter() - start

    for _ in range(warmup):
        step()
    steps, forwards = [], []
    for _ in range(repeats):  # alternating: a busy machine slows both alike
        steps.append(timed(step))
        if split:
            forwards.append(timed(forward))
    row: dict[str, Any] = {
        **parameter_counts(detector),
        "guided": guided, "step_s": statistics.median(steps), "step_min_s": min(steps),
        "step_max_s": max(steps), "steps": repeats,
        "forward_s": statistics.median(forwards) if forwards else None,
        "setup_s": setup_s, "precision": speed.precision, "optimizer": cfg.train.optimizer,
        "weights_mb": _tensor_mb([*detector.parameters(), *detector.buffers()]),
        "grads_mb": _tensor_mb(params),
        "optimizer_state_mb": _tensor_mb(v for s in optimizer.state.values()
                                         for v in s.values()),
    }
    if dev.type == "cuda":
        row["peak_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
        row["reserved_mb"] = torch.cuda.max_memory_reserved(dev) / 2**20
        row["start_mb"] = start_mb
    else:
        row["peak_mb"] = resident_peak_mb()
    return row  # the row's modules go with this frame: the caller frees the device


# ----------------------------------------------------------------- where a row runs


def _row_in_child(spec: dict[str, Any]) -> dict[str, Any]:
    """One CPU row in a process forked for it alone (its peak is its own)."""
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    logging.getLogger("ablate").setLevel(logging.ERROR)  # the same random-init warning per row
    # lazy: already imported when the forkserver's preload worked
    import ablate.model.build  # noqa: F401
    import ablate.train  # noqa: F401
    floor = resident_peak_mb()
    try:
        row = measure_row(spec["overrides"], "cpu", spec["warmup"], spec["repeats"])
    except AblateError as err:
        return {"na": f"n/a: {err}"}
    return {**row, "floor_mb": floor, "above_floor_mb": row["peak_mb"] - floor}


def row_processes(jobs: int) -> ProcessPoolExecutor:
    """`jobs` row processes at a time, one row each, forked from a forkserver that imported
    torch, diffusers, ablate and peft (so the lora row's peak holds no more imports than the
    others': every row's floor holds them)."""
    preload = [*PRELOAD, "ablate.bench.tuning_rows"]
    preload += ["peft"] if importlib.util.find_spec("peft") else []
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(preload)
    return ProcessPoolExecutor(max_workers=jobs, mp_context=context, max_tasks_per_child=1)


def _in_process(overrides: list[str], device: str, warmup: int,
                repeats: int) -> dict[str, Any]:
    """One CUDA row here (levers.row_or_oom: out of memory and n/a are rows, not crashes)."""
    # lazy: the bench modules load diffusers and timm, only on a CUDA row
    from ablate.bench.run import _free

    def measure() -> dict[str, Any]:
        row = measure_row(overrides, device, warmup, repeats)
        _free(torch.device(device))  # the row's modules are gone before the next row builds
        return row

    return row_or_oom(measure, device)


# ----------------------------------------------------------------- the table


def tuning_matrix(overrides: list[str] | tuple[str, ...] = (), modes: tuple[str, ...] = MODES,
                  device: str = "auto", warmup: int = 2, repeats: int = 5,
                  threads: int | None = None, jobs: int = 1) -> dict[str, Any]:
    """One row per tuning mode of `overrides`' recipe (guided or not); see the module doc."""
    # lazy: loads torch-heavy modules only when called
    from ablate.bench.run import machine

    recipe = list(overrides)
    cfg = compose(recipe)
    dev = pick_device(device if device != "auto" else cfg.train.device)
    if threads:
        torch.set_num_threads(threads)
    before = machine(dev)
    pool = row_processes(jobs) if dev.type == "cpu" else None
    jobs = jobs if pool is not None else 1  # CUDA rows run one after the other, here

    def run(mode: str) -> dict[str, Any]:
        o = row_overrides(recipe, mode)
        if pool is None:
            return _in_process(o, str(dev), warmup, repeats)
        spec = {"overrides": o, "warmup": warmup, "repeats": repeats, "threads": threads}
        try:
            return pool.submit(_row_in_child, spec).result()
        except BrokenProcessPool as err:
            return {"error": f"row process died: {err}"}

    try:
        with ThreadPoolExecutor(max_workers=jobs) as workers:
            found = list(workers.map(run, modes))
    finally:
        if pool is not None:
            pool.shutdown()
    rows = dict(zip(modes, found, strict=True))
    return {
        "overrides": recipe, "recipe_hash": recipe_hash(cfg), "device": str(dev),
        "image_size": cfg.image_size, "batch_size": cfg.train.batch_size,
        "backbone": cfg.backbone.name, "guided": is_guided(cfg),
        "teacher": cfg.teacher.name if is_guided(cfg) else None,
        "guide": cfg.guide.name, "recipe_tuning": str(setting(cfg, "backbone.tuning")),
        "optimizer": cfg.train.optimizer, "warmup": warmup, "repeats": repeats, "jobs": jobs,
        "peak_kind": ("cuda max_memory_allocated since the row started (reserved beside it)"
                      if dev.type == "cuda" else
                      "whole process peak resident memory (VmHWM), own process per row"),
        "machine": {"start": before, "end_load_avg": machine(dev)["load_avg"]},
        "rows": rows,
    }


def _millions(n: int) -> str:
    return f"{n:,}" if n < 10**6 else f"{n / 1e6:.2f} M"


def format_tuning(report: dict[str, Any]) -> str:
    """The table `ablate bench --tuning` prints: one row per mode."""
    cuda = report["device"].startswith("cuda")
    guidance = (f"teacher {report['teacher']}, guide {report['guide']}" if report["guided"]
                else "unguided (guide=none)")
    lines = [
        f"tuning modes  device {report['device']}  backbone {report['backbone']}  {guidance}  "
        f"{report['image_size']} px  batch {report['batch_size']}  {report['optimizer']}  "
        f"(median of {report['repeats']} steps after {report['warmup']} warm-up)",
        f"peak: {report['peak_kind']}",
        f"load average at start {report['machine']['start']['load_avg']}, "
        f"end {report['machine']['end_load_avg']}", "",
        f"{'mode':<10} {'enc+head train':>14} {'detector train':>14} {'of params':>10} "
        f"{'step s':>8} {'fwd s':>8} {'peak MB':>9} "
        + (f"{'reserved MB':>12} " if cuda else f"{'above floor':>12} ")
        + f"{'grads MB':>9} {'opt MB':>8} {'setup s':>8}",
    ]
    for mode, row in report["rows"].items():
        if "step_s" not in row:
            lines.append(f"{mode:<10} {row.get('na') or row.get('error')}")
            continue
        fwd = f"{row['forward_s']:.4f}" if row["forward_s"] is not None else "-"
        mem = row["reserved_mb"] if cuda else row["above_floor_mb"]
        lines.append(
            f"{mode:<10} {_millions(row['classifier_trainable']):>14} "
            f"{_millions(row['detector_trainable']):>14} "
            f"{row['detector_trainable'] / row['detector_params']:>10.2%} "
            f"{row['step_s']:>8.4f} {fwd:>8} {row['peak_mb']:>9.0f} {mem:>12.0f} "
            f"{row['grads_mb']:>9.1f} {row['optimizer_state_mb']:>8.1f} {row['setup_s']:>8.2f}")
    lines += ["", "enc+head train: trainable parameters of encoder + head (what ships); detector "
              "train: of the whole detector, 'of params' its share of all its parameters",
              "fwd s: the step's forward alone (backward + optimiser = step s - fwd s); opt MB: "
              "optimiser state after the steps (Adam: 2 x 4 bytes per trainable parameter)"]
    if not cuda:
        lines.append("above floor: peak minus the row process's resident memory before it "
                     "built anything")
    return "\n".join(lines)
