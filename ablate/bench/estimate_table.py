"""The rows of `ablate bench --estimate-memory`: the memory-matrix levers (levers.py), each
estimated on fake tensors (estimate.py), and the table the command prints.

Rows as `--memory-matrix` measures them: the plain configuration, each lever alone on top of
it, and every lever that applies together. A lever with nothing to act on in this recipe is
a row that says why (`n/a: ...`), never a copy of the plain row. Rows of one architecture
share one fake detector and optimiser (a lever only reconfigures them); `teacher.dtype`
builds another.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from ablate.bench.estimate import (
    GB,
    MARGIN_TERMS,
    Breakdown,
    Built,
    architecture_key,
    architecture_only,
    build,
    evaluation,
    gpu_speed,
    margin_bytes,
    measure,
    summarise,
    with_batch,
)
from ablate.bench.levers import ALL, LEVERS, Lever, row_overrides
from ablate.core.errors import AblateError
from ablate.core.schema import setting
from ablate.model.speed import _is_unet
from ablate.recipe import compose, is_guided

Progress = Callable[[str], None]


def estimate_matrix(overrides: list[str] | tuple[str, ...] = (), batch: int | None = None,
                    eval_batch: int = 64, device_gb: float | None = None,
                    progress: Progress | None = None) -> dict[str, Any]:
    """Every lever's row, the all-levers row and the eval peak, as a JSON-able dict."""
    if device_gb is not None and not device_gb > 0:
        raise AblateError(f"--device-memory must be the card's memory in GB (> 0), not "
                          f"{device_gb:g}; e.g. --device-memory 24")
    say = progress or (lambda _: None)
    start = time.perf_counter()
    recipe = architecture_only(with_batch(list(overrides), batch))
    cfg = compose(row_overrides(recipe, ()))
    built: dict[str, Built] = {}

    def detector_for(row_cfg: DictConfig) -> Built:
        key = architecture_key(row_cfg)
        if key not in built:
            say(f"building the detector on fake tensors (teacher {row_cfg.teacher.name}, "
                f"teacher.dtype {setting(row_cfg, 'teacher.dtype')}) ...")
            built[key] = build(row_cfg)
        return built[key]

    plain = detector_for(cfg)
    eval_ = evaluation(plain, eval_batch)
    skipped = {lever.name: why_not(lever, plain, cfg) for lever in LEVERS[1:]}
    todo = [lever for lever in LEVERS[1:] if not skipped[lever.name]]
    left_out = [name for name, why in skipped.items() if why]
    everything = Lever(ALL, "all levers" + (f" (without {', '.join(left_out)})" if left_out
                                            else ""),
                       tuple(o for lever in todo for o in lever.overrides))
    rows: dict[str, dict[str, Any]] = {}
    runs = [LEVERS[0], *todo, everything]
    for lever in [*LEVERS, everything]:
        if lever.name in skipped and skipped[lever.name]:
            rows[lever.name] = {"label": lever.label, "na": skipped[lever.name]}
            continue
        say(f"row {runs.index(lever) + 1}/{len(runs)} {lever.name} "
            f"({time.perf_counter() - start:.0f} s)")
        row_cfg = compose(row_overrides(recipe, lever.overrides))
        speed = gpu_speed(row_cfg.train)
        found = summarise(measure(detector_for(row_cfg), row_cfg, speed), eval_,
                          plain.trainable_params)
        rows[lever.name] = {
            "label": lever.label, "precision": speed.precision,
            "optimizer": row_cfg.train.optimizer,
            "teacher_dtype": str(setting(row_cfg, "teacher.dtype")) if is_guided(row_cfg)
            else None, **found.as_dict(),
            "fits": None if device_gb is None else found.needs_gb <= device_gb,
        }
    return {
        "overrides": list(overrides), "teacher": cfg.teacher.name if is_guided(cfg) else None,
        "backbone": cfg.backbone.name, "image_size": cfg.image_size,
        "batch": cfg.train.batch_size, "eval_batch": eval_batch,
        "trainable_params": plain.trainable_params, "device_memory_gb": device_gb,
        "plain": list(row_overrides([], ())), "rows": rows,
        "eval": {**eval_.as_dict(), "needs_gb": (eval_.peak + margin_bytes(eval_.peak)) / GB},
        "margin": MARGIN_TERMS, "architecture_only": True,
        "seconds": time.perf_counter() - start,
    }


