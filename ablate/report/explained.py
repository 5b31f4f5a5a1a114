"""`ablate report --explain DIR`: the folder `ablate explain` wrote, as a report section.

The report stays torch-free: it never samples, it reads what explain measured (the
disagreement AUCs, the interval over runs with its procedure, the grids) and says how the
reconstructions were drawn.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from ablate.core.errors import AblateError
from ablate.report.display import Table
from ablate.report.render import Section

SCORES = {"classifier_auc": "classifier AUC", "latent_gap_auc": "latent-gap AUC",
          "pixel_gap_auc": "pixel-gap AUC"}


def _cell(value: float) -> str:
    return "n/a" if pd.isna(value) else f"{value:.3f}"


def explain_section(source: str | Path, folder: Path) -> Section:
    """The section for explain folder `source`; its grids are copied into `folder`/explain."""
    source = Path(source).expanduser()
    table_file = source / "disagreement.csv"
    if not table_file.is_file():
        raise AblateError(f"--explain {source}: no disagreement.csv there; write it first with "
                          f"`ablate explain RUN --out {source}`")
    summary = pd.read_csv(table_file)
    frames = pd.read_csv(source / "frames.csv") if (source / "frames.csv").is_file() else None
    rows = [[str(r["run"]), str(r["set"]), str(int(r["frames"])),
             *(_cell(r[k]) for k in SCORES)] for _, r in summary.iterrows()]
    tables = [Table("Disagreement of the rebuilt source and target, as a fake score",
                    ["run", "test set", "frames", *SCORES.values()], rows,
                    note="Frame AUC of the RMS distance between the teacher's rebuilt source "
                         "and rebuilt target (latent and pixel), beside the classifier's AUC "
                         "on the same frames. A small balanced pick of frames: a picture of "
                         "the mechanism, not a benchmark.",
                    slug="explain")]
    intervals_file = source / "intervals.csv"
    if intervals_file.is_file():
        intervals = pd.read_csv(intervals_file)
        tables.append(Table(
            "Over training runs", ["test set", "score", "mean", "95% CI", "runs"],
            [[str(r["set"]), SCORES.get(r["score"], r["score"]), _cell(r["mean"]),
              f"[{_cell(r['ci_low'])}, {_cell(r['ci_high'])}]", str(int(r["runs"]))]
             for _, r in intervals.iterrows()],
            note=str(intervals["procedure"].iloc[0]) if len(intervals) else "",
            slug="explain_runs"))
    target = folder / "explain"
    target.mkdir(parents=True, exist_ok=True)
    images = []
    for png in sorted(source.rglob("*.png")):
        name = "_".join(png.relative_to(source).parts)
        images.append(Path(shutil.copyfile(png, target / name)))
    how = ""
    if frames is not None and len(frames):
        first = frames.iloc[0]
        start = ("from noise" if pd.isna(first["strength"])
                 else f"SDEdit from each frame's latent at strength {first['strength']:g}")
        how = (f" Drawn with {int(first['steps'])} sampler steps {start}; the gaps average "
               f"{int(first['samples'])} sampling seed(s) per frame.")
    text = ["For each frame the frozen teacher rebuilds the source face and the target face, "
            "guided by the run's encoder features through its filters, weight modules and "
            "guide. The method's claim: for a fake the two differ, for a real they do not."
            + how]
    return Section("What the teacher rebuilds", text=text, tables=tables, images=images)
