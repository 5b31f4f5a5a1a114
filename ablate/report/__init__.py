"""`ablate report`: tables, plots and pages from the results database only.

    from ablate.report import build_report
    report = build_report("quick-20250102-030405", formats="md,html")
    print(report.folder, report.main_markdown)

Modules, one job each: `data` (DB rows -> one sweep's frames), `stats` (CIs,
Pareto), `tables` (main table, status), `reference` + `ablation` (per-slot
paired differences), `importance` (Optuna), `plots` (seaborn PNGs), `render`
(Markdown / HTML / LaTeX / CSV), `build` (all of it), `cli` (the command).
Nothing here imports torch. This file stays import-light (the CLI loads it for
every command); `build_report` and `Report` load on first use.
"""

from __future__ import annotations

from typing import Any

FORMATS = ("md", "html", "tex", "csv")
EVALUATORS = ("fanova", "ped-anova", "mdi")

__all__ = ["EVALUATORS", "FORMATS", "Report", "build_report"]


def __getattr__(name: str) -> Any:
    if name in ("build_report", "Report"):
        # lazy: that module imports this one
        from ablate.report import build

        return getattr(build, name)
    raise AttributeError(f"module 'ablate.report' has no attribute {name!r}")
