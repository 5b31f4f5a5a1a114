"""The `ablate report` command: parses options, calls `build_report`, prints where it went."""

from __future__ import annotations

import click

from ablate.report import EVALUATORS, FORMATS


@click.command("report")
@click.option("--sweep", "sweeps", multiple=True, metavar="NAME",
              help="Sweep to report (default: the newest in the DB); repeat it to report "
                   "several sweeps' runs as one (refused where their data, teacher or "
                   "scored test rows differ).")
@click.option("--db", "db_url", metavar="URL",
              help="Results DB URL (default: $ABLATE_DB or sqlite:///results/ablate.db).")
@click.option("--out", type=click.Path(file_okay=False), metavar="DIR",
              help="Report folder (default: results/reports/<sweep>/).")
@click.option("--format", "formats", default=",".join(FORMATS), show_default=True,
              metavar="LIST", help=f"Comma-separated, any of {','.join(FORMATS)}.")
@click.option("--importance", type=click.Choice(EVALUATORS), default="fanova", show_default=True,
              help="Optuna importance evaluator (ped-anova also assesses conditional params).")
@click.option("--effect", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="POINTS", help="The effect (AUC points) whose needed seeds every "
                                     "comparison quotes (default: 1 point, "
                                     "ablate.report.stats.DEFAULT_EFFECT).")
@click.option("--external", "external", multiple=True, metavar="FILE|NAME",
              help="Published rows beside yours (repeatable): a YAML file or a shipped name "
                   "(diffusionfake: DiffusionFake's Table 1). Shown apart, never in a "
                   "statistic.")
@click.option("--strict-protocol", is_flag=True,
              help="Refuse runs whose training and test presets mix where a published "
                   "protocol fixes them (deepfakebench: 32 frames/video; paper: 270/100; "
                   "official_code: 50 real / 16 fake), "
                   "or that differ from an --external row's protocol, or are not recorded.")
@click.option("--name", "names", multiple=True, metavar="TEST_SET=NAME",
              help="Column header of a test set (repeatable), e.g. for a manifest path: "
                   "--name results/manifests/cdf.csv='Celeb-DF v2'. Default: the data "
                   "config's display_name, else the test set's name.")
@click.option("--explain", "explained", type=click.Path(file_okay=False), metavar="DIR",
              help="Add a folder `ablate explain RUN --out DIR` wrote: the teacher's "
                   "reconstructions and the disagreement AUCs, as a section.")
def report(sweeps: tuple[str, ...], db_url: str | None, out: str | None, formats: str,
           importance: str, effect: float, external: tuple[str, ...], strict_protocol: bool,
           names: tuple[str, ...], explained: str | None) -> None:
    """Write a sweep's report: cross-dataset table, per-slot ablation, importance, plots.

    \b
    Reads the results DB only. Every interval on a difference is over training runs
    (seeds); each comparison also says the smallest effect its seeds could detect.
    Writes into the report folder:
      report.md / report.html   every table and plot (the HTML embeds its images)
      *.tex                     booktabs tables (main, ablation, pareto, ...)
      *.csv                     the numbers behind every table, per trial and per pair
      *.png                     heatmap, ablation forest plot, importance, Pareto, curves

    \b
    Examples:
      ablate report                                   # newest sweep, all formats
      ablate report --sweep quick-1 --format md,html
      ablate report --db postgresql://me@dbhost/ablate --out paper/tables
      ablate report --sweep quick-1 --sweep quick-2   # two sweeps' runs as one report
      ablate report --external diffusionfake --strict-protocol
      ablate report --explain explain                 # add what `ablate explain` drew
    """
    # lazy: loads scipy only when called
    from ablate.report.build import build_report
    from ablate.report.protocols import parse_names

    result = build_report(list(sweeps) or None, db_url, out, formats, importance,
                          None if effect is None else effect / 100, external=external,
                          strict_protocol=strict_protocol, names=parse_names(names),
                          explained=explained)
    click.echo(f"report of sweep {result.sweep} written to {result.folder}/")
    click.echo(result.main_markdown)
