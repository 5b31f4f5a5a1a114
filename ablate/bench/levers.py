"""`ablate bench --memory-matrix`: peak memory of the guided train step per memory lever.

Rows: the plain configuration (fp32, no gradient checkpointing, one joint backward, math
attention, fp32 AdamW, fp32 teacher), each lever alone on top of it, and all of them together. Every
row builds a fresh detector and optimiser and runs `warmup` + `repeats` real train
steps on one synthetic batch (latent cache as the recipe says; warm after the first
step). The peak covers the whole row: weights, the first (cold-cache) step, the
optimiser state and the steady steps.

  CUDA  in this process, one row after the other: `torch.cuda.max_memory_allocated`
        since the row started (everything of the row before freed, `empty_cache`d),
        and the allocator's reserved peak, which is what has to fit on the card
        (plus the CUDA context, ~0.5 GB). The 16 GB goal is judged on the reserved peak.
  CPU   each row in a process of its own, forked from a forkserver that imported
        torch, diffusers, ablate (and bitsandbytes); its peak is the whole process's
        peak resident memory (VmHWM: interpreter, libraries and all), with the floor
        (its resident memory before it builds anything) beside it. Not `ru_maxrss`: a
        process started by fork/vfork + exec inherits its parent's high-water mark there.

A lever that cannot apply here (bf16 on a CPU without native bf16, no bitsandbytes, a
teacher and guide without UNet attention) is a row that says why, not a crash.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import multiprocessing
import resource
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ablate.bench.flops import guided_step_flops, peak_for, utilisation
from ablate.core.errors import AblateError
from ablate.core.schema import setting
from ablate.device import pick_device, supports_dtype
from ablate.recipe import compose, is_guided, recipe_hash

MEMORY_GOAL_GB = 16.0  # issue 15: the released recipe (~40 GB) on a 16 GB card


@dataclass(frozen=True)
class Lever:
    """One row: a name, what it is, and the overrides it adds on top of the plain row."""

    name: str
    label: str
    overrides: tuple[str, ...]


PLAIN = ("train.precision=fp32", "train.grad_checkpointing=false", "train.branch_backward=false",
         "train.attention=math", "train.optimizer=adamw", "teacher.dtype=float32")
LEVERS = (
    Lever("plain", "plain: fp32, no ckpt, math attn, AdamW, fp32 teacher", ()),
    Lever("bf16", "train.precision=bf16", ("train.precision=bf16",)),
    Lever("grad_checkpointing", "train.grad_checkpointing=true",
          ("train.grad_checkpointing=true",)),
    Lever("branch_backward", "train.branch_backward=true", ("train.branch_backward=true",)),
    Lever("sdpa", "train.attention=sdpa", ("train.attention=sdpa",)),
    Lever("adamw8bit", "train.optimizer=adamw8bit", ("train.optimizer=adamw8bit",)),
    Lever("teacher_bf16", "teacher.dtype=bfloat16", ("teacher.dtype=bfloat16",)),
)
ALL = "all"


def row_overrides(recipe: list[str], lever_overrides: tuple[str, ...]) -> list[str]:
    """The recipe, then the plain settings, then the lever: later overrides win."""
    return [*recipe, *PLAIN, *lever_overrides]


def not_applicable(lever: Lever, recipe: list[str], device: torch.device) -> str | None:
    """Why `lever` cannot apply on `device` (a one-line reason), or None if it can."""
    # lazy: loads diffusers and safetensors only when called
    from ablate.train import check_teacher_precision

    if lever.name == "bf16" and not supports_dtype(device, torch.bfloat16):
        return f"n/a: this {device.type} has no native bf16 (autocast would be emulated)"
    if lever.name == "adamw8bit" and importlib.util.find_spec("bitsandbytes") is None:
        return "n/a: bitsandbytes is not installed (pip install 'ablate[8bit]')"
    if lever.name == "teacher_bf16":
        try:
            check_teacher_precision(compose(row_overrides(recipe, lever.overrides)), device)
        except AblateError as err:
            return f"n/a: {err}"
    return None


# ----------------------------------------------------------------- one row, anywhere


def resident_peak_mb() -> float:
    """This process's peak resident memory in MB: VmHWM where Linux has it (its own, not
    inherited through exec), else ru_maxrss (KiB on Linux, bytes on macOS)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _tensor_mb(tensors: Any) -> float:
    """Bytes held by the tensors among `tensors`, in MB: exact, unlike a process peak."""
    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t)) / 2**20


