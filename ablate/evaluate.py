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
from ablate.errors import AblateError
from ablate.metrics import evaluate_scores
from ablate.scoring import score
from ablate.tracking import write_metrics


def test_rows(name: str, image_size: int, cache: FrameCache | None = None,
              max_skip_fraction: float = 0.05) -> ManifestDataset:
    """The test split of a dataset, and only that: a manifest without test rows is an error,
    never silently scored on its training frames. (Datasets that are all-test by definition,
    DFD, DiffSwap, the cross-dataset sets, are written with split=test by their adapters.)"""
    table = resolve_dataset(name)
    if not (table["split"] == "test").any():
        found = ", ".join(sorted(map(str, table["split"].dropna().unique()))) or "none"
        raise AblateError(f"test set {name} has no test rows (its splits: {found}); scoring it "
                          "would score frames a detector may have trained or selected on. Give "
                          "a manifest whose held-out rows have split=test")
    rows = split_rows(table, "test", name)
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
