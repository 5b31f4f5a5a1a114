"""`ablate demo` (what `make demo` runs): the whole loop on a laptop CPU.

1. build the embedded benchmark (cached);
2. fit the tiny SD 1.5 twin on the benchmark's real faces (cached);
3. `ablate sweep --space demo` with that fitted teacher: a matched design (the plain
   baseline, the guided reference and two one-at-a-time rows, 3 seeds each);
4. `ablate report` of the sweep, ending with its summary paragraph, the baseline vs
   + guidance table and the path of report.html.

Each step prints what it does and how long it took; a rerun reuses the cached
benchmark, the fitted teacher and any recipe+seed already in the database. The
numbers are whatever they are: if guidance does not help here, the summary says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from ablate.core.paths import RUNS_DIR, TEACHERS_DIR
from ablate.sweep import run_sweep

DEMO_TEACHER = "tiny-sd15"
DEMO_SPACE = "demo"


def _step(index: int, title: str, work: Callable[[], Any]) -> Any:
    click.secho(f"\n[{index}/4] {title}", bold=True)
    start = time.perf_counter()
    result = work()
    click.echo(f"      done in {time.perf_counter() - start:.0f}s")
    return result


def run_demo(db_url: str | None = None, fit_steps: int | None = None,
             space: str = DEMO_SPACE) -> Path:
    """The four steps above; returns the report folder."""
    # lazy: loads cv2 and scipy only when called
    from ablate.data.synthetic import ensure_benchmark
    from ablate.report.build import build_report
    from ablate.teacher_fitting.fit import FitSettings, fit_teacher

    start = time.perf_counter()
    _step(1, "embedded benchmark (four face-swap families, cached)",
          lambda: click.echo(f"      {ensure_benchmark(progress=True).parent}"))

    def fit() -> Path:
        settings = FitSettings(teacher=DEMO_TEACHER, data="synth-blend",
                               **({"steps": fit_steps} if fit_steps else {}))
        # a non-default fit gets its own folder (the default one holds the default fit)
        out = (str(TEACHERS_DIR / f"{DEMO_TEACHER}-synth-blend-{fit_steps}steps") if fit_steps
               else None)
        result = fit_teacher(settings, out, False, "cpu", progress=True)
        click.echo(f"      {'reused' if result.reused else 'fitted'}: {result.folder}")
        return result.folder

    folder = _step(2, f"{DEMO_TEACHER} twin fitted on the benchmark's real faces (cached)", fit)
    name = f"demo-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
    summary = _step(3, f"sweep --space {space} with the fitted teacher", lambda: run_sweep(
        space, db_url=db_url, name=name, settings={"teacher.path": str(folder)},
    ))
    if not summary.table.empty:
        click.echo(summary.table.to_string(index=False))
    report = _step(4, "report", lambda: build_report(summary.name, db_url))
    click.echo(f"\ndemo finished in {(time.perf_counter() - start) / 60:.1f} min")
    click.echo()
    click.echo(report.summary)
    click.echo()
    click.echo(report.first_markdown or report.main_markdown)
    click.secho(f"\nreport of sweep {report.sweep}: {report.folder}/report.html "
                f"(and report.md, *.tex, *.csv, *.png)", bold=True)
    guided = first_guided_run(RUNS_DIR / summary.name)
    if guided is not None:
        click.echo(f"what its teacher rebuilds from the guided encoder: ablate explain {guided}")
    return Path(report.folder)


def first_guided_run(runs: Path) -> Path | None:
    """The first run folder of a sweep (trial order) whose recipe has a guide, or None."""
    # lazy: omegaconf only when the demo ends
    from ablate.recipe import is_guided, load_yaml

    for recipe in sorted(runs.glob("*/recipe.yaml")):
        if is_guided(load_yaml(recipe)):
            return recipe.parent
    return None
