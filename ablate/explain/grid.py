"""The paper's picture: per frame, the input, the teacher's rebuilt source and target, and
the true source and target where the manifest has them, with W_s, W_t and the gap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor

from ablate.core.files import write_atomic
from ablate.explain.frames import Frames
from ablate.explain.reconstruct import Reconstructions

COLUMNS = ("input", "rebuilt source", "rebuilt target", "true source", "true target")


def _show(image: Tensor | None) -> np.ndarray:
    """[3, S, S] in [-1, 1] -> [S, S, 3] in [0, 1]; None -> a grey tile."""
    if image is None:
        return np.full((8, 8, 3), 0.85)
    return ((image.float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()


def write_grid(frames: Frames, rec: Reconstructions, out: Path, title: str,
               probs: np.ndarray) -> Path:
    """One PNG: a row per frame, COLUMNS across (the true faces only when any is known)."""
    # lazy: matplotlib only when a picture is drawn
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    truths = any(s is not None for s in frames.sources + frames.targets)
    columns = COLUMNS if truths else COLUMNS[:3]
    n = len(frames.paths)
    fig, axes = plt.subplots(n, len(columns), figsize=(1.9 * len(columns), 2.0 * n + 0.6),
                             squeeze=False)
    for i in range(n):
        tiles = [frames.images[i], rec.source[i], rec.target[i], frames.sources[i],
                 frames.targets[i]][: len(columns)]
        for j, tile in enumerate(tiles):
            ax = axes[i, j]
            ax.imshow(_show(tile), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(columns[j], fontsize=9)
        label = "" if frames.labels is None else ("fake " if frames.labels[i] else "real ")
        axes[i, 0].set_ylabel(f"{label}p={probs[i]:.2f}", fontsize=8)
        axes[i, 1].set_xlabel(f"W_s={float(rec.weight_source[i]):.2f}", fontsize=8)
        axes[i, 2].set_xlabel(f"W_t={float(rec.weight_target[i]):.2f}  "
                              f"gap={float(rec.pixel_gap[i]):.2g}", fontsize=8)
    height = 2.0 * n + 0.6
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / height))  # room for the title above row 1
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    write_atomic(out, buffer.getvalue())
    return out
