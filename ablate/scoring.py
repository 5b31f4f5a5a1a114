"""Scoring a classifier and what source-validation selection keeps.

Shared by training (selection on the source val split) and evaluation (test
sets), so neither has to import the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from ablate.data.dataset import ManifestDataset
from ablate.metrics import eer_threshold, frame_metrics


@torch.no_grad()
def score(
    classifier: nn.Module, dataset: ManifestDataset, batch_size: int = 64,
    device: str | torch.device = "cpu", progress: bool = True, desc: str = "scoring",
) -> pd.DataFrame:
    """Fake probabilities per frame: columns path, video_id, label, score."""
    was_training = classifier.training
    classifier.eval()
    n = len(dataset)
    starts = range(0, n, batch_size)
    probs = []
    for start in tqdm(starts, desc=desc, unit="batch", disable=not progress, leave=False):
        images = dataset.images(list(range(start, min(start + batch_size, n))))
        probs.append(torch.sigmoid(classifier(images.to(device))).float().cpu())
    classifier.train(was_training)
    rows = dataset.rows
    return pd.DataFrame({
        "path": rows["path"].astype(str).to_numpy(),
        "video_id": rows["video_id"].astype(str).to_numpy(),
        "label": rows["label"].astype(int).to_numpy(),
        "score": torch.cat(probs).numpy() if probs else [],
    })


@dataclass
class Selection:
    """Which step's weights a run kept and why, stored with the run (run.json, trial rows,
    training states). `val_auc`, `threshold` and `n_frames` are the source val split's at
    that step under every rule; `rule` says what chose the step (`train.select`:
    ablate/core/selection.py), "best_val" for records saved before rules existed. With a
    proxy, `proxy_auc` is its val AUC at the kept step (also when it did not choose)."""

    step: int
    val_auc: float
    threshold: float
    n_frames: int
    dataset: str
    rule: str = "best_val"
    proxy: str | None = None
    proxy_auc: float | None = None
    proxy_frames: int | None = None

    @property
    def signal(self) -> float:
        """The value the rule compared steps by (under `last`: the source val AUC)."""
        if self.rule == "proxy" and self.proxy_auc is not None:
            return self.proxy_auc
        return self.val_auc

    def as_dict(self) -> dict:
        metric = {"best_val": "val_auc", "proxy": "proxy_auc"}.get(self.rule)  # last: none
        return {"metric": metric, "split": "val", **self.__dict__}


def validation_point(scores: pd.DataFrame) -> tuple[float, float]:
    """(frame AUC, EER threshold) on validation scores."""
    labels, probs = scores["label"].to_numpy(), scores["score"].to_numpy()
    return frame_metrics(labels, probs)["auc"], eer_threshold(labels, probs)
