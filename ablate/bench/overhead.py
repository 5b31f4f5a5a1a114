"""What a sweep spends outside trial compute (Ray start-up, scheduling, DB writes...).

Measured from the sweep's own records, nothing added to the sweep code:

    W        the sweep's wall time (`ablate sweep` prints it: "done in Ns"; or `time` it)
    T_i      trial i's compute: Tune's `time_total_s` at its last report (the worker's
             compose + build + train + evaluate; pruned trials up to their last report),
             from results/ray/<sweep>/<trial>/result.json; trial i ran over
             [last timestamp - T_i, last timestamp] (timestamps have 1 s resolution)
    k        trials at once (the sweep's concurrency; default: the most seen at once)

    slot overhead  = (W - sum(T_i) / k) / W   share of the k trial slots left idle
    idle overhead  = (W - |union of trial intervals|) / W   time with no trial running

The slot figure is the stricter one (it also counts a slot waiting at the end while
the other still runs); the goal is slot overhead < 10%.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ablate.core.errors import AblateError
from ablate.core.paths import RAY_DIR


@dataclass(frozen=True)
class Overhead:
    sweep: str
    wall_s: float
    trials: int
    trial_compute_s: float  # sum of T_i
    concurrency: int
    busy_s: float  # length of the union of trial intervals
    slot_overhead: float
    idle_overhead: float

    def as_dict(self) -> dict:
        return asdict(self)


def trial_intervals(sweep: str, ray_dir: Path = RAY_DIR) -> list[tuple[float, float]]:
    """(start, end) in epoch seconds per trial of a sweep, from Tune's result files."""
    folder = ray_dir / sweep
    if not folder.is_dir():
        raise AblateError(f"no Ray results for sweep {sweep} under {folder}; run the sweep "
                          "from this folder or pass the matching --ray-dir")
    out = []
    for file in sorted(folder.glob("*/result.json")):
        lines = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
        if lines:
            last = lines[-1]
            out.append((last["timestamp"] - last["time_total_s"], float(last["timestamp"])))
    if not out:
        raise AblateError(f"sweep {sweep} has no trial results under {folder}")
    return out


def _union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def _most_at_once(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    best = running = 0
    for _, delta in events:
        running += delta
        best = max(best, running)
    return best


def sweep_overhead(sweep: str, wall_s: float, concurrency: int | None = None,
                   ray_dir: Path = RAY_DIR) -> Overhead:
    """The two overhead shares of one finished sweep (see the module doc)."""
    intervals = trial_intervals(sweep, ray_dir)
    k = concurrency or _most_at_once(intervals)
    compute = sum(b - a for a, b in intervals)
    busy = _union(intervals)
    return Overhead(sweep, wall_s, len(intervals), compute, k, busy,
                    slot_overhead=(wall_s - compute / k) / wall_s,
                    idle_overhead=(wall_s - busy) / wall_s)
