"""Cross-dataset evaluation: encoder + head only, never the teacher.

Thresholds and checkpoints are chosen on the source domain's validation split
during training (`ablate.scoring`); test sets only ever receive the chosen model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig
from torch import nn

from ablate.data.dataset import FrameCache, ManifestDataset
from ablate.data.loader import resolve_dataset, split_rows
from ablate.metrics import evaluate_scores
from ablate.scoring import score
from ablate.tracking import write_metrics


def test_rows(name: str, image_size: int, cache: FrameCache | None = None,
              max_skip_fraction: float = 0.05) -> ManifestDataset:
    """The test split of a dataset (or every row of a manifest that has no test split)."""
    table = resolve_dataset(name)
    rows = split_rows(table, "test", name) if (table["split"] == "test").any() else table
    return ManifestDataset(rows, image_size, guided=False, cache=cache,
                           max_skip_fraction=max_skip_fraction)


def evaluate_classifier(
    classifier: nn.Module, cfg: DictConfig, tests: list[str], threshold: float | None,
    device: str | torch.device = "cpu", n_boot: int = 1000, progress: bool = True,
    scores_out: str | Path | None = None,
) -> pd.DataFrame:
    """Metrics per test set: rows dataset, split, level, metric, value, ci_low, ci_high, n."""
    cache = FrameCache()
    results, all_scores = [], []
    for name in tests:
        dataset = test_rows(name, cfg.image_size, cache, cfg.data.max_skip_fraction)
        scores = score(classifier, dataset, device=device, progress=progress, desc=f"eval {name}")
        scores.insert(0, "dataset", name)
        all_scores.append(scores)
        rows = evaluate_scores(
            scores["video_id"].to_numpy(), scores["label"].to_numpy(), scores["score"].to_numpy(),
            threshold=threshold, n_boot=n_boot, seed=int(cfg.seed),
        )
        results += [{"dataset": name, "split": "test", **row} for row in rows]
    if scores_out:
        out = Path(scores_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        pd.concat(all_scores, ignore_index=True).to_csv(out, index=False)
    return pd.DataFrame(results)


def summary_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Wide view for printing: one row per test set, frame AUC/EER and video AUC with CIs."""
    wanted = [("frame", "auc"), ("frame", "eer"), ("frame", "ap"), ("frame", "acc_thr"),
              ("video", "auc")]
    out = []
    for name, group in metrics.groupby("dataset", sort=False):
        row: dict = {"dataset": name}
        for level, metric in wanted:
            hit = group[(group["level"] == level) & (group["metric"] == metric)]
            if hit.empty:
                continue
            r = hit.iloc[0]
            row[f"{level}_{metric}"] = f"{r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        row["frames"] = int(group[group["level"] == "frame"]["n"].iloc[0])
        out.append(row)
    return pd.DataFrame(out)


def evaluate_run(
    run: str | Path, tests: list[str] | None = None, device: str = "auto", n_boot: int = 1000,
    progress: bool = True, scores_out: str | Path | None = None,
) -> tuple[pd.DataFrame, Path]:
    """Evaluate a run folder on test sets (default: its recipe's data.tests).

    The threshold for `acc_thr` is the one chosen on the source validation split
    during training (run.json); metrics are also written to <run>/metrics.csv.
    """
    from ablate.checkpoint import RUN_INFO, load_classifier, resolve_run
    from ablate.device import pick_device

    folder = resolve_run(run)
    dev = pick_device(device)
    classifier, cfg = load_classifier(folder, device=str(dev))
    info = json.loads((folder / RUN_INFO).read_text()) if (folder / RUN_INFO).is_file() else {}
    threshold = (info.get("selection") or {}).get("threshold")
    metrics = evaluate_classifier(
        classifier, cfg, list(tests or cfg.data.tests), threshold, dev, n_boot, progress, scores_out
    )
    metrics.insert(0, "threshold_from", "source val" if threshold is not None else "none")
    metrics.to_csv(folder / "metrics.csv", index=False)
    write_metrics(folder, metrics.to_dict("records"), int(info.get("checkpoint_step") or 0))
    return metrics, folder
