"""The `ablate` command. Parses arguments and calls one function per verb; no logic."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from ablate import locations, recipe
from ablate import plugins as plugin_loader
from ablate.bench.cli import bench
from ablate.core.errors import AblateError
from ablate.dashboard import serve
from ablate.data.cli import data
from ablate.demo import run_demo
from ablate.explain.cli import explain_command
from ablate.export.cli import export
from ablate.predict.cli import predict
from ablate.registry import SLOTS, registry
from ablate.report.cli import report
from ablate.report.provenance import provenance_note
from ablate.results import ResultsDB, default_url, require_existing_db
from ablate.space import check_sweep, format_value, list_spaces, load_space, parse_settings
from ablate.space.cost import design_cost, minutes
from ablate.space.power import space_power
from ablate.sweep import run_sweep
from ablate.sweep.constraints import check_feasible
from ablate.sweep.warm_start import warm_trials
from ablate.teacher_fitting.cli import teachers
from ablate.version import code_version, package_version

OVERRIDES_HELP = """
Recipe overrides use Hydra syntax: `slot=variant` picks a variant
(configs/<slot>/<variant>.yaml), `slot.arg=value` sets one of its arguments,
`recipe=official_code` applies a preset. See `ablate list` for the variants.
"""


class _State:
    debug = False


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return

    click.echo(f"ablate {package_version()} (code version recorded with results: "
               f"{code_version()})")
    ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE_OR_FILE",
              help="Import a module or .py file that registers variants (repeatable; also "
                   "$ABLATE_PLUGINS). Installed packages with an `ablate.variants` entry "
                   "point load by themselves.")
@click.option("--config-path", "config_paths", multiple=True, metavar="DIR",
              help="A folder of config groups (DIR/filter/mine.yaml, DIR/data/ffpp.yaml) "
                   "searched before the built-in configs: its files win (repeatable, the "
                   "first given first; then $ABLATE_CONFIG_PATH).")
@click.option("--version", is_flag=True, expose_value=False, is_eager=True,
              callback=_print_version, help="Show the version and the code version runs record.")
def cli(debug: bool, plugins: tuple[str, ...], config_paths: tuple[str, ...]) -> None:
    """Ablation and architecture search for diffusion-guided deepfake detectors.

    \b
    Quick start (CPU, tiny teacher twins):
      ablate demo                      # benchmark, fitted twin, matched ablation, report (~8 min)
      ablate list                      # every variant of every slot
      ablate train filter=code teacher=tiny-sd21 train.steps=100   # one recipe
      ablate sweep --space quick       # a search space as Ray Tune trials (ablate spaces)
      ablate report                    # tables and plots of the newest sweep
      ablate compare-teachers --teachers none,tiny-sd15,tiny-sd3,tiny-flux   # none = no guidance
    """
    _State.debug = debug
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for folder in reversed(config_paths):  # each goes first: the first given ends up first
        locations.add_config_path(folder)
    for item in plugins:
        plugin_loader.add(item)


@cli.command("list")
@click.argument("words", nargs=-1, metavar="[SLOT] [PATTERN]")
def list_cmd(words: tuple[str, ...]) -> None:
    """List the registered variants, with their arguments: of SLOT (default: every slot),
    those whose name or description matches PATTERN (a substring, or a glob with * ? []).

    
    Examples:
      ablate list                  # everything
      ablate list filter           # the filters
      ablate list mhsa             # any variant about MHSA, in any slot
      ablate list teacher 'tiny-*' # the tiny teacher twins
    """
    import fnmatch
    import textwrap

    if len(words) > 2:
        raise click.UsageError("give at most a slot and a pattern: ablate list [SLOT] [PATTERN]")
    slot = words[0] if words and words[0] in SLOTS else None
    rest = words[1:] if slot else words
    if len(rest) > 1:
        raise click.UsageError(f"{words[0]!r} is not a slot ({', '.join(SLOTS)}); give one "
                               "pattern, or a slot and a pattern")
    pattern = rest[0].lower() if rest else None

    def wanted(entry) -> bool:  # noqa: ANN001
        if pattern is None:
            return True
        text = f"{entry.name} {entry.description}".lower()
        return (fnmatch.fnmatch(entry.name.lower(), pattern) if any(c in pattern for c in "*?[")
                else pattern in text)

    indent = " " * 25
    matched = 0
    for name in [slot] if slot else list(SLOTS):
        reg = registry(name)
        entries = [e for e in reg.entries() if wanted(e)]
        if not entries:
            continue
        matched += len(entries)
        click.secho(f"{reg.slot}", bold=True)
        shown: set[str] = set()
        for entry in entries:
            origin = "" if entry.origin == "built-in" else f"  [from {entry.origin}]"
            click.echo(f"  {entry.name:<22} {entry.description}{origin}")
            args = {
                k: v for k, v in entry.arguments().items()
                if k not in ("in_channels", "out_channels", "in_size", "out_size", "teacher",
                             "image_size")
            }
            shown.update(args)
            if args:  # None as `null`: what a Hydra override or a config file says
                click.echo(indent + ", ".join(
                    f"{k}={'null' if v is None else v}" for k, v in args.items()
                ))
        for arg, note in reg.notes.items():  # once per slot, not under every variant
            if arg in shown:
                label = f"  {reg.slot}.{arg}:"
                click.echo(textwrap.fill(note, 100, initial_indent=f"{label:<25}",
                                         subsequent_indent=indent))
    if pattern is not None and not matched:
        raise AblateError(f"no variant{' of ' + slot if slot else ''} matches {rest[0]!r}; "
                          "`ablate list` shows them all")


@cli.command(epilog=OVERRIDES_HELP)
@click.argument("overrides", nargs=-1)
@click.option("--dry-run", is_flag=True, help="Compose and build the recipe, print it and its "
              "schedule (steps, evaluations, checkpoint), train nothing.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--resume", "resume", metavar="RUN_FOLDER",
              help="Continue the interrupted run in RUN_FOLDER from its last validation's "
                   "saved state (same recipe and seed; it ends as the uninterrupted run would). "
                   "OVERRIDES may then change only what leaves the result alone "
                   "(train.device, train.loader_workers, caches).")
@click.option("--db", "db_url", metavar="URL",
              help="When the run has finished, evaluate it on its test sets and record it in "
                   "this results DB (e.g. sqlite:///results/ablate.db), as a one-cell sweep "
                   "`ablate report` reads. Checked before training starts.")
@click.option("--sweep", metavar="NAME",
              help="With --db: the sweep to record into (default: the run folder's name). "
                   "Seeds of one recipe recorded into one sweep are one cell, with a CI "
                   "over seeds.")
@click.option("--strict-protocol", is_flag=True,
              help="Refuse, before training, a recipe whose data.train and data.tests presets "
                   "mix where a published protocol fixes them (paper: 270/100 frames a video; "
                   "deepfakebench: 32; official_code: 50 real / 16 fake).")
def train(overrides: tuple[str, ...], dry_run: bool, quiet: bool, resume: str | None,
          db_url: str | None, sweep: str | None, strict_protocol: bool) -> None:
    """Train one detector from a recipe and save it as a run folder.

    \b
    The run folder (results/runs/<time>-<recipe hash>, or run.name) gets its recipe.yaml
    when training starts and the full training state at every validation (state/), so
    a run killed at any point (Ctrl-C, kill -9, a lost machine) continues with --resume
    from its last validation. A finished run keeps its weights and run.json, no state.

    \b
    Examples:
      ablate train                                  # default: tiny backbone + tiny-sd15, CPU
      ablate train filter=no_mhsa weight=constant   # an ablation
      ablate train recipe=baseline                  # the plain encoder + head (no guidance)
      ablate train recipe=gend backbone=tiny-clip guide=controlnet   # GenD (LayerNorm-tuned
                                                    # CLIP twin) + guidance; recipe=effort too
      ablate train backbone=tiny-dinov3 backbone.tuning=lora   # any encoder, few parameters
      ablate train recipe=official_code teacher.path=/models/sd15   # released-code setup
      ablate train train.processes=4 train.device=cuda   # one run on 4 GPUs (Ray Train, DDP)
      ablate train recipe=official_code train.grad_checkpointing=true train.branch_backward=true
                                                    # less GPU memory, the same result
      ablate train --resume results/runs/20250101-120000-1a2b3c4d5e6f   # after a crash
      ablate train --resume results/runs/RUN train.device=cuda   # ... on another device
      ablate train seed=1 --db sqlite:///results/ablate.db --sweep mine   # train, then record
      ablate train recipe=paper data.tests=[celebdf,dfd] --strict-protocol --dry-run
    """
    if sweep and not db_url:
        raise click.UsageError("--sweep names the sweep --db records into; give --db URL too")
    if dry_run and resume:
        raise click.UsageError("--dry-run shows a new recipe's plan; --resume continues a run: "
                               "give one of them")
    if resume:
        # lazy: loads torch only when called
        from ablate.record import resume_run

        done = resume_run(resume, overrides, not quiet, db_url, sweep)
        click.echo(f"resumed {resume} after step {done.resumed_at}")
    else:
        cfg = recipe.compose(overrides)
        if strict_protocol:
            # lazy: the data layer loads pandas
            from ablate.data.protocol import check_presets
            from ablate.data.sources import recipe_overrides

            check_presets(str(cfg.data.train), [str(t) for t in cfg.data.tests],
                          recipe_overrides(cfg))
        ignored = recipe.ignored_by_baseline(cfg, overrides)
        if ignored:
            click.secho(f"note: guide=none builds no teacher, filter or weight module; "
                        f"ignored: {' '.join(ignored)}", fg="yellow", err=True)
        if dry_run:
            _dry_run(cfg)
            return
        # lazy: loads torch only when called
        from ablate.record import train_run

        done = train_run(cfg, not quiet, db_url, sweep, on_start=lambda folder: click.echo(
            f"\nstate saved in {folder} (if it stops: ablate train --resume {folder})", err=True))
    result = done.result
    click.echo(
        f"trained {result.steps} steps in {result.wall_s:.1f}s "
        f"({result.params_trainable:,} trainable / {result.params_inference:,} inference params)"
    )
    click.echo(f"run saved to {result.folder}")
    if done.recorded is not None:
        _recorded_lines(done.recorded, db_url)


def _dry_run(cfg: Any) -> None:
    """`ablate train --dry-run`: the composed recipe, its hash, sizes and schedule."""
    # lazy: loads torch only when called
    from ablate.model.build import build_detector
    from ablate.schedule import plan, training_batches
    from ablate.sharding import check_split
    from ablate.train import count_params

    processes = int(recipe.setting(cfg, "train.processes"))
    if processes > 1:
        check_split(int(cfg.train.batch_size), processes)
    detector = build_detector(cfg)
    click.echo(recipe.to_yaml(cfg))
    click.echo(f"recipe hash: {recipe.recipe_hash(cfg)}")
    click.echo(f"trainable parameters: {count_params(detector, trainable_only=True):,}")
    click.echo(f"inference parameters: {count_params(detector.classifier):,}")
    batches, frames, why = training_batches(cfg)
    click.echo("\n".join(plan(cfg, batches, why, frames).lines()))


def _recorded_lines(done: Any, db_url: str | None) -> None:
    """What `ablate record` (or `train --db`) wrote, and the report command that reads it."""
    again = " (it replaced this run's earlier record)" if done.replaced else ""
    db_option = f" --db {done.db_url}" if db_url else ""
    click.echo(f"recorded in {done.db_url} as sweep {done.sweep}{again}")
    click.echo(f"next: ablate report --sweep {done.sweep}{db_option}")


@cli.command("record")
@click.argument("run", metavar="RUN_FOLDER")
@click.option("--db", "db_url", metavar="URL",
              help="Results DB (default: $ABLATE_DB or sqlite:///results/ablate.db).")
@click.option("--sweep", metavar="NAME",
              help="The sweep to record into (default: the run folder's name). Record the "
                   "seeds of one recipe into one sweep: one cell, with a CI over seeds.")
@click.option("--tests", "tests", multiple=True, metavar="A,B,...",
              help="Test sets (comma-separated or repeated): benchmark families, "
                   "configs/data/<name> or manifests. Default: the recipe's data.tests; "
                   "given, they become the recorded recipe's data.tests (and so its hash).")
@click.option("--bootstrap", default=1000, show_default=True,
              help="Bootstrap resamples (of videos or identities) for the 95% CIs.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def record_cmd(run: str, db_url: str | None, sweep: str | None, tests: tuple[str, ...],
               bootstrap: int, device: str, quiet: bool) -> None:
    """Evaluate a finished run folder and record it in the results DB as a one-cell sweep.

    \b
    The run is scored on its test sets (as `ablate eval`: frame and video AUC, EER, AP,
    accuracy, each with a bootstrap 95% CI; per-frame scores in RUN/scores.csv) and
    written as a sweep trial is: its recipe and hash, its reuse key (data and teacher
    digests), seed, metrics with how each was computed, curves and run folder. Then
    `ablate report --sweep NAME` reports it, `ablate sweeps` lists it, and a later sweep
    reuses it for the same recipe and seed. Recording a folder again replaces its row;
    another folder of the same recipe and seed in one sweep is refused.

    \b
    Examples:
      ablate record results/runs/20250101-120000-1a2b3c4d5e6f
      ablate record results/runs/seed0 --sweep mine     # then seed1, seed2: one cell, 3 seeds
      ablate record results/runs/RUN --tests synth-colour,synth-warp --db postgresql://me@dbhost/ablate
      ablate report --sweep mine                        # the report of what was recorded
    """
    # lazy: loads torch only when called
    from ablate.evaluate import summary_table
    from ablate.record import record_run

    names = [t.strip() for item in tests for t in item.split(",") if t.strip()]
    done = record_run(run, db_url, sweep, names or None, bootstrap, device, not quiet)
    click.echo(summary_table(done.metrics).to_string(index=False))
    click.echo(provenance_note(done.metrics))
    _recorded_lines(done, db_url)


@cli.command("eval")
@click.argument("run")
@click.option("--test", "tests", multiple=True, metavar="NAME_OR_MANIFEST",
              help="A test set (repeatable): a benchmark family, configs/data/<name>, "
                   "or a manifest file. Default: the recipe's data.tests.")
@click.option("--scores-out", type=click.Path(dir_okay=False),
              help="Write per-frame scores (dataset, path, video_id, label, score) to this CSV.")
@click.option("--bootstrap", default=1000, show_default=True,
              help="Bootstrap resamples (of videos or identities) for the 95% CIs.")
@click.option("--eer", type=click.Choice(["interpolated", "nearest"]), default=None,
              help="EER convention: interpolated (DiffusionFake's brentq) or nearest "
                   "(DeepfakeBench's ROC point). Default: the recipe's eval.eer.")
@click.option("--bootstrap-unit", type=click.Choice(["auto", "identity", "video"]),
              default=None, help="What a bootstrap resample draws; auto = identities where the "
                                 "test manifest names them, else videos. Default: the "
                                 "recipe's eval.bootstrap_unit.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def eval_cmd(run: str, tests: tuple[str, ...], scores_out: str | None, bootstrap: int,
             eer: str | None, bootstrap_unit: str | None, device: str, quiet: bool) -> None:
    """Evaluate a trained RUN folder (encoder + head only) on cross-dataset test sets.

    \b
    Per test set: frame-level AUC, EER, AP, accuracy at 0.5 and at the threshold
    chosen on the source validation split, and video-level AUC; each with a
    bootstrap 95% CI over videos (or identities). Metrics are also written to
    RUN/metrics.csv, each row with how it was computed (EER convention, bootstrap
    unit and seed, threshold source, aggregation, hash of the scored rows).
    """
    # lazy: loads torch only when called
    from ablate.evaluate import evaluate_run, summary_table

    metrics, folder = evaluate_run(run, list(tests) or None, device, bootstrap, not quiet,
                                   scores_out, eer=eer, bootstrap_unit=bootstrap_unit)
    click.echo(summary_table(metrics).to_string(index=False))
    click.echo(provenance_note(metrics))  # the sentence report captions carry
    click.echo(f"metrics written to {folder / 'metrics.csv'}")
    if scores_out:
        click.echo(f"scores written to {scores_out}")


@cli.command("spaces")
@click.argument("space", required=False, metavar="[NAME_OR_PATH]")
@click.option("--db", "db_url", metavar="URL",
              help="Results DB whose finished runs give measured step times and, with "
                   "--power, the between-seed spread (default: $ABLATE_DB or "
                   "sqlite:///results/ablate.db).")
@click.option("--measure", is_flag=True,
              help="Time the reference's guided and baseline steps now (ablate bench, one "
                   "thread, seconds on CPU) for cells no finished run has measured.")
@click.option("--power", is_flag=True,
              help="Instead of the cost: the seeds this space needs, from the between-seed "
                   "spread of earlier runs of the same (else a similar) recipe in the DB.")
@click.option("--effect", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="POINTS", help="With --power: the AUC effect (points) to quote the seeds "
                                     "needed for (default: 1 point, as ablate report).")
def spaces_cmd(space: str | None, db_url: str | None, measure: bool, power: bool,
               effect: float) -> None:
    """List the search spaces, or show one: a design's cells and what it will cost.

    \b
    A space either samples recipes (params + sampler: TPE, random, grid, NSGA-II) or
    lists them as a design (design: one-at-a-time | factorial, with factors and a
    reference). For a design, the cost is cells x seeds x steps x the step time
    measured on finished runs of the same recipe in the results DB.

    \b
    --power: the between-seed sd of a paired test-AUC difference (mean over test sets
    per seed) measured on earlier runs, the smallest effect the space's seeds detect
    (80% power, paired t over seeds) and the seeds a --effect needs; "unknown", with a
    pilot command, when no run has 2 seeds.

    \b
    Examples:
      ablate spaces                  # every space, one line each
      ablate spaces ablation         # the cells of the CPU module ablation, with cost
      ablate spaces ablation --measure   # ... timing the steps no finished run has timed
      ablate spaces demo --power --effect 2   # seeds needed to see a 2-point AUC effect
    """
    if power:
        if space is None:
            raise click.UsageError("--power needs a space: ablate spaces NAME --power")
        if measure:
            raise click.UsageError("--measure times steps for the cost table; --power "
                                   "shows no cost, so drop one of them")

        for line in space_power(load_space(space), db_url, None if effect is None else effect / 100).lines():
            click.echo(line)
        return
    if space is None:
        for name, description in list_spaces():
            click.echo(f"  {name:<15} {description}")
        click.echo("show one with: ablate spaces NAME;  run one with: ablate sweep --space NAME"
                   "   (or a path to your own YAML)")
        return
    found = load_space(space)
    check_feasible(found)  # constraints that exclude every point: one line
    click.echo(f"{found.name}: {found.description}")
    if found.design is None:
        click.echo(f"sampler {found.sampler.name}, {found.trials} trials x {found.seeds} seeds; "
                   f"params: {', '.join(p.key for p in found.params) or 'none'}")
        c = found.confirm
        click.echo(f"then a confirmation: the {c.top} best by source-val AUC retrained on fresh "
                   f"seeds {', '.join(map(str, found.confirm_seed_ids))} ({c.top * c.seeds} runs); "
                   "the report's verdicts come from those runs" if c else
                   "no confirmation stage: the report's winner is measured on the runs that "
                   "chose it (add confirm: {top: k, seeds: n} to re-measure it)")
        return

    d = found.design
    click.echo(f"{d.kind} design around the reference "
               f"{' '.join(f'{k}={format_value(v)}' for k, v in d.reference.items())}; "
               f"{d.size} cells x {found.seeds} seeds = {d.size * found.seeds} runs "
               "(the same seeds in every cell)")
    cost = design_cost(found, db_url, measure)
    click.echo(cost.table.to_string(index=False, na_rep="?"))
    click.echo(f"estimated train compute {minutes(cost.compute_min)}, wall "
               f"{minutes(cost.wall_min)} at {found.max_concurrent} trials at once "
               "(evaluation not included)")
    click.echo(cost.note)


@cli.command("sweep")
@click.option("--space", "space", required=True, metavar="NAME_OR_PATH",
              help="A search space: a name from `ablate spaces` or a YAML file.")
@click.option("--trials", type=click.IntRange(min=1), help="Configurations to try (default: the space's budget).")
@click.option("--concurrency", type=click.IntRange(min=1),
              help="Trials at once (default: the space's max_concurrent, else what the CPUs allow).")
@click.option("--db", "db_url", metavar="URL",
              help="SQLAlchemy URL of the results DB (default: $ABLATE_DB or sqlite:///results/ablate.db).")
@click.option("--address", metavar="RAY_ADDRESS",
              help="Join this Ray cluster (default: $RAY_ADDRESS, else a local Ray on this machine).")
@click.option("--name", help="Sweep name (default: <space>-<UTC time>); needed to --resume a chosen one.")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted sweep (--name, else the newest unfinished one of --space).")
@click.option("--warm-start", "warm_start", metavar="SWEEP",
              help="Seed the sampler with the finished trials of an earlier sweep in the same DB "
                   "(same params and objectives); they are not re-run nor counted.")
@click.option("--force", is_flag=True, help="Re-run recipes and seeds already in the DB instead of reusing them.")
@click.option("--cpus", type=float, help="CPUs per trial (default: the space's resources.cpu).")
@click.option("--gpus", type=float, help="GPUs per trial, fractions allowed (default: resources.gpu).")
@click.option("--device-memory", type=click.FloatRange(min=0, min_open=True), metavar="GB",
              help="One card's memory: every recipe's training step is estimated against its "
                   "share before any trial starts (default: this machine's GPU; none: no check).")
@click.option("--bootstrap", default=1000, show_default=True, help="Bootstrap resamples for CIs.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Add a fixed recipe setting to every trial (repeatable), e.g. "
                   "--set teacher.path=/models/sd15 --set train.steps=30.")
@click.option("--storage", metavar="PATH_OR_URI",
              help="Where run folders and trial checkpoints go: a folder, or s3://bucket/path "
                   "(no shared file system needed; default: results/ray and results/runs).")
@click.option("--reuse-any-version", is_flag=True,
              help="Also reuse results computed by other ablate code versions (default: only "
                   "this version's; the report lists the versions behind its numbers).")
@click.option("--mlflow", metavar="URI", help="Also log every trial to MLflow: a folder "
              "(e.g. mlruns) or a tracking server URL (needs ablate[tracking]).")
@click.option("--wandb", metavar="PROJECT", help="Also log every trial to Weights & Biases "
              "(offline unless $WANDB_MODE says otherwise; needs wandb).")
@click.option("--dry-run", is_flag=True,
              help="Validate the space (with --set) and dry-run build its recipes, as the sweep "
                   "does first; start nothing (no Ray, no results DB, no files).")
def sweep_cmd(space: str, trials: int | None, concurrency: int | None, db_url: str | None,
              address: str | None, name: str | None, resume: bool, force: bool,
              cpus: float | None, gpus: float | None, bootstrap: int,
              settings: tuple[str, ...], storage: str | None, reuse_any_version: bool,
              mlflow: str | None, wandb: str | None, device_memory: float | None,
              dry_run: bool, warm_start: str | None) -> None:
    """Run recipes from a search space as Ray Tune trials chosen by Optuna.

    \b
    Each trial = one guided training (checkpoint and threshold chosen on the source
    validation split) + evaluation on every test set of the space, recorded in the
    results DB with seeds and CIs, each seed as soon as it finishes. The space is
    validated (and every choice dry-run built) before anything starts. A recipe+seed
    already in the DB, computed on the same data, teacher weights and code version,
    is reused. --resume continues from the DB (after Ctrl-C, kill -9 or a lost node):
    finished seeds are kept, cut-off seeds continue from their last checkpoint.
    With a GPU (or --device-memory GB) a memory preflight estimates each distinct
    recipe first and stops a sweep whose recipe cannot fit, naming the levers that
    would fit; `resources: {gpu: auto}` in a space packs trials by those estimates.

    \b
    Examples:
      ablate sweep --space quick                       # CPU search + its confirmation, ~9 min on 2 cores
      ablate sweep --space modules --db postgresql://me@dbhost/ablate
      ablate sweep --space paper --address ray://head:10001 --gpus 1 \\
          --storage s3://bucket/sweeps             # a cluster without a shared disk
      ablate sweep --space quick --name quick-1 --resume   # after Ctrl-C
      ablate sweep --space quick --warm-start quick-1  # a new search, seeded with quick-1's
      ablate sweep --space quick --mlflow mlruns       # also in MLflow (mlflow ui)
      ablate sweep --space paper --device-memory 16    # refuse recipes a 16 GB card cannot hold
      ablate sweep --space paper --set teacher.path=/models/sd15 --dry-run   # would it start?
    """
    if dry_run:
        _sweep_dry_run(space, parse_settings(settings, "--set"), trials, db_url, warm_start)
        return
    summary = run_sweep(space, trials, concurrency, db_url, address, name, resume, force,
                        cpus, gpus, bootstrap, settings=parse_settings(settings, "--set"),
                        mlflow=mlflow, wandb=wandb, storage=storage,
                        reuse_any_version=reuse_any_version, device_memory=device_memory,
                        warm_start=warm_start)
    if not summary.table.empty:
        click.echo(summary.table.to_string(index=False))
    confirmation = summary.confirmation
    if confirmation is not None and not confirmation.table.empty:
        click.echo(f"confirmation runs (fresh seeds), sweep {confirmation.name}:")
        click.echo(confirmation.table.to_string(index=False))
    click.echo(f"sweep {summary.name} done in {summary.wall_s:.0f}s; results in {summary.db_url}")
    click.echo(f"next: ablate report --sweep {summary.name}"
               + (" (its verdicts come from the confirmation runs)" if confirmation else ""))


def _sweep_dry_run(space: str, settings: dict[str, Any], trials: int | None,
                   db_url: str | None = None, warm_start: str | None = None) -> None:
    """`ablate sweep --dry-run`: the checks a sweep makes before it starts, and what it
    would run."""
    found, notes = check_sweep(space, settings)
    for note in notes:
        click.echo(f"note: {note}")
    check_feasible(found)  # constraints that exclude every point: one line
    if warm_start:  # the earlier sweep exists and fits this space (reads only)
        require_existing_db(db_url or default_url())
        with ResultsDB(db_url) as db:
            warm_trials(db, warm_start, found)
    runs = (f"{found.design.size} cells x {found.seeds} seeds" if found.design else
            f"{trials or found.trials} trials x {found.seeds} seeds"
            + (f", then {found.confirm.top} x {found.confirm.seeds} confirmation runs"
               if found.confirm else ""))
    click.echo(f"search space {found.name} is valid: every recipe composes and builds; the "
               f"sweep would run {runs} (dry run: nothing started)")


@cli.command("dashboard")
@click.option("--db", "db_url", metavar="URL",
              help="Results DB URL (default: $ABLATE_DB or sqlite:///results/ablate.db).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on (0.0.0.0 to reach it from other machines).")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
def dashboard_cmd(db_url: str | None, host: str, port: int) -> None:
    """Open optuna-dashboard on the results DB: every sweep's study, live (Ctrl-C stops).

    \b
    Example:
      ablate dashboard --port 8080        # then browse http://127.0.0.1:8080
    """
    serve(db_url, host, port, announce=click.echo)


@cli.command("compare-teachers")
@click.option("--teachers", required=True, metavar="A,B[key=value],...",
              help="Teachers to compare; the first is the reference of every difference. "
                   "`none` is the plain detector without guidance (the natural first row). "
                   "Arguments in brackets, e.g. sd15[path=/models/sd15],sd15[lora=PATH].")
@click.option("--seeds", default=1, show_default=True, type=click.IntRange(min=1),
              help="Seeds per teacher (the same seeds and data for every teacher).")
@click.option("--recipe", "recipe", multiple=True, metavar="KEY=VALUE",
              help="Recipe override shared by all teachers (repeatable). "
                   "Default: a CPU recipe (tiny backbone, 64 px, synth-blend, 240 steps).")
@click.option("--tests", metavar="A,B,...", help="Test sets (default with no --recipe: the "
              "embedded benchmark's four families).")
@click.option("--db", "db_url", metavar="URL", help="Results DB URL (default: results/ablate.db).")
@click.option("--address", metavar="RAY_ADDRESS", help="Join this Ray cluster (default: local).")
@click.option("--name", help="Name of the comparison in the DB (default: compare-<UTC time>).")
@click.option("--resume", is_flag=True, help="Continue an interrupted comparison (needs --name).")
@click.option("--cpus", default=1.0, show_default=True, help="CPUs per trial.")
@click.option("--gpus", default=0.0, show_default=True, help="GPUs per trial (fractions allowed).")
@click.option("--bootstrap", default=1000, show_default=True, help="Bootstrap resamples.")
@click.option("--out", type=click.Path(file_okay=False), help="Report folder "
              "(default: results/reports/<name>/).")
def compare_teachers_cmd(teachers: str, seeds: int, recipe: tuple[str, ...], tests: str | None,
                         db_url: str | None, address: str | None, name: str | None,
                         resume: bool, cpus: float, gpus: float, bootstrap: int,
                         out: str | None) -> None:
    """Train one recipe with each teacher (matched seeds and data) and compare them.

    \b
    Runs through the sweep machinery (recorded in the results DB like any sweep),
    then reports per test set AUC and EER per teacher with 95% CIs, the paired
    difference against the first teacher (Student t over seeds; Avg rows add the
    smallest detectable effect and a seeds x videos interval), and each teacher's cost
    (train-step time, peak memory, trainable and frozen parameters).

    \b
    Examples:
      ablate compare-teachers --teachers none,tiny-sd15,tiny-sdxl,tiny-sd3,tiny-flux   # CPU; none = no guidance
      ablate compare-teachers --teachers "sd15[path=/m/sd15],sd21[path=/m/sd21]" \\
          --recipe recipe=paper --recipe data.train=ffpp --tests celebdf,dfd --gpus 1
    """
    # lazy: loads scipy only when called
    from ablate.compare import compare_teachers, parse_teachers
    from ablate.compare_output import display_table, markdown

    specs = parse_teachers(teachers)
    test_sets = [t.strip() for t in tests.split(",") if t.strip()] if tests else None
    table, folder = compare_teachers(specs, list(recipe), test_sets, seeds, db_url, address,
                                     name, cpus, gpus, bootstrap, resume, out)
    click.echo(markdown(display_table(table)))
    click.echo(f"comparison written to {folder}/ (compare.md, compare.csv, compare.png)")


@cli.command("demo")
@click.option("--db", "db_url", metavar="URL", help="Results DB URL (default: results/ablate.db).")
@click.option("--space", default="demo", show_default=True, metavar="NAME_OR_PATH",
              help="The space to sweep with the fitted twin (e.g. ablation: 12 cells).")
@click.option("--fit-steps", type=click.IntRange(min=1),
              help="UNet steps when fitting the teacher (default: the fit's default).")
def demo_cmd(db_url: str | None, space: str, fit_steps: int | None) -> None:
    """The whole loop on this CPU (what `make demo` runs), about 12 minutes on 2 cores.

    \b
    1. build the embedded benchmark          (cached under results/benchmark/)
    2. fit the tiny SD 1.5 twin on its real faces   (cached under results/teachers/)
    3. ablate sweep --space demo --set teacher.path=<the fitted twin>
       (the plain baseline, the guided reference, filter=conv_only and weight=none,
       3 seeds each, trained on synth-lowres, tested on the other families)
    4. ablate report: prints its summary paragraph, the baseline vs + guidance
       table and the path of report.html
    """
    run_demo(db_url, fit_steps, space)


@cli.command("sweeps")
@click.option("--db", "db_url", metavar="URL", help="Results DB URL (default: $ABLATE_DB or results/ablate.db).")
def sweeps_cmd(db_url: str | None) -> None:
    """List the sweeps in the results DB with their trial counts.

    A sweep still marked running whose driver is gone shows as `stale`, with the
    command that resumes it; a failed sweep shows why it failed.
    """
    with ResultsDB(db_url) as db:
        table, safe_url = db.list_sweeps(), db.safe_url
    if table.empty:
        click.echo("no sweeps yet; start one with `ablate sweep --space quick`")
        return
    shown = table.assign(status=table["status"].where(~table["stale"], "stale"))
    columns = ["name", "space", "status", "created", "n_trials", "n_finished", "n_pruned",
               "n_failed", "n_nan", "n_reused"]
    click.echo(shown[columns].to_string(index=False))
    db_option = f" --db {safe_url}" if db_url else ""
    for sweep in table.itertuples():
        if sweep.stale:
            click.echo(_stale_line(sweep, db_option))
        elif sweep.status == "failed" and isinstance(sweep.error, str) and sweep.error.strip():
            click.echo(f"sweep {sweep.name} failed: {_short(sweep.error)}")


def _stale_line(sweep: Any, db_option: str) -> str:
    """What happened to a stale sweep and the command that resumes it."""
    import pandas as pd

    heartbeat = sweep.heartbeat
    when = "never" if pd.isna(heartbeat) else f"{heartbeat:%Y-%m-%d %H:%M:%S} UTC"
    host = sweep.host if isinstance(sweep.host, str) else "unknown"
    pid = "unknown" if pd.isna(sweep.pid) else int(sweep.pid)
    space = sweep.space or "SPACE"
    return (f"sweep {sweep.name}: its driver is gone (host {host}, pid {pid}, last heartbeat "
            f"{when}); resume it with: ablate sweep --space {space} --name {sweep.name} "
            f"--resume{db_option}")


def _short(text: str, limit: int = 160) -> str:
    """An error on one line, cut to `limit` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _attach_groups() -> None:
    """Command groups that live beside their logic (each imports nothing heavy at load)."""
    for command in (data, teachers, report, bench, explain_command, predict, export):
        cli.add_command(command)


_attach_groups()


def main() -> None:
    """Entry point: user errors print one line and exit 2; --debug shows tracebacks."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
    except AblateError as err:
        if _State.debug:
            raise
        click.secho(f"error: {err}", fg="red", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as err:  # a bug or an unexpected library error: still one line
        if _State.debug:
            raise
        click.secho(f"error: {type(err).__name__}: {err} (rerun with --debug for the traceback)",
                    fg="red", err=True)
        sys.exit(1)
