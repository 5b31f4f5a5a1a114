"""`ablate bench`: parsing and printing only; the measurements live in run.py."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable

import click

from ablate.bench.overhead import sweep_overhead
from ablate.core.errors import AblateError

SYNTHETIC = "synthetic-1080p"  # --decode: make a test clip instead of reading one


@click.command("bench")
@click.argument("overrides", nargs=-1)
@click.option("--recipe", "recipe", multiple=True, metavar="KEY=VALUE",
              help="A recipe override (repeatable); same as a positional OVERRIDE.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda")
@click.option("--warmup", default=2, show_default=True, type=click.IntRange(min=0),
              help="Untimed calls of each phase first.")
@click.option("--repeats", default=5, show_default=True, type=click.IntRange(min=1),
              help="Timed calls of each phase; the median is reported.")
@click.option("--eval-batches", default=4, show_default=True, type=click.IntRange(min=1),
              help="Batches per evaluation call.")
@click.option("--eval-batch-size", default=64, show_default=True, type=click.IntRange(min=1),
              help="Images per evaluation batch (as `ablate eval`).")
@click.option("--threads", type=click.IntRange(min=1),
              help="CPU threads for torch (default: its own); 1 is steadier on a busy machine.")
@click.option("--sweep-overhead", "sweep", metavar="SWEEP",
              help="Instead of timing steps: the share of SWEEP's wall time spent outside "
                   "trial compute (needs --wall).")
@click.option("--wall", type=float, metavar="SECONDS",
              help="With --sweep-overhead: the sweep's wall time (`ablate sweep` prints it).")
@click.option("--concurrency", type=click.IntRange(min=1),
              help="With --sweep-overhead: trials at once (default: the most seen at once).")
@click.option("--decode", "decode", metavar="VIDEO",
              help="Instead of timing steps: reading 32 evenly spaced frames of VIDEO, "
                   f"sequentially vs by seeking; '{SYNTHETIC}' makes a 1080p H.264 clip.")
@click.option("--clip-seconds", default=60.0, show_default=True, type=click.FloatRange(min=1),
              help=f"With --decode {SYNTHETIC}: the clip's length (30 fps, keyframe every 250).")
@click.option("--memory-matrix", "matrix", is_flag=True,
              help="Instead of the phases: peak memory and step time of the guided step for "
                   "the plain configuration, each memory lever alone and all together.")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(min=1),
              help="With --memory-matrix or --tuning on a CPU: rows (processes) at once; "
                   "peaks stay per process, step times then share the cores.")
@click.option("--tuning", "tuning", is_flag=True,
              help="Instead of the phases: one train step of the recipe per encoder tuning "
                   "mode (backbone.tuning: full, linear, layernorm, bias, lora, svd); per "
                   "mode its trainable parameters, step and forward time, peak memory, "
                   "gradient and optimiser state sizes. Guided or guide=none alike.")
@click.option("--tuning-modes", "tuning_modes", metavar="MODES",
              help="Only these modes, comma-separated, e.g. linear,layernorm,full (implies "
                   "--tuning).")
@click.option("--data-wait", "wait", is_flag=True,
              help="Instead of the phases: the guided step fed by the real input pipeline; "
                   "time per step blocked waiting for the next batch.")
@click.option("--loader-workers", type=click.IntRange(min=0), metavar="N",
              help="With --data-wait: loader processes to compare with 0 "
                   "(default: the recipe's train.loader_workers).")
@click.option("--estimate-memory", "estimate", is_flag=True,
              help="Instead of the phases: peak GPU memory of the training step (per memory "
                   "lever) and of evaluation, estimated on this CPU from the architecture "
                   "alone (fake tensors: no GPU, no weights read).")
@click.option("--batch", type=click.IntRange(min=1), metavar="N",
              help="With --estimate-memory: the training batch size (default: the recipe's "
                   "train.batch_size).")
@click.option("--device-memory", "device_gb", type=float, metavar="GB",
              help="With --estimate-memory: the card's memory in GB; each row then says "
                   "whether it fits.")
@click.option("--peak-tflops", type=click.FloatRange(min=0, min_open=True),
              help="The device's peak TFLOP/s for MFU (default: the GPU's datasheet entry; "
                   "none on a CPU).")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
def bench(overrides: tuple[str, ...], recipe: tuple[str, ...], device: str, warmup: int,
          repeats: int, eval_batches: int, eval_batch_size: int, threads: int | None,
          sweep: str | None, wall: float | None, concurrency: int | None,
          decode: str | None, clip_seconds: float, matrix: bool, jobs: int, wait: bool,
          loader_workers: int | None, estimate: bool, batch: int | None,
          device_gb: float | None, peak_tflops: float | None, tuning: bool,
          tuning_modes: str | None, as_json: bool) -> None:
    """Time guided training and evaluation of a recipe, side by side in one run.

    \b
    Phases (medians after warm-up): the encoder-only train step; the guided step
    with the recipe's speed settings (warm and cold latent cache); the same step
    done the straightforward way (no cache, branches one after the other, fp32);
    evaluation throughput against the bare timm forward on the same images.
    Reports ratios, peak GPU memory, images per second and the goals met.
    With --sweep-overhead SWEEP --wall S: what a finished sweep spent outside
    trial compute instead (ablate/bench/overhead.py says how it is measured).
    With --decode VIDEO: frame sampling speed of `ablate data prepare` instead.
    With --memory-matrix: peak memory per memory lever (precision, gradient
    checkpointing, branch-by-branch backward, attention kernel, 8-bit AdamW, bf16
    teacher), one row each.
    With --data-wait: the share of each step spent waiting for the data loader.
    With --estimate-memory: the memory levers' rows estimated without a GPU or
    weights (weights, gradients, optimiser state, activations, peak, what must
    fit), and the evaluation peak; --device-memory GB says which rows fit.
    With --tuning: what each encoder tuning mode costs on this recipe. A row
    per mode (the recipe's other settings kept: lora_rank, svd_rank, guidance):
    trainable parameters of encoder + head and of the whole detector, median
    step time and the step's forward alone, peak memory (CUDA: allocated peak;
    CPU: each row in its own process, its peak resident memory), gradients and
    optimiser state (Adam: 8 bytes per trainable parameter). Frozen parameters
    hold no gradient or optimiser state, so memory falls with the trainable
    count; the forward still runs the whole encoder. A mode the encoder cannot
    take (layernorm on a CNN, LoRA/SVD targets it lacks) prints why instead.

    \b
    Examples:
      ablate bench                                   # default CPU recipe
      ablate bench --json --repeats 3 train.batch_size=4
      ablate bench teacher=sd15 teacher.random_init=true backbone=efficientnet_b4 \\
          backbone.random_init=true image_size=256 train.batch_size=16 --device cuda
      ablate bench --decode synthetic-1080p          # seek vs sequential frame reading
      ablate bench --memory-matrix recipe=official_code teacher.random_init=true \\
          backbone.random_init=true --device cuda
      ablate bench --data-wait --loader-workers 2
      ablate bench --estimate-memory recipe=official_code --device-memory 24
      ablate bench --tuning backbone=tiny-clip --repeats 3           # CPU twin, guided
      ablate bench --tuning-modes linear,layernorm,full recipe=gend backbone=tiny-clip
      ablate bench --tuning backbone=clip_l14 backbone.random_init=true image_size=224 \\
          guide=none train.batch_size=32 --device cuda
    """
    modes = [name for name, on in (("--decode", decode), ("--sweep-overhead", sweep),
                                   ("--memory-matrix", matrix), ("--data-wait", wait),
                                   ("--estimate-memory", estimate),
                                   ("--tuning", tuning or tuning_modes)) if on]
    if len(modes) > 1:
        raise AblateError(f"ablate bench: {' and '.join(modes)} are separate runs; give one")
    if loader_workers is not None and not wait:
        raise AblateError("--loader-workers goes with --data-wait")
    for name, given in (("--batch", batch), ("--device-memory", device_gb)):
        if given is not None and not estimate:
            raise AblateError(f"{name} goes with --estimate-memory")
    if tuning or tuning_modes:
        _tuning([*overrides, *recipe], tuning_modes, device, warmup, repeats, threads, jobs,
                as_json)
        return
    if estimate:
        _estimate([*overrides, *recipe], batch, eval_batch_size, device_gb, as_json)
        return
    if matrix:
        _matrix([*overrides, *recipe], device, warmup, repeats, threads, jobs, peak_tflops,
                as_json)
        return
    if wait:
        _data_wait([*overrides, *recipe], device, warmup, repeats, loader_workers, threads,
                   as_json)
        return
    if decode:
        _decode(decode, clip_seconds, repeats, as_json)
        return
    if sweep:
        _sweep_overhead(sweep, wall, concurrency, as_json)
        return
    # lazy: loads torch only when called
    from ablate.bench.run import format_report, run_bench

    report = run_bench([*overrides, *recipe], device, warmup, repeats, eval_batches,
                       eval_batch_size, threads, peak_tflops)
    _echo(report, format_report, as_json)


def _echo(report: dict, text: Callable[[dict], str], as_json: bool) -> None:
    """The report as JSON or as `text(report)`, with the command that made it."""
    report["command"] = "ablate " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    click.echo(json.dumps(report, indent=2) if as_json else text(report))


def _matrix(overrides: list[str], device: str, warmup: int, repeats: int,
            threads: int | None, jobs: int, peak_tflops: float | None, as_json: bool) -> None:
    # lazy: loads torch only when called
    from ablate.bench.levers import format_matrix, memory_matrix

    report = memory_matrix(overrides, device, warmup, repeats, threads, jobs, peak_tflops)
    _echo(report, format_matrix, as_json)


def _tuning(overrides: list[str], modes: str | None, device: str, warmup: int, repeats: int,
            threads: int | None, jobs: int, as_json: bool) -> None:
    # lazy: loads torch only when called
    from ablate.bench.tuning_rows import format_tuning, parse_modes, tuning_matrix

    report = tuning_matrix(overrides, parse_modes(modes), device, warmup, repeats, threads, jobs)
    _echo(report, format_tuning, as_json)


def _estimate(overrides: list[str], batch: int | None, eval_batch: int,
              device_gb: float | None, as_json: bool) -> None:
    if device_gb is not None and not device_gb > 0:  # before torch loads: a typo costs nothing
        raise AblateError(f"--device-memory must be the card's memory in GB (> 0), not "
                          f"{device_gb:g}; e.g. --device-memory 24")
    # lazy: loads torch, diffusers and timm only when called
    from ablate.bench.estimate_table import estimate_matrix, format_estimate

    report = estimate_matrix(overrides, batch, eval_batch, device_gb,
                             progress=lambda line: click.echo(f"estimate: {line}", err=True))
    _echo(report, format_estimate, as_json)


def _data_wait(overrides: list[str], device: str, warmup: int, repeats: int,
               workers: int | None, threads: int | None, as_json: bool) -> None:
    # lazy: loads torch only when called
    from ablate.bench.datawait import data_wait, format_data_wait

    report = data_wait(overrides, device, warmup, repeats, workers, threads)
    _echo(report, format_data_wait, as_json)


def _decode(video: str, seconds: float, repeats: int, as_json: bool) -> None:
    import tempfile
    from pathlib import Path

    # lazy: loads cv2 only when called
    from ablate.bench.decode import bench_decode, format_decode, make_clip

    with tempfile.TemporaryDirectory() as tmp:
        if video == SYNTHETIC:
            click.echo(f"encoding a {seconds:g} s 1080p test clip ...", err=True)
            video = str(make_clip(Path(tmp) / "synthetic-1080p.mp4", seconds=seconds))
        elif not Path(video).is_file():
            raise AblateError(f"--decode: no video at {video}; give a video file or {SYNTHETIC}")
        found = bench_decode(video, repeats=repeats)
    click.echo(json.dumps(found.as_dict(), indent=2) if as_json else format_decode(found))


def _sweep_overhead(sweep: str, wall: float | None, concurrency: int | None,
                    as_json: bool) -> None:
    if not wall:
        raise AblateError("--sweep-overhead needs --wall SECONDS: the sweep's wall time")
    found = sweep_overhead(sweep, wall, concurrency)
    if as_json:
        click.echo(json.dumps(found.as_dict(), indent=2))
        return
    click.echo(f"sweep {sweep}: {found.trials} trials, {found.trial_compute_s:.0f}s of trial "
               f"compute over {found.concurrency} slots in {wall:.0f}s wall")
    click.echo(f"slot overhead {found.slot_overhead:.1%} (goal < 10%), time with no trial "
               f"running {found.idle_overhead:.1%}")
