"""Does evaluation memory stay flat as the test set grows?

Evaluates one small classifier (`backbone=tiny`, random init) with `ablate.evaluate.
evaluate_classifier`, the path `ablate eval` and every sweep trial take, on a synthetic test
manifest of N frames and on one of FACTOR x N frames (distinct files: no frame is a cache hit
of another), each in a fresh process. Each process reports its peak resident memory (VmHWM
from /proc/self/status: its own, not inherited through exec) after evaluating, and its
resident memory just before (imports, the classifier and the manifest read). If scores are
streamed and frames never all held, the two peaks are the same within noise; if they are
not, the growth per added frame says what is held (a decoded frame at S px is S*S*3 bytes,
192 KiB at 256 px). A second fresh process per size builds the test set alone
(`ablate.evaluate.test_rows`, before any scoring) and reports what that holds.

    .venv/bin/python scripts/bench_eval_memory.py                  # 200 and 2000 frames, 256 px
    .venv/bin/python scripts/bench_eval_memory.py --frames 100 --factor 10 --n-boot 1000

Everything it writes (frames, manifest, ABLATE_CACHE) goes to a temporary folder, removed at
the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FRAMES_PER_VIDEO = 10


def vm_kib(field: str) -> int:
    """A /proc/self/status memory field (VmHWM: peak resident, VmRSS: resident now), KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def write_frames(folder: Path, n: int, size: int) -> Path:
    """n distinct face-like PNG frames (a few KB each on disk) and their test manifest."""
    import numpy as np
    import pandas as pd
    from PIL import Image, ImageDraw

    rows = []
    for i in range(n):
        video, label = i // FRAMES_PER_VIDEO, (i // FRAMES_PER_VIDEO) % 2
        rng = np.random.default_rng(i)
        image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 90, 3)))
        draw = ImageDraw.Draw(image)
        c, r = size // 2 + int(rng.integers(-8, 9)), size * 3 // 8
        draw.ellipse([c - r, c - r * 5 // 4, c + r, c + r * 5 // 4],
                     fill=tuple(int(v) for v in rng.integers(110, 240, 3)))
        for side in (-1, 1):  # eyes, shifted a little for fakes
            ex, ey = c + side * r // 2, c - r // 4 + 3 * label
            draw.ellipse([ex - 8, ey - 5, ex + 8, ey + 5], fill=(30, 30, 30))
        path = folder / f"v{video:05d}" / f"{i % FRAMES_PER_VIDEO:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        rows.append({"path": str(path), "label": label, "video_id": f"v{video:05d}",
                     "dataset": "bench", "split": "test", "method": "fake" if label else "real",
                     "frame": i % FRAMES_PER_VIDEO, "source_path": None, "target_path": None})
    manifest = folder / f"test-{n}.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def child_rows(manifest: str, size: int, threads: int) -> dict:
    """What building the test set alone holds (`ablate.evaluate.test_rows`, the step before
    any frame is scored), in this (fresh) process: the attribution of a growth."""
    import torch

    from ablate.data.loader import eval_frame_cache
    from ablate.evaluate import test_rows
    from ablate.recipe import compose

    torch.set_num_threads(threads)
    cache = eval_frame_cache(compose([f"image_size={size}"]))  # the cache evaluation uses
    before = vm_kib("VmRSS")
    dataset = test_rows(manifest, size, cache)
    return {"frames": len(dataset), "rows_mb": (vm_kib("VmHWM") - before) / 1024}


