"""Every place under `results/` that ablate writes, in one torch-free module.

Paths are relative to the folder a command runs in (as `results/` always was), so a
project folder keeps its own database, runs and reports. The modules that write each
place import it from here rather than keep a copy of the string.
"""

from __future__ import annotations

import os
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
# decoded frames on disk, shared by trials, where they do not fit in RAM (data.host_memory_gb);
# under $ABLATE_CACHE instead of results/ where that is set (ablate.data.host_plan)
FRAME_STORE_DIR = RESULTS / "cache" / "frames"



# The built-in config groups and search spaces: the checkout's `configs/` / `search_spaces/`
# when running from a checkout (or an editable install), else the copies the wheel ships as
# `ablate/configs` / `ablate/search_spaces`; $ABLATE_CONFIG_DIR / $ABLATE_SPACES_DIR replace them.
CONFIG_DIR_ENV, SPACES_DIR_ENV = "ABLATE_CONFIG_DIR", "ABLATE_SPACES_DIR"
# the user's folders, searched before the built-in one (ablate.locations: --config-path adds
# to the first)
CONFIG_PATH_ENV, SPACES_PATH_ENV = "ABLATE_CONFIG_PATH", "ABLATE_SPACES_PATH"
_PACKAGE = Path(__file__).resolve().parent.parent  # ablate/
_CHECKOUT = _PACKAGE.parent


def builtin_folder(kind: str) -> Path:
    """`configs` or `search_spaces`: the env override, the checkout's, or the packaged copy."""
    env = os.environ.get(CONFIG_DIR_ENV if kind == "configs" else SPACES_DIR_ENV)
    if env:
        return Path(env).expanduser()
    if (_CHECKOUT / kind).is_dir() and (_CHECKOUT / "pyproject.toml").is_file():
        return _CHECKOUT / kind
    return _PACKAGE / kind  # the wheel's copy (pyproject maps the top-level folder here)


def env_list(name: str) -> list[str]:
    """A path-list environment variable's entries (`os.pathsep`-separated), empty ones out."""
    return [p for p in os.environ.get(name, "").split(os.pathsep) if p]


def user_folders(kind: str) -> list[Path]:
    """The user's own folders for `kind` (`--config-path`, `$ABLATE_CONFIG_PATH`, ...), first
    searched first."""
    env = CONFIG_PATH_ENV if kind == "configs" else SPACES_PATH_ENV
    return [Path(p).expanduser() for p in env_list(env)]


def config_names_without_plugins(group: str) -> set[str]:
    """Names of `group`'s config files (e.g. `data`) in the user's and the built-in folders,
    without loading plugins (which may import torch): for torch-free callers that only check
    a spelling; `ablate.locations.names` is the full list."""
    return {p.stem for folder in [*user_folders("configs"), builtin_folder("configs")]
            for p in (folder / group).glob("*.yaml")}