def why_not(lever: Lever, plain: Built, cfg: DictConfig) -> str | None:
    """Why `lever` has nothing to act on in this recipe (one line), or None if it has."""
    guided = plain.detector.guided
    if lever.name == "adamw8bit" and importlib.util.find_spec("bitsandbytes") is None:
        return "n/a: bitsandbytes is not installed (pip install 'ablate[8bit]')"
    if lever.name in ("branch_backward", "teacher_bf16", "sdpa", "grad_checkpointing") \
            and not guided:
        return "n/a: guide=none has no teacher or guide"
    if lever.name == "sdpa" and not any(_is_unet(n) for n in plain.nets):
        return "n/a: no UNet in teacher or guide (transformers keep their own SDPA attention)"
    if lever.name == "grad_checkpointing" and not any(
            getattr(n, "_supports_gradient_checkpointing", False) for n in plain.nets):
        return "n/a: teacher and guide cannot checkpoint"
    return None


def levers_that_fit(overrides: list[str], device_gb: float,
                    batch: int | None = None) -> list[str]:
    """The rows (lever names, `all` included) whose `needs` fit in `device_gb`, cheapest
    first."""
    rows = estimate_matrix(overrides, batch, device_gb=device_gb)["rows"]
    fitting = [(row["needs_gb"], name) for name, row in rows.items() if row.get("fits")]
    return [name for _, name in sorted(fitting)]


# ----------------------------------------------------------------- the table


def format_estimate(report: dict[str, Any]) -> str:
    """The table `ablate bench --estimate-memory` prints: one row per lever, in GB (MB for a
    recipe whose rows all need under 2 GB)."""
    limit = report["device_memory_gb"]
    rows = report["rows"].values()
    small = all(row.get("needs_gb", 0) < 2 for row in rows)
    unit, scale = ("MB", 2**20) if small else ("GB", GB)

    def size(n: float) -> str:
        return f"{n / scale:.0f}" if small else f"{n / scale:.1f}"

    lines = [
        f"memory estimate  teacher {report['teacher']}  backbone {report['backbone']}  "
        f"{report['image_size']} px  batch {report['batch']}  trainable parameters "
        f"{report['trainable_params'] / 1e6:.1f} M  ({report['seconds']:.0f} s)",
        f"{unit} (2^{20 if small else 30} bytes) at each row's training peak, 'at' the "
        "steady step, the first epoch's VAE encode or validation; auto settings as on a bf16 GPU",
        "", f"{'lever':<54} {'at':<10} {'weights':>7} {'grads':>6} {'optim':>6} {'activ':>6} "
            f"{'temps':>6} {'inputs':>6} {'peak':>6} {'needs':>6}"
            + (f"  fits {limit:g} GB?" if limit else ""),
    ]
    for row in rows:
        if "na" in row:
            lines.append(f"{row['label']:<54} {row['na']}")
            continue
        t = Breakdown(**row["train"])
        fits = ("  fits" if row["fits"] else "  does not fit") if limit else ""
        lines.append(f"{row['label']:<54} {row['phase']:<10} {size(t.weights):>7} "
                     f"{size(t.grads):>6} {size(t.optimizer):>6} {size(t.activations):>6} "
                     f"{size(t.temporaries):>6} {size(t.inputs):>6} {size(t.peak):>6} "
                     f"{size(row['needs_gb'] * GB):>6}{fits}")
    e = report["eval"]
    lines += ["", f"eval (`ablate eval`: fp32 classifier, batch {report['eval_batch']}): weights "
                  f"{size(e['weights'])}, activations {size(e['activations'])}, peak "
                  f"{size(e['peak'])}, needs {size(e['needs_gb'] * GB)} {unit}",
              f"needs = peak + margin: {report['margin']}; architecture only: no weights "
              "were read"]
    return "\n".join(lines)