def child(manifest: str, size: int, n_boot: int, threads: int) -> dict:
    """One measurement, in this (fresh) process."""
    import torch

    from ablate.evaluate import evaluate_classifier
    from ablate.model.build import build_classifier
    from ablate.recipe import compose

    torch.set_num_threads(threads)
    cfg = compose(["backbone=tiny", f"image_size={size}"])
    classifier = build_classifier(cfg).eval()
    import pandas as pd

    frames = len(pd.read_csv(manifest))
    before_rss, before_hwm = vm_kib("VmRSS"), vm_kib("VmHWM")
    start = time.perf_counter()
    metrics = evaluate_classifier(classifier, cfg, [manifest], threshold=0.5, n_boot=n_boot,
                                  progress=False)
    wall = time.perf_counter() - start
    frame_rows = metrics[(metrics["level"] == "frame") & (metrics["metric"] == "auc")]
    assert int(frame_rows["n"].iloc[0]) == frames, "not every frame was scored"
    return {"frames": frames, "rss_before_mb": before_rss / 1024,
            "hwm_before_mb": before_hwm / 1024, "peak_mb": vm_kib("VmHWM") / 1024,
            "eval_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=200, help="frames of the 1x test set")
    parser.add_argument("--factor", type=int, default=10, help="the larger set: FACTOR x frames")
    parser.add_argument("--size", type=int, default=256, help="image size (px)")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (CLI default)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--child", nargs=1, metavar="MANIFEST", help=argparse.SUPPRESS)
    parser.add_argument("--child-rows", nargs=1, metavar="MANIFEST", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.size, args.n_boot, args.threads)))
        return
    if args.child_rows:
        print(json.dumps(child_rows(args.child_rows[0], args.size, args.threads)))
        return

    with tempfile.TemporaryDirectory(prefix="bench-eval-memory-") as tmp:
        folder = Path(tmp)
        big = args.frames * args.factor
        manifest_big = write_frames(folder / "frames", big, args.size)
        import pandas as pd

        small = pd.read_csv(manifest_big).iloc[: args.frames]  # a subset: same kind of frames
        manifest_small = folder / f"test-{args.frames}.csv"
        small.to_csv(manifest_small, index=False)
        env = {**os.environ, "ABLATE_CACHE": str(folder / "cache")}
        results = []
        for manifest in (manifest_small, manifest_big):
            row = {}
            for mode in ("--child", "--child-rows"):
                proc = subprocess.run(
                    [sys.executable, __file__, mode, str(manifest), "--size", str(args.size),
                     "--n-boot", str(args.n_boot), "--threads", str(args.threads)],
                    cwd=folder, env=env, capture_output=True, text=True, check=False)
                if proc.returncode != 0:
                    sys.exit(f"{mode} failed on {manifest}:\n{proc.stderr[-4000:]}")
                row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
            results.append(row)

    frame_kib = args.size * args.size * 3 / 1024
    print(f"evaluate_classifier, backbone=tiny at {args.size} px, n_boot={args.n_boot}, "
          f"{args.threads} torch thread(s), one fresh process per row")
    print(f"{'frames':>7} {'before eval MB':>15} {'peak MB':>9} {'peak - before MB':>17} "
          f"{'eval s':>7} {'test_rows() alone MB':>21}")
    for r in results:
        print(f"{r['frames']:>7} {r['rss_before_mb']:>15.0f} {r['peak_mb']:>9.0f} "
              f"{r['peak_mb'] - r['rss_before_mb']:>17.0f} {r['eval_s']:>7.1f} "
              f"{r['rows_mb']:>21.0f}")
    (one, many) = results
    grew = (many["peak_mb"] - many["rss_before_mb"]) - (one["peak_mb"] - one["rss_before_mb"])
    per_frame = grew * 1024 / max(many["frames"] - one["frames"], 1)
    print(f"growth of evaluation's peak from {one['frames']} to {many['frames']} frames: "
          f"{grew:+.0f} MB, {per_frame:.0f} KiB per added frame (a decoded frame is "
          f"{frame_kib:.0f} KiB)")
    if per_frame >= 0.5 * frame_kib:
        print("NOT flat: evaluation holds decoded frames")
    elif abs(grew) < max(50.0, 0.1 * (one["peak_mb"] - one["rss_before_mb"])):
        print("flat")
    else:
        print("no decoded frame is held; what grows is per-frame bookkeeping (rows, scores, "
              "bootstrap resamples), not pixels or features")


if __name__ == "__main__":
    main()
