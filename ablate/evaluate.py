"""Cross-dataset evaluation: encoder + head only, never the teacher.

Thresholds and checkpoints are chosen on the source domain's validation split
during training (`ablate.scoring`); test sets only ever receive the chosen model.
Every metric row says how it was computed (`ablate.metrics.PROVENANCE`) and on
which rows (`manifest_sha`), so numbers from other runs or papers can be laid
beside it knowingly. The EER convention and the bootstrap unit come from the
recipe's `eval` keys (`configs/config.yaml`), overridable per call.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig
from torch import nn

from ablate.core.errors import AblateError
from ablate.core.schema import GROUPS, setting
from ablate.data.dataset import FrameCache, ManifestDataset
from ablate.data.loader import eval_frame_cache, resolve_dataset, split_rows
from ablate.data.protocol import at_level, dataset_protocol, part_protocol
from ablate.data.sources import dataset_overrides
from ablate.device import pick_device
from ablate.metrics import (
    BOOT_UNITS,
    check_eer_convention,
    evaluate_scores,
    resolve_unit,
    video_clusters,
)
from ablate.provenance import PART, manifest_sha
from ablate.scoring import score
from ablate.tracking import write_metrics

log = logging.getLogger(__name__)

THRESHOLD_FROM = "source val EER point"  # where acc_thr's threshold comes from (run.json)


def eval_settings(cfg: DictConfig, eer: str | None = None,
                  bootstrap_unit: str | None = None) -> dict[str, str]:
    """The recipe's eval keys (defaults for recipes saved before they existed), with the
    given overrides; bad values fail here, before any frame is scored."""
    out = {k: str(setting(cfg, f"eval.{k}")) for k in GROUPS["eval"].settings}
    out.update({k: v for k, v in (("eer", eer), ("bootstrap_unit", bootstrap_unit)) if v})
    check_eer_convention(out["eer"])
    if out["bootstrap_unit"] not in BOOT_UNITS:
        raise AblateError(f"unknown bootstrap unit {out['bootstrap_unit']!r}; set "
                          f"eval.bootstrap_unit to one of {', '.join(BOOT_UNITS)}")
    return out


def identities_of(rows: pd.DataFrame):  # noqa: ANN201 - a column or None
    """The manifest's optional `identity` column (the cluster unit), or None without one."""
    return rows["identity"].to_numpy(dtype=object) if "identity" in rows.columns else None


def test_rows(name: str, image_size: int, cache: FrameCache | None = None,
              max_skip_fraction: float = 0.05, overrides: dict | None = None) -> ManifestDataset:
    """The test split of a dataset, and only that: a manifest without test rows is an error,
    never silently scored on its training frames. (Datasets that are all-test by definition,
    DFD, DiffSwap, the cross-dataset sets, are written with split=test by their adapters.)"""
    table = resolve_dataset(name, overrides)  # overrides: the recipe's root for it
    if not (table["split"] == "test").any():
        found = ", ".join(sorted(map(str, table["split"].dropna().unique()))) or "none"
        raise AblateError(f"test set {name} has no test rows (its splits: {found}); scoring it "
                          "would score frames a detector may have trained or selected on. Give "
                          "a manifest whose held-out rows have split=test")
    rows = split_rows(table, "test", name)
    if rows["label"].nunique() < 2:
        kind = "fake" if int(rows["label"].iloc[0]) == 1 else "real"
        raise AblateError(f"test set {name} has only {kind} rows ({len(rows)}): AUC and EER need "
                          "both. DF40 ships fakes only for most methods: build its manifest with "
                          "reals=[the FF++ / Celeb-DF test manifest]")
    return ManifestDataset(rows, image_size, guided=False, cache=cache,
                           max_skip_fraction=max_skip_fraction)


def sub_test_sets(name: str, rows: pd.DataFrame) -> dict[str, pd.Series]:
    """Test sets inside one manifest whose rows name several datasets `<group>/<part>` (DF40:
    `df40/<method>`, shared reals `df40/real`), as row masks named `<name>::<part>`: each
    part's fakes with its own reals, or with the shared reals where it has none, and the same
    per generator family (`<name>::family:<F>`, where the rows carry a `family` column). Means
    over test sets leave them out (`provenance.is_part`); a part without reals is left out
    with a warning. One part: nothing."""
    datasets = rows["dataset"].astype(str)
    parts = [d for d in datasets.unique() if "/" in d and not d.endswith("/real")]
    if len(parts) < 2:
        return {}
    fake, shared = rows["label"] == 1, datasets.str.endswith("/real")
    out = {}
    for part in sorted(parts):
        own = datasets == part
        out[f"{name}{PART}{part}"] = own | (shared if not (own & ~fake).any() else False)
    if "family" in rows.columns:
        families = rows["family"].astype(str)
        for family in sorted(families[fake & datasets.isin(parts)].unique()):
            members = (families == family) & datasets.isin(parts)
            with_reals = set(datasets[members & ~fake])
            reals = (datasets.isin(with_reals) | shared) & ~fake
            out[f"{name}{PART}family:{family}"] = (members & fake) | reals
    both = {k: keep for k, keep in out.items() if rows.loc[keep, "label"].nunique() == 2}
    if len(both) < len(out):  # a method without reals of its own and no shared ones
        log.warning("test set %s: not scored apart, no real rows to score against: %s", name,
                    ", ".join(sorted(set(out) - set(both))))
    return both


