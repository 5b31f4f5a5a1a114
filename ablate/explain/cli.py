"""The `ablate explain` command: arguments in, `explain` called, a table out."""

from __future__ import annotations

import click

EXAMPLES = """
\b
Examples:
  ablate explain runs/demo-guided                      # source test split + each test set
  ablate explain runs/r --test synth-warp --n 32 --samples 4
  ablate explain runs/r --images a.png b.png --out pictures
  ablate explain runs/r --strength 0.6                 # SDEdit from each frame's latent
  ablate explain runs/seed0 runs/seed1 runs/seed2      # intervals over the training runs
"""


@click.command("explain", epilog=EXAMPLES)
@click.argument("runs", nargs=-1, required=True, metavar="RUN...")
@click.option("--test", "tests", multiple=True, metavar="NAME",
              help="Test set(s) to draw frames from (default: the run's source test split "
                   "and every data.tests set).")
@click.option("--images", multiple=True, type=click.Path(), metavar="PATH",
              help="Face crops to rebuild instead of test frames (repeatable).")
@click.option("--n", default=16, show_default=True,
              help="Frames per test set, half real and half fake.")
@click.option("--steps", default=20, show_default=True,
              help="Sampler steps (DDIM for UNet teachers, flow-matching Euler for SD3/Flux).")
@click.option("--strength", type=float, default=None,
              help="SDEdit: start from each frame's own latent noised to this fraction of the "
                   "schedule, in (0, 1], and run that part of it (at 1 a trace of the frame "
                   "still survives the first step). Default: from pure noise.")
@click.option("--samples", default=1, show_default=True,
              help="Sampling seeds per frame; the disagreement is their mean.")
@click.option("--seed", default=0, show_default=True,
              help="Picks the frames; the sampling seeds are SEED, SEED+1, ...")
@click.option("--batch-size", default=8, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--out", default="explain", show_default=True, type=click.Path(),
              help="Folder for the PNG grids, frames.csv, disagreement.csv, intervals.csv.")
def explain_command(runs: tuple[str, ...], tests: tuple[str, ...], images: tuple[str, ...],
                    n: int, steps: int, strength: float | None, samples: int, seed: int,
                    batch_size: int, device: str, out: str) -> None:
    """Show what the frozen teacher rebuilds from a guided run's features, and measure it.

    For each frame: the input, the teacher's reconstruction of the source face and of the
    target face (guided by the run's filters, weight modules and guide), the weights W_s
    and W_t, and the true source and target where the manifest has them. The disagreement
    of a frame is the RMS distance between its two reconstructions (latent and pixels);
    its AUC as a fake score is printed beside the classifier's AUC on the same frames.
    Several runs of one recipe (seeds) give a t interval over runs.
    """
    # lazy: torch and diffusers load only when the command runs
    from ablate.explain.run import Settings, explain

    settings = Settings(steps=steps, strength=strength, samples=samples, n=n, seed=seed,
                        batch_size=batch_size)
    result = explain(list(runs), list(tests) or None, list(images) or None, out, settings,
                     device)
    shown = result.summary.drop(columns=["fakes"]).round(3)
    click.echo(shown.to_string(index=False))
    if not result.intervals.empty:
        click.echo("\nover runs (" + result.intervals["procedure"].iloc[0] + "):")
        click.echo(result.intervals.drop(columns=["procedure"]).round(3).to_string(index=False))
    click.echo(f"\ngrids: {', '.join(str(p) for p in result.grids)}")
    click.echo(f"per-frame scores: {result.out / 'frames.csv'}")
