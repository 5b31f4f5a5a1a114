"""Every place under `results/` that ablate writes, in one torch-free module.

Paths are relative to the folder a command runs in (as `results/` always was), so a
project folder keeps its own database, runs and reports. The modules that write each
place import it from here rather than keep a copy of the string.
"""

from __future__ import annotations

from pathlib import Path

RESULTS = Path("results")
DB_FILE = RESULTS / "ablate.db"  # the default results database ($ABLATE_DB overrides)
DEFAULT_DB_URL = f"sqlite:///{DB_FILE.as_posix()}"
RUNS_DIR = RESULTS / "runs"  # run folders of sweeps (one per trial seed)
RAY_DIR = RESULTS / "ray"  # Ray Tune's experiment folders
SPACES_DIR = RESULTS / "spaces"  # derived search spaces (--set, compare-teachers, confirmations)
REPORTS_DIR = RESULTS / "reports"  # ablate report / compare-teachers output
TEACHERS_DIR = RESULTS / "teachers"  # fitted twins and LoRA adapters
MANIFESTS_DIR = RESULTS / "manifests"  # manifests built from dataset folders