def evaluate_classifier(
    classifier: nn.Module, cfg: DictConfig, tests: list[str], threshold: float | None,
    device: str | torch.device = "cpu", n_boot: int = 1000, progress: bool = True,
    scores_out: str | Path | None = None, eer: str | None = None,
    bootstrap_unit: str | None = None,
) -> pd.DataFrame:
    """Metrics per test set: rows dataset, split, level, metric, value, ci_low, ci_high, n,
    the provenance keys of `evaluate_scores`, `manifest_sha` (the rows scored) and
    `protocol` (JSON: frames per video, videos, compression, crop, official list, level;
    `ablate.data.protocol`)."""
    settings = eval_settings(cfg, eer, bootstrap_unit)
    cache = eval_frame_cache(cfg)  # streamed: no test frame is held after its batch
    datasets, protocols = {}, {}
    for name in tests:  # every test set's rows and settings are checked before any scoring
        overrides = dataset_overrides(cfg, name)  # data.roots: its protocol's source too
        dataset = test_rows(name, cfg.image_size, cache, cfg.data.max_skip_fraction, overrides)
        resolve_unit(settings["bootstrap_unit"],
                     video_clusters(dataset.rows["video_id"].astype(str),
                                    identities_of(dataset.rows)),
                     where=f"the test rows of {name}")
        datasets[name] = dataset
        protocols[name] = dataset_protocol(name, dataset.rows, overrides=overrides)
    results, all_scores = [], []
    for name, dataset in datasets.items():
        scored = score(classifier, dataset, device=device, progress=progress, desc=f"eval {name}")
        for part, keep in {name: None, **sub_test_sets(name, dataset.rows)}.items():
            rows = dataset.rows if keep is None else dataset.rows[keep]
            scores = scored if keep is None else scored[keep.to_numpy()]
            all_scores.append(scores.assign(dataset=part)[["dataset", *scored.columns]])
            metrics = evaluate_scores(
                scores["video_id"].to_numpy(), scores["label"].to_numpy(),
                scores["score"].to_numpy(), threshold=threshold, n_boot=n_boot,
                seed=int(cfg.seed), identities=identities_of(rows),
                boot_unit=settings["bootstrap_unit"], eer_convention=settings["eer"],
                threshold_from=THRESHOLD_FROM,
            )
            sha = manifest_sha(rows)
            protocol = (protocols[name] if keep is None
                        else part_protocol(protocols[name], part, rows))
            results += [{"dataset": part, "split": "test", **row, "manifest_sha": sha,
                         "protocol": at_level(protocol, row["level"])} for row in metrics]
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
    progress: bool = True, scores_out: str | Path | None = None, eer: str | None = None,
    bootstrap_unit: str | None = None,
) -> tuple[pd.DataFrame, Path]:
    """Evaluate a run folder on test sets (default: its recipe's data.tests).

    The threshold for `acc_thr` is the one chosen on the source validation split
    during training (run.json); metrics are also written to <run>/metrics.csv.
    `eer` / `bootstrap_unit` override the recipe's eval keys.
    """
    # lazy: loads safetensors only when called
    from ablate.checkpoint import RUN_INFO, load_classifier, resolve_run

    folder = resolve_run(run)
    dev = pick_device(device)
    classifier, cfg = load_classifier(folder, device=str(dev))
    info = json.loads((folder / RUN_INFO).read_text()) if (folder / RUN_INFO).is_file() else {}
    threshold = (info.get("selection") or {}).get("threshold")
    metrics = evaluate_classifier(
        classifier, cfg, list(tests or cfg.data.tests), threshold, dev, n_boot, progress,
        scores_out, eer=eer, bootstrap_unit=bootstrap_unit,
    )
    metrics.to_csv(folder / "metrics.csv", index=False)
    write_metrics(folder, metrics.to_dict("records"), int(info.get("checkpoint_step") or 0))
    return metrics, folder
