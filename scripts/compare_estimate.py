"""Estimate vs measured GPU memory, per memory lever: what `scripts/bench_gpu.sh` leaves in
OUT_DIR (`estimate-<teacher>.json` from `ablate bench --estimate-memory`, fake tensors on
the CPU; `matrix-<teacher>.json` from `ablate bench --memory-matrix --device cuda`, real
steps) side by side, as the Markdown table BENCHMARKS.md takes.

The estimate's `peak` is the largest tracked phase of training (steady step, first-epoch
encode, validation) and should be compared with `torch.cuda.max_memory_allocated`; its
`needs` (peak + the stated margin) with `max_memory_reserved` + the CUDA context.

    .venv/bin/python scripts/compare_estimate.py results/bench-gpu
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

GIB = 2**30


def rows(out: Path, teacher: str) -> list[str]:
    estimate = json.loads((out / f"estimate-{teacher}.json").read_text())["rows"]
    measured = json.loads((out / f"matrix-{teacher}.json").read_text())["rows"]
    lines = []
    for name, est in estimate.items():
        real = measured.get(name, {})
        if "na" in est or "peak_mb" not in real:
            why = est.get("na") or real.get("na") or real.get("error") or "not measured"
            lines.append(f"| {teacher} | {name} | {why} | | | | |")
            continue
        peak = est["train"]["peak"] / GIB
        allocated = real["peak_mb"] / 1024
        reserved = real.get("reserved_mb", float("nan")) / 1024  # CUDA only
        lines.append(f"| {teacher} | {name} | {peak:.2f} | {allocated:.2f} | "
                     f"{peak / allocated:.3f} | {est['needs_gb']:.2f} | {reserved:.2f} |")
    return lines


def main(out: Path) -> None:
    print("| teacher | lever | estimated peak GB | allocated GB | estimate / allocated "
          "| estimated needs GB | reserved GB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for teacher in ("sd15", "sdxl", "sd3"):
        if (out / f"estimate-{teacher}.json").exists():
            print("\n".join(rows(out, teacher)))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results/bench-gpu"))
