"""Paired tests of two detectors on the same test frames, with Holm's correction.

For each matched comparison of the report (guided vs its baseline; each paired
one-at-a-time row vs the reference) and each test set, from the per-frame scores
the runs wrote (`scores.csv` in each run folder, local or on --storage):

- **DeLong** (`delong.delong_mean_test`): the mean frame AUC over the seeds both
  recipes have, A against B on the same frames. Frames are treated as independent,
  so with many frames per video it is optimistic.
- **paired video bootstrap**: videos resampled (seed 0 for every run, so both
  detectors see the same resamples), AUC per run, mean over seeds, difference A - B;
  two-sided p = 2 min(P(d <= 0), P(d >= 0)) over the resamples. Videos, not frames,
  are the unit, so it respects within-video correlation.

Both condition on the trained models: they measure test-set sampling, not training
noise, so neither is a verdict on a recipe (the intervals over seeds are). Holm corrects each test's p-values over every
comparison x test set in the table; the table names the test behind each p-value.
Runs whose scores cannot be read here are left out and the table says so.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from ablate import storage
from ablate.core.errors import AblateError
from ablate.core.names import SCORES
from ablate.metrics import auc, bootstrap_values, eer
from ablate.provenance import is_part
from ablate.report.data import SweepData
from ablate.report.delong import delong_mean_test, holm
from ablate.report.stats import two_stage_interval

N_BOOT = 1000
COLUMNS = ["comparison", "a", "b", "dataset", "seeds", "n_frames", "n_videos", "auc_a", "auc_b",
           "diff", "test", "p", "p_holm"]
TESTS = ("DeLong (frames)", "paired video bootstrap")
TWO_STAGE_METRICS = ("auc", "eer")  # frame level: what scores.csv rows are


def read_scores(runs: pd.DataFrame, key: str) -> dict[tuple[str, int], pd.DataFrame]:
    """(run[key], seed) -> that run's per-frame test scores, for each run whose folder is
    readable here (a local folder, or the sweep's --storage, e.g. s3://...)."""
    out = {}
    for t in runs.itertuples():
        run_dir = getattr(t, "run_dir", None)
        if not run_dir or pd.isna(run_dir):
            continue
        try:
            raw = storage.read_bytes(storage.join(str(run_dir), SCORES))
        except (OSError, AblateError):  # gone, or storage unreachable
            continue
        out[(getattr(t, key), int(t.seed))] = pd.read_csv(io.BytesIO(raw))
    return out


def delong_on(scores: dict, a: str, b: str, dataset: str):  # noqa: ANN201
    """(DeLongResult of mean AUC of A vs B over the seeds both have, the aligned frames), or
    None without common seeds, shared frames or both classes on this test set."""
    seeds = sorted({s for (c, s) in scores if c == a} & {s for (c, s) in scores if c == b})
    frames = aligned_frames(scores, a, b, seeds, dataset) if seeds else None
    if frames is None:
        return None
    try:
        return delong_mean_test(frames[0], frames[1], frames[2]), frames
    except AblateError:  # one class only, or too few frames: no test here
        return None


def comparison_scores(data: SweepData, comparisons: list[tuple[str, str, str]]) -> dict:
    """(config, seed) -> per-frame scores of every config the comparisons name, read once."""
    configs = {c for _, a, b in comparisons for c in (a, b)}
    return read_scores(data.counted[data.counted["config"].isin(configs)], "config")


def paired_tests(data: SweepData, comparisons: list[tuple[str, str, str]], scores: dict,
                 n_boot: int = N_BOOT) -> pd.DataFrame:
    """`comparisons`: (name, config A, config B); `scores`: `comparison_scores`. One row per
    (comparison, test set, test)."""
    labels = data.counted.drop_duplicates("config").set_index("config")["label"]
    rows = []
    for name, a, b in comparisons:
        for dataset in data.tests:
            found = delong_on(scores, a, b, dataset)
            if found is None:
                continue
            d, (y, va, vb, videos) = found
            base = {"comparison": name, "a": labels.get(a, a), "b": labels.get(b, b),
                    "dataset": dataset, "seeds": len(va), "n_frames": len(y),
                    "n_videos": len(set(videos)), "auc_a": d.auc_a, "auc_b": d.auc_b,
                    "diff": d.diff}
            rows.append({**base, "test": TESTS[0], "p": d.p_value})
            rows.append({**base, "test": TESTS[1], "p": bootstrap_p(videos, y, va, vb, n_boot)})
    table = pd.DataFrame(rows, columns=COLUMNS)
    for test in TESTS:  # Holm over every comparison x test set of one test
        mine = table["test"] == test
        table.loc[mine, "p_holm"] = holm(table.loc[mine, "p"].to_numpy(dtype=float))
    return table


def aligned_frames(scores: dict, a: str, b: str, seeds: list[int], dataset: str):  # noqa: ANN202
    """(labels (N,), scores of A (k, N), of B (k, N), video ids (N,)) on the frames every
    run scored, in one order; None when the runs share no frames of this test set."""
    def one(config: str, seed: int) -> pd.DataFrame:
        f = scores[(config, seed)]
        return f[f["dataset"] == dataset].drop_duplicates("path").set_index("path")

    runs = [one(a, s) for s in seeds] + [one(b, s) for s in seeds]
    common = sorted(set.intersection(*(set(r.index) for r in runs)))
    if len(common) < 4:
        return None
    first = runs[0].loc[common]
    y = first["label"].to_numpy(dtype=int)
    stacked = np.vstack([r.loc[common, "score"].to_numpy(dtype=float) for r in runs])  # (2k, N)
    k = len(seeds)
    return y, stacked[:k], stacked[k:], first["video_id"].astype(str).to_numpy()


def bootstrap_p(videos: np.ndarray, y: np.ndarray, va: np.ndarray, vb: np.ndarray,
                 n_boot: int) -> float:
    """Two-sided p of mean AUC(A) - mean AUC(B) from the same video resamples."""
    def mean_boot(runs: np.ndarray) -> np.ndarray:  # (n_boot,): resampled AUC, mean over runs
        return np.mean([bootstrap_values(videos, y, s, "auc", n_boot=n_boot, seed=0)[0]
                        for s in runs], axis=0)

    d = mean_boot(va) - mean_boot(vb)  # (n_boot,)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return float("nan")
    return float(min(1.0, 2 * min(np.mean(d <= 0), np.mean(d >= 0))))


def two_stage_difference(scores: dict, a: str, b: str, tests: list[str],
                         n_boot: int = N_BOOT) -> dict[tuple[str, str], tuple]:
    """(level, metric) -> (mean, low, high, n_seeds) of A - B averaged over `tests`, with
    seeds and test videos resampled (`stats.two_stage_interval`); {} when the runs' scores
    (`scores`: (key, seed) -> frames, as `read_scores` gives) lack A or B or a test set.

    Every seed both recipes have must have scored every test set; each test set uses the
    frames every run scored, with one video resample (seed 0) for all runs.
    """
    seeds = sorted({s for (c, s) in scores if c == a} & {s for (c, s) in scores if c == b})
    if not seeds:
        return {}
    out = {}
    for metric, fn in (("auc", auc), ("eer", eer)):
        observed, replicates = [], []  # per test set: (k,), (k, n_boot)
        for dataset in [t for t in tests if not is_part(t)]:
            frames = aligned_frames(scores, a, b, seeds, dataset)
            if frames is None:
                return {}
            y, va, vb, videos = frames
            if len(set(y)) < 2:
                return {}
            observed.append([fn(y, x) - fn(y, z) for x, z in zip(va, vb, strict=True)])
            replicates.append([bootstrap_values(videos, y, x, metric, n_boot=n_boot, seed=0)[0]
                               - bootstrap_values(videos, y, z, metric, n_boot=n_boot, seed=0)[0]
                               for x, z in zip(va, vb, strict=True)])
        obs = np.asarray(observed, dtype=float).T  # (k, T)
        reps = np.transpose(np.asarray(replicates, dtype=float), (1, 0, 2))  # (k, T, n_boot)
        out[("frame", metric)] = two_stage_interval(obs, reps)
    return out
