"""`ablate predict`: arguments in, one call per step, no logic (it lives beside this file).

Importing this module loads click only; the model, torch and the detectors load when the
command runs, so `ablate --help` stays light.
"""

from __future__ import annotations

from dataclasses import asdict

import click

from ablate.predict.output import OUT_SUFFIXES
from ablate.predict.rows import LEVELS, NO_FACE, OK


@click.command("predict", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("run", metavar="RUN")
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@click.option("--out", metavar="FILE",
              help=f"Write the rows to FILE ({' or '.join(OUT_SUFFIXES)}; the suffix picks the "
                   "format) instead of printing a table.")
@click.option("--level", type=click.Choice(LEVELS), default="file", show_default=True,
              help="file: one row per image or video (a video's score is the mean of its "
                   "frames', as ablate's video metrics take it); frame: one row per frame "
                   "scored, with its face box; both.")
@click.option("--frames", type=click.IntRange(min=0), default=None, metavar="N",
              help="Frames sampled per video, evenly spaced (0: every frame). Default: as "
                   "many as the run's training videos were prepared with.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              metavar="N",
              help="Crops scored at once.")
@click.option("--device", default="auto", show_default=True, metavar="DEVICE",
              help="Where a run folder's detector runs: auto (cuda when there is one), cpu, "
                   "cuda, cuda:1...")
@click.pass_context
def predict(ctx: click.Context, run: str, paths: tuple[str, ...], out: str | None, level: str,
            frames: int | None, batch_size: int, device: str) -> None:
    """Score images, folders and videos with a trained detector: P(fake) per file.

    RUN is a run folder (what `ablate train` printed) or an exported model file (.onnx,
    .pt, .ts). Each PATH is an image (.jpg .jpeg .png .bmp .webp), a video (.mp4 .avi
    .mov .webm .mkv) or a folder, searched recursively (other files there are skipped and
    counted).

    Frames are cut as the run's training frames were: the same frame sampling, face
    detector, alignment, margin and crop size, read from how its training data were
    prepared (`ablate data prepare`'s markers, else the data config's `crop:`; frames of
    the embedded benchmark are used whole). When that cannot be found the deepfakebench
    preset is used and a note says so. The label is fake when P(fake) reaches the
    threshold the run chose on its source validation split.

    Columns: file, kind, level, frame, frames (scored), x1 y1 x2 y2 (the face box),
    score (P(fake)), label, status. A file without a face, or one that cannot be read, is
    a row with its status; the others are still scored. Exit code 1 when any file could
    not be read.

    \b
    Examples:
      ablate predict results/runs/r clip.mp4                  # one video: P(fake), label
      ablate predict results/runs/r photos/ --level frame     # every image, with face boxes
      ablate predict results/runs/r videos/ --out scores.csv  # a table to analyse
      ablate predict results/runs/r a.mp4 --frames 0 --out a.json   # every frame of a.mp4
      ablate predict detector.onnx face.jpg                   # an exported model
    """
    # lazy: torch, the model and the face detector load only when the command runs
    from ablate.predict.inputs import expand
    from ablate.predict.output import check_out, table, write_rows
    from ablate.predict.preparation import fallback_note
    from ablate.predict.rows import to_rows
    from ablate.predict.run import predict_files
    from ablate.predict.scorer import check_run, load_scorer

    check_out(out)  # every input checked before the model loads
    inputs = expand(paths)
    check_run(run)
    scorer = load_scorer(run, device)
    note = fallback_note(scorer.train_data, scorer.preparation)
    if note:
        click.echo(note, err=True)
    else:
        click.echo(f"frames cut as {scorer.train_data}'s were: {scorer.preparation.describe()} "
                   f"(from {scorer.preparation.source})", err=True)
    results = predict_files(scorer, inputs.files, frames, batch_size)
    rows = to_rows(results, scorer.threshold, level)
    if out:
        about = {"run": scorer.name, "threshold": scorer.threshold, "level": level,
                 "preparation": {**asdict(scorer.preparation.settings),
                                 "source": scorer.preparation.source,
                                 "known": scorer.preparation.known}}
        path = write_rows(out, rows, about)
        click.echo(f"wrote {len(rows)} rows to {path}", err=True)
    else:
        click.echo(table(rows))
    if inputs.skipped_note():
        click.echo(inputs.skipped_note(), err=True)
    failed = sum(r.status not in (OK, NO_FACE) for r in results)
    faceless = sum(r.status == NO_FACE for r in results)
    threshold = ("no threshold in the run: no labels" if scorer.threshold is None
                 else f"threshold {scorer.threshold:.4g}")
    click.echo(f"predict: {len(results)} files, {len(results) - failed - faceless} scored, "
               f"{faceless} without a face, {failed} unreadable ({threshold})", err=True)
    if failed:
        ctx.exit(1)
