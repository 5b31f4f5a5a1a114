"""`ablate explain`: grids of the teacher's reconstructions, and the paper's claim ("the
rebuilt source and target of a fake differ, of a real they do not") as a number.

Per run and test set, the disagreement AUC is the frame AUC of the reconstruction gap as a
fake score, beside the classifier's AUC on the same frames. Several runs of one recipe
(training seeds) give an interval per set: the mean over runs with a Student t interval on
runs - 1 degrees of freedom; the frames are fixed by --seed and the sampling seeds are
averaged inside each run, so the run is the unit of replication (the same procedure as
`ablate report`'s seed intervals, whose coverage tests/test_stats.py simulates).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ablate.core.errors import AblateError
from ablate.device import pick_device
from ablate.explain.frames import Frames, image_frames, test_frames
from ablate.explain.grid import write_grid
from ablate.explain.reconstruct import GuidedRun, Reconstructions, load_guided_run, reconstruct
from ablate.metrics import auc
from ablate.report.stats import t_interval

GAPS = ("latent_gap", "pixel_gap")
PROCEDURE = ("mean over training runs, Student t 95% interval on runs - 1 df; frames fixed "
             "by --seed, sampling seeds averaged within each run")


@dataclass
class Settings:
    """How the reconstructions are drawn (stored beside the numbers in frames.csv)."""

    steps: int = 20
    strength: float | None = None  # None: from noise; else SDEdit from the frame's latent
    samples: int = 1  # sampling seeds per frame (the gap is their mean)
    n: int = 16  # frames per test set (balanced real / fake)
    seed: int = 0  # which frames are picked; sampling seeds are seed, seed + 1, ...
    batch_size: int = 8


@dataclass
class ExplainResult:
    out: Path
    frames: pd.DataFrame  # one row per run, set and frame
    summary: pd.DataFrame  # one row per run and set: AUCs
    intervals: pd.DataFrame  # one row per set and score (with two or more runs)
    grids: list[Path]


def _batches(frames: Frames, run: GuidedRun, settings: Settings, desc: str,
             progress: bool) -> Reconstructions:
    """Reconstruct every frame, batch by batch, and join the batches."""
    seeds = [settings.seed + k for k in range(settings.samples)]
    parts = []
    starts = range(0, len(frames.paths), settings.batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", disable=not progress, leave=False):
        images = frames.images[start: start + settings.batch_size]
        parts.append(reconstruct(run, images, seeds, settings.steps, settings.strength))
    return Reconstructions(*(torch.cat([getattr(p, f) for p in parts]) for f in (
        "source", "target", "weight_source", "weight_target", "latent_gap", "pixel_gap",
        "logits")))


def explain(runs: list[str], tests: list[str] | None = None, images: list[str] | None = None,
            out: str | Path = "explain", settings: Settings | None = None,
            device: str = "auto", progress: bool = True) -> ExplainResult:
    """Grids and disagreement scores for every run on `tests` (default: the source test
    split and the recipe's cross-dataset test sets) or on user `images`."""
    settings = settings or Settings()
    if settings.samples < 1:
        raise AblateError(f"--samples must be at least 1, got {settings.samples}")
    dev = pick_device(device)
    loaded = [load_guided_run(r, dev) for r in runs]  # every run checked before any work
    names = [r.folder.name for r in loaded]
    if len(set(names)) < len(names):
        raise AblateError("two runs share a folder name; give distinct runs")
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    rows, grids = [], []
    for run in loaded:
        sets = ([image_frames(images, int(run.cfg.image_size))] if images else
                [test_frames(run.cfg, name, settings.n, settings.seed)
                 for name in tests or [run.cfg.data.train, *run.cfg.data.tests]])
        for frames in sets:
            rec = _batches(frames, run, settings, f"explain {run.folder.name} {frames.name}",
                           progress)
            probs = torch.sigmoid(rec.logits).numpy()
            where = out / run.folder.name if len(loaded) > 1 else out
            where.mkdir(parents=True, exist_ok=True)
            title = (f"{run.folder.name} on {frames.name}: {settings.steps} steps, "
                     + ("from noise" if settings.strength is None
                        else f"SDEdit strength {settings.strength:g}"))
            grids.append(write_grid(frames, rec, where / f"{frames.name}.png", title, probs))
            rows.append(pd.DataFrame({
                "run": run.folder.name, "set": frames.name, "path": frames.paths,
                "label": frames.labels if frames.labels is not None else np.nan,
                "score": probs, "w_source": rec.weight_source.numpy(),
                "w_target": rec.weight_target.numpy(), "latent_gap": rec.latent_gap.numpy(),
                "pixel_gap": rec.pixel_gap.numpy(), "steps": settings.steps,
                "strength": settings.strength, "samples": settings.samples,
            }))
    table = pd.concat(rows, ignore_index=True)
    table.to_csv(out / "frames.csv", index=False)
    summary = summarise(table)
    summary.to_csv(out / "disagreement.csv", index=False)
    intervals = over_runs(summary)
    if not intervals.empty:
        intervals.to_csv(out / "intervals.csv", index=False)
    return ExplainResult(out, table, summary, intervals, grids)


def summarise(frames: pd.DataFrame) -> pd.DataFrame:
    """Per run and set: frames, and the AUC of the classifier and of each gap (NaN without
    both labels)."""
    out = []
    for (run, name), group in frames.groupby(["run", "set"], sort=False):
        labels = group["label"].to_numpy()
        both = not np.isnan(labels.astype(float)).any() and len(set(labels)) == 2
        row = {"run": run, "set": name, "frames": len(group),
               "fakes": int(np.nansum(labels.astype(float)))}
        for column in ("score", *GAPS):
            key = "classifier_auc" if column == "score" else f"{column}_auc"
            row[key] = auc(labels.astype(int), group[column].to_numpy()) if both else np.nan
        out.append(row)
    return pd.DataFrame(out)


def over_runs(summary: pd.DataFrame) -> pd.DataFrame:
    """Per set and score, the interval over runs (two or more runs), procedure beside it."""
    if summary["run"].nunique() < 2:
        return pd.DataFrame()
    out = []
    for name, group in summary.groupby("set", sort=False):
        for key in ("classifier_auc", *(f"{g}_auc" for g in GAPS)):
            mean, low, high, n = t_interval(group[key].to_numpy())
            out.append({"set": name, "score": key, "mean": mean, "ci_low": low,
                        "ci_high": high, "runs": n, "procedure": PROCEDURE})
    return pd.DataFrame(out)