def step_setup(overrides: list[str], device: str) -> tuple[Any, torch.device, Any, dict,
                                                            float | None]:
    """A measured row's start: (recipe, device, speed, seeded synthetic batch, CUDA memory
    already allocated), with the device's peak counter reset."""
    # lazy: loads diffusers and safetensors only when called
    from ablate.bench.run import _free, synthetic_batch
    from ablate.model.speed import Speed, tune_kernels
    from ablate.train import seed_everything

    cfg = compose(overrides)
    dev = torch.device(device)
    speed = Speed.from_config(cfg.train, dev)
    seed_everything(cfg.seed)
    tune_kernels(dev)
    batch = synthetic_batch(cfg.image_size, cfg.train.batch_size, cfg.seed)
    _free(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    start_mb = torch.cuda.memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
    return cfg, dev, speed, batch, start_mb


def measure_row(overrides: list[str], device: str, warmup: int, repeats: int,
                count: bool) -> dict[str, Any]:
    """Build the detector of `overrides`, run warm-up + timed train steps, and return the
    peak memory, step times and what the modules hold (weights, optimiser state)."""
    # lazy: loads diffusers and safetensors only when called
    from ablate.bench.run import _free, _sync, guided_training
    from ablate.model.speed import _is_unet
    from ablate.train import train_step

    cfg, dev, speed, batch, start_mb = step_setup(overrides, device)
    detector, optimizer, cache = guided_training(cfg, dev, speed)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    nets = [detector.teacher.denoiser, *detector.guide.nets]
    times = []
    for i in range(warmup + repeats):
        _sync(dev)
        tick = time.perf_counter()
        train_step(detector, batch, optimizer, dev, cfg.train.grad_clip, speed, cache)
        _sync(dev)
        if i >= warmup:
            times.append(time.perf_counter() - tick)
    row: dict[str, Any] = {
        "step_s": statistics.median(times), "steps": repeats,
        "precision": speed.precision, "teacher_dtype": str(setting(cfg, "teacher.dtype")),
        "optimizer": cfg.train.optimizer, "latent_cache": speed.latent_cache,
        "weights_mb": _tensor_mb([*detector.parameters(), *detector.buffers()]),
        "trainable_mb": _tensor_mb(params),
        "optimizer_state_mb": _tensor_mb(v for s in optimizer.state.values()
                                         for v in s.values()),
        "attention_applies": any(_is_unet(n) for n in nets),
        "checkpointing_applies": any(getattr(n, "_supports_gradient_checkpointing", False)
                                     for n in nets),
    }
    if dev.type == "cuda":
        row["peak_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
        row["reserved_mb"] = torch.cuda.max_memory_reserved(dev) / 2**20
        row["start_mb"] = start_mb
    else:
        row["peak_mb"] = resident_peak_mb()  # read before counting FLOPs
    if count:
        row["flops"] = guided_step_flops(detector, batch, optimizer, dev, cfg.train.grad_clip,
                                         speed, cache)
    del detector, optimizer, cache, params
    _free(dev)
    return row


PRELOAD = ["torch", "ablate.model.build", "ablate.train", "ablate.bench.run"]


def _row_in_child(spec: dict[str, Any]) -> dict[str, Any]:
    """One CPU row, in a process forked for it alone from a server that has imported
    torch, diffusers and ablate: each row pays no imports, and its floor is the same."""
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    # the same "random init" warning from every row process is noise in the report
    logging.getLogger("ablate").setLevel(logging.ERROR)
    # lazy: loads diffusers and timm only when called
    import ablate.model.build  # noqa: F401  (already there when the preload worked)
    import ablate.train  # noqa: F401
    floor = resident_peak_mb()
    try:
        row = measure_row(spec["overrides"], spec["device"], spec["warmup"], spec["repeats"],
                          spec["count"])
    except AblateError as err:
        return {"na": f"n/a: {err}"}
    return {**row, "floor_mb": floor}


def row_processes(jobs: int) -> ProcessPoolExecutor:
    """`jobs` row processes at a time, each used for one row only (a fresh peak per row),
    forked from a forkserver that preloaded the heavy imports (bitsandbytes too if it is
    installed: every row's floor then holds it, not only the 8-bit row's)."""
    preload = PRELOAD + (["bitsandbytes"] if importlib.util.find_spec("bitsandbytes") else [])
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(preload)
    return ProcessPoolExecutor(max_workers=jobs, mp_context=context, max_tasks_per_child=1)


def _in_child(pool: ProcessPoolExecutor, overrides: list[str], device: str, warmup: int,
              repeats: int, count: bool, threads: int | None) -> dict[str, Any]:
    """One row in its own process: its peak resident memory is its own."""
    spec = {"overrides": overrides, "device": device, "warmup": warmup, "repeats": repeats,
            "count": count, "threads": threads}
    try:
        return pool.submit(_row_in_child, spec).result()
    except BrokenProcessPool as err:
        return {"error": f"row process died: {err}"}


def _in_process(overrides: list[str], device: str, warmup: int, repeats: int,
                count: bool) -> dict[str, Any]:
    """One CUDA row here."""
    return row_or_oom(lambda: measure_row(overrides, device, warmup, repeats, count), device)


def row_or_oom(measure: Callable[[], dict[str, Any]], device: str) -> dict[str, Any]:
    """`measure()`, one CUDA row in this process: out of memory is a result (the row does not
    fit) and an AblateError an n/a row (the recipe cannot take it), never a crash."""
    try:
        return measure()
    except torch.cuda.OutOfMemoryError:
        pass  # freed below, once the traceback (which holds the row's tensors) is gone
    except AblateError as err:
        return {"na": f"n/a: {err}"}
    gc.collect()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(torch.device(device)).total_memory / 2**30
    return {"error": f"out of memory (does not fit in {total:.0f} GB)"}


# ----------------------------------------------------------------- the matrix


def memory_matrix(overrides: list[str] | tuple[str, ...] = (), device: str = "auto",
                  warmup: int = 1, repeats: int = 3, threads: int | None = None,
                  jobs: int = 1, peak_tflops: float | None = None) -> dict[str, Any]:
    """Every lever's row, the all-levers row, MFU per row and the 16 GB goal (CUDA)."""
    # lazy: loads diffusers and safetensors only when called
    from ablate.bench.run import machine

    recipe = list(overrides)
    cfg = compose(row_overrides(recipe, ()))
    if not is_guided(cfg):
        raise AblateError("--memory-matrix measures the guided step; give a guided recipe, "
                          "not guide=none")
    dev = pick_device(device if device != "auto" else cfg.train.device)
    if threads:
        torch.set_num_threads(threads)
    before = machine(dev)

    pool = row_processes(jobs) if dev.type == "cpu" else None
    jobs = jobs if pool is not None else 1  # CUDA rows run one after the other, here

    def run(extra: tuple[str, ...], count: bool = False) -> dict[str, Any]:
        o = row_overrides(recipe, extra)
        if pool is None:
            return _in_process(o, str(dev), warmup, repeats, count)
        return _in_child(pool, o, str(dev), warmup, repeats, count, threads)

    try:
        plain = run((), count=True)
        rows = lever_rows(plain, recipe, dev, run, jobs)
    finally:
        if pool is not None:
            pool.shutdown()
    add_comparisons(rows, dev, peak_tflops)
    return {
        "overrides": recipe, "recipe_hash": recipe_hash(cfg), "device": str(dev),
        "image_size": cfg.image_size, "batch_size": cfg.train.batch_size,
        "teacher": cfg.teacher.name, "backbone": cfg.backbone.name,
        "warmup": warmup, "repeats": repeats, "plain": list(PLAIN),
        "peak_kind": ("cuda max_memory_allocated (reserved beside it)" if dev.type == "cuda"
                      else "whole process peak resident memory (VmHWM), own process per row"),
        "jobs": jobs,
        "machine": {"start": before, "end_load_avg": machine(dev)["load_avg"]},
        "rows": rows, "goal": memory_goal(rows, dev),
        "mfu_peak": peak_for(dev, "bf16", peak_tflops).source,
        "flops_per_step": plain.get("flops"),
    }


def lever_rows(plain: dict[str, Any], recipe: list[str], device: torch.device,
               run: Callable[[tuple[str, ...]], dict[str, Any]],
               jobs: int) -> dict[str, dict[str, Any]]:
    """The plain row, each applicable lever's row (`jobs` at once), the rest with their
    reason, and all applicable levers together. The plain row tells whether attention
    and checkpointing have anything to act on (UNets; checkpointing-capable nets)."""
    skipped = {lever.name: not_applicable(lever, recipe, device) for lever in LEVERS[1:]}
    if "error" not in plain and "na" not in plain:
        if not plain["attention_applies"]:
            skipped["sdpa"] = ("n/a: no UNet in teacher or guide (transformers keep their "
                               "own SDPA attention)")
        if not plain["checkpointing_applies"]:
            skipped["grad_checkpointing"] = "n/a: teacher and guide cannot checkpoint"
    todo = [lever for lever in LEVERS[1:] if not skipped[lever.name]]
    applied = tuple(o for lever in todo for o in lever.overrides)
    with ThreadPoolExecutor(max_workers=jobs) as threads:
        found = list(threads.map(run, [lever.overrides for lever in todo] + [applied]))
    rows = {"plain": {"label": LEVERS[0].label, **plain}}
    for lever in LEVERS[1:]:
        rows[lever.name] = ({"label": lever.label, "na": skipped[lever.name]}
                            if skipped[lever.name] else {"label": lever.label, **found.pop(0)})
    left_out = [name for name, why in skipped.items() if why]
    rows[ALL] = {"label": "all levers" + (f" (without {', '.join(left_out)})" if left_out
                                          else ""), **found.pop(0)}
    return rows


def add_comparisons(rows: dict[str, dict[str, Any]], device: torch.device,
                    peak_tflops: float | None) -> None:
    """Each measured row's peak against the plain row's, and its MFU: the plain row's
    (model) FLOPs over the row's step time, against the peak of the row's precision."""
    plain = rows["plain"]
    for row in rows.values():
        if "peak_mb" not in row:
            continue
        if "floor_mb" in row:  # CPU: what the row added to the interpreter and libraries
            row["above_floor_mb"] = row["peak_mb"] - row["floor_mb"]
        if "peak_mb" in plain:
            row["vs_plain"] = row["peak_mb"] / plain["peak_mb"]
            if "above_floor_mb" in row and plain.get("above_floor_mb", 0) > 0:
                row["vs_plain_above_floor"] = row["above_floor_mb"] / plain["above_floor_mb"]
        peak = peak_for(device, row["precision"], peak_tflops)
        row["mfu"] = utilisation(plain.get("flops"), row["step_s"], peak)


def memory_goal(rows: dict[str, dict[str, Any]], device: torch.device) -> dict[str, Any]:
    """The all-levers row within 16 GB (reserved peak), judged on CUDA only."""
    row = rows[ALL]
    if device.type != "cuda":
        return {"target_gb": MEMORY_GOAL_GB, "met": None,
                "pending": "needs a GPU: ablate bench --memory-matrix recipe=official_code "
                           "teacher.random_init=true backbone.random_init=true --device cuda"}
    if "reserved_mb" not in row:
        return {"target_gb": MEMORY_GOAL_GB, "met": False,
                "why": row.get("error") or row.get("na")}
    return {"target_gb": MEMORY_GOAL_GB, "allocated_gb": row["peak_mb"] / 1024,
            "reserved_gb": row["reserved_mb"] / 1024,
            "met": row["reserved_mb"] / 1024 <= MEMORY_GOAL_GB}


def format_matrix(report: dict[str, Any]) -> str:
    """The table `ablate bench --memory-matrix` prints: lever | peak | vs plain | step s."""
    cuda = report["device"].startswith("cuda")
    unit, scale = ("GB", 1024) if cuda else ("MB", 1)
    lines = [
        f"memory matrix  device {report['device']}  teacher {report['teacher']}  backbone "
        f"{report['backbone']}  {report['image_size']} px  batch {report['batch_size']}  "
        f"(median of {report['repeats']} steps after {report['warmup']} warm-up)",
        f"peak: {report['peak_kind']}",
        f"load average at start {report['machine']['start']['load_avg']}, "
        f"end {report['machine']['end_load_avg']}", "",
        f"{'lever':<52} {'peak ' + unit:>9} {'vs plain':>9} "
        + (f"{'reserved GB':>12} {'<=16GB':>7} " if cuda
           else f"{'above floor':>12} {'vs plain':>9} ")
        + f"{'step s':>8} {'opt MB':>8} {'MFU':>7}",
    ]
    nan = float("nan")
    for row in report["rows"].values():
        if "peak_mb" not in row:
            lines.append(f"{row['label']:<52} {row.get('na') or row.get('error')}")
            continue
        mfu = row["mfu"]["mfu"]
        extra = (f"{row['reserved_mb'] / 1024:>12.2f} "
                 f"{'yes' if row['reserved_mb'] / 1024 <= MEMORY_GOAL_GB else 'no':>7} "
                 if cuda else f"{row['above_floor_mb']:>12.0f} "
                 f"{row.get('vs_plain_above_floor', nan):>9.2f} ")
        lines.append(f"{row['label']:<52} {row['peak_mb'] / scale:>9.2f} "
                     f"{row.get('vs_plain', nan):>9.2f} {extra}{row['step_s']:>8.4f} "
                     f"{row['optimizer_state_mb']:>8.1f} "
                     f"{f'{mfu:.1%}' if mfu is not None else 'n/a':>7}")
    if not cuda:
        lines.append(f"(floor: the row process's peak after imports, before building; "
                     f"{report['rows']['plain'].get('floor_mb', nan):.0f} MB for plain)")
    flops = report["flops_per_step"]
    lines.append("")
    if flops:
        lines.append(f"model FLOPs per guided step (forward + backward, plain row): "
                     f"{flops / 1e9:.2f} G; MFU peak (bf16 rows): {report['mfu_peak']}")
    goal = report["goal"]
    if goal["met"] is None:
        lines.append(f"goal <= {goal['target_gb']:g} GB: pending ({goal['pending']})")
    elif "reserved_gb" in goal:
        lines.append(f"goal all levers <= {goal['target_gb']:g} GB (reserved): "
                     f"{goal['reserved_gb']:.2f} GB reserved, {goal['allocated_gb']:.2f} GB "
                     f"allocated -> {'met' if goal['met'] else 'NOT met'}")
    else:
        lines.append(f"goal <= {goal['target_gb']:g} GB: NOT met ({goal['why']})")
    return "\n".join(lines)

