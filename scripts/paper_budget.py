"""GPU-days of the paper's recipes, predicted on a CPU with no GPU and no weights.

FLOPs of one training step are counted the way `ablate bench` counts them
(`torch.utils.flop_counter.FlopCounterMode`, forward + backward, math attention, no
checkpointing), on the model `ablate bench --estimate-memory` builds: the recipe's
architecture under a `FakeTensorMode` (shapes only, no weights read, no memory taken) and
the very step training runs (`ablate.train.update`), bf16 as `train.precision: auto`
resolves on a GPU. Steps come from the FF++ c23 frame counts in docs/data.md ("FF++ c23
scaled"). GPU-days = steps x FLOPs / (peak x MFU) / 86,400, for datasheet peaks
(ablate/bench/flops.py) and an assumed MFU range: the MFU is a judgement, not a
measurement; measure yours with `ablate bench` on the card you have.

    .venv/bin/python scripts/paper_budget.py                 # both recipes, the table
    .venv/bin/python scripts/paper_budget.py --recipe recipe=paper guide=none

Takes a few minutes of one core (building SD 1.5 and EN-B4 as fake tensors).
"""

from __future__ import annotations

import argparse
import contextlib
from dataclasses import replace

import torch

from ablate.bench.estimate import architecture_only, build, gpu_speed
from ablate.bench.fake_memory import WarmCache, strong_memo
from ablate.bench.flops import PEAKS, count_flops
from ablate.model.speed import configure_detector
from ablate.recipe import compose
from ablate.train import update

# FF++ c23 train rows a pass (docs/data.md, "FF++ c23 scaled") and the recipe's epochs
TRAIN_ROWS = {"paper": 972_000, "official_code": 72_000}
EPOCHS = 20
MFU = (0.3, 0.5)  # assumed model FLOPs utilisation, low and high
CARDS = ("A100", "H100 SXM")


def step_flops(overrides: list[str], latent_cache: bool) -> int:
    """FLOPs of one bf16 training step of the recipe (fake tensors)."""
    cfg = compose(architecture_only(overrides))
    built = build(cfg)
    speed = replace(gpu_speed(cfg.train), attention="math", grad_checkpointing=False,
                    channels_last=False, latent_cache=latent_cache)
    with built.mode or contextlib.nullcontext():
        with strong_memo(built.mode):
            configure_detector(built.detector, speed)
        cache = WarmCache() if latent_cache else None
        return count_flops(lambda: update(built.detector, built.batch, built.optimizer,
                                          torch.device("cpu"), cfg.train.grad_clip, speed,
                                          cache))


def peak(card: str) -> float:
    """Datasheet dense bf16 TFLOP/s of `card` (ablate/bench/flops.py)."""
    return next(p[0] for _, name, p in PEAKS if name == card)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", nargs="+", action="append", metavar="KEY=VALUE",
                        help="a recipe's overrides (repeatable); default: recipe=paper and "
                             "recipe=official_code")
    args = parser.parse_args()
    recipes = args.recipe or [["recipe=paper"], ["recipe=official_code"]]
    for overrides in recipes:
        cfg = compose(overrides)
        name = " ".join(overrides)
        preset = "official_code" if "official_code" in name else "paper"
        steps = EPOCHS * TRAIN_ROWS[preset] // int(cfg.train.batch_size)
        print(f"{name}: batch {cfg.train.batch_size}, {cfg.image_size} px, {steps:,} steps "
              f"({EPOCHS} epochs x {TRAIN_ROWS[preset]:,} FF++ rows / batch)")
        for cached in (True, False):
            flops = step_flops(overrides, cached)
            total = flops * steps
            line = [f"  latent cache {'on ' if cached else 'off'}: {flops / 1e12:.2f} TFLOP a "
                    f"step, {total / 1e18:.1f} EFLOP a run;"]
            for card in CARDS:
                days = [total / (peak(card) * 1e12 * m) / 86_400 for m in reversed(MFU)]
                line.append(f"{card} {days[0]:.1f}-{days[1]:.1f} GPU-days")
            print(" ".join(line) + f" (MFU {MFU[1]:.0%}-{MFU[0]:.0%})", flush=True)


if __name__ == "__main__":
    main()
