"""`ablate explain`: grids of the teacher's reconstructions, and the paper's claim ("the
rebuilt source and target of a fake differ, of a real they do not") as a number.

Per run and test set, the disagreement AUC is the frame AUC of the reconstruction gap as a
fake score, beside the classifier's AUC on the same frames. Several runs of one recipe
(training seeds; runs are grouped by their recipe hash with the seed left out) give an
interval per set: the mean over runs with a Student t interval on runs - 1 degrees of
freedom. The run is the unit of replication; the interval covers run-to-run variation for
these frames only (they are fixed by --seed, the sampling seeds are averaged inside each
run), and its coverage for this statistic has not been simulated.
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
PROCEDURE = ("mean over training runs of one recipe, Student t 95% interval on runs - 1 df; "
             "run-to-run variation only: the frames are fixed by --seed and the sampling "
             "seeds averaged within each run; coverage not simulated for this statistic")


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
    """Reconstruct every frame, batch by batch, and join the batches (a frame's noise
    depends on its place in the set, never on the batch size)."""
    seeds = [settings.seed + k for k in range(settings.samples)]
    parts = []
    starts = range(0, len(frames.paths), settings.batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", disable=not progress, leave=False):
        images = frames.images[start: start + settings.batch_size]
        parts.append(reconstruct(run, images, seeds, settings.steps, settings.strength,
                                 first_frame=start))
    return Reconstructions(*(torch.cat([getattr(p, f) for p in parts]) for f in (
        "source", "target", "weight_source", "weight_target", "latent_gap", "pixel_gap",
        "logits")))


def check_settings(settings: Settings) -> None:
    """Every number a user gives, checked before anything is loaded or written."""
    for name, value, low in (("--samples", settings.samples, 1), ("--steps", settings.steps, 1),
                             ("--n", settings.n, 1), ("--batch-size", settings.batch_size, 1)):
        if value < low:
            raise AblateError(f"{name} must be at least {low}, got {value}")
    if settings.strength is not None and not 0 < settings.strength <= 1:
        raise AblateError(f"--strength must be in (0, 1] (the fraction of the schedule run "
                          f"from the frame's latent), got {settings.strength}")


def explain(runs: list[str], tests: list[str] | None = None, images: list[str] | None = None,
            out: str | Path = "explain", settings: Settings | None = None,
            device: str = "auto", progress: bool = True) -> ExplainResult:
    """Grids and disagreement scores for every run on `tests` (default: the source test
    split and the recipe's cross-dataset test sets) or on user `images`. Every run, setting
    and frame is checked and read before anything is written."""
    settings = settings or Settings()
    check_settings(settings)
    dev = pick_device(device)
    loaded = [load_guided_run(r, dev) for r in runs]
    names = [r.folder.name for r in loaded]
    if len(set(names)) < len(names):
        raise AblateError("two runs share a folder name; give distinct runs")
    work = [(run, [image_frames(images, int(run.cfg.image_size))] if images else
             [test_frames(run.cfg, name, settings.n, settings.seed)
              for name in tests or [run.cfg.data.train, *run.cfg.data.tests]])
            for run in loaded]
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    rows, grids = [], []
    for run, sets in work:
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
                "run": run.folder.name, "recipe": run.recipe, "set": frames.name,
                "path": frames.paths,
                "label": frames.labels if frames.labels is not None else np.nan,
                "score": probs, "w_source": rec.weight_source.numpy(),
                "w_target": rec.weight_target.numpy(), "latent_gap": rec.latent_gap.numpy(),
                "pixel_gap": rec.pixel_gap.numpy(), "steps": settings.steps,
                "strength": settings.strength, "samples": settings.samples,
                "seed": settings.seed,
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
    """Per run and set: its recipe, frames, and the AUC of the classifier and of each gap
    (NaN without both labels)."""
    out = []
    for (run, recipe, name), group in frames.groupby(["run", "recipe", "set"], sort=False):
        labels = group["label"].to_numpy()
        both = not np.isnan(labels.astype(float)).any() and len(set(labels)) == 2
        row = {"run": run, "recipe": recipe, "set": name, "frames": len(group),
               "fakes": int(np.nansum(labels.astype(float)))}
        for column in ("score", *GAPS):
            key = "classifier_auc" if column == "score" else f"{column}_auc"
            row[key] = auc(labels.astype(int), group[column].to_numpy()) if both else np.nan
        out.append(row)
    return pd.DataFrame(out)


def over_runs(summary: pd.DataFrame) -> pd.DataFrame:
    """Per recipe (runs that differ only by seed), set and score: the interval over its
    runs, where it has two or more; the procedure is stated beside it."""
    out = []
    for (recipe, name), group in summary.groupby(["recipe", "set"], sort=False):
        if group["run"].nunique() < 2:
            continue
        for key in ("classifier_auc", *(f"{g}_auc" for g in GAPS)):
            mean, low, high, n = t_interval(group[key].to_numpy())
            out.append({"recipe": recipe, "set": name, "score": key, "mean": mean,
                        "ci_low": low, "ci_high": high, "runs": n, "procedure": PROCEDURE})
    return pd.DataFrame(out)
