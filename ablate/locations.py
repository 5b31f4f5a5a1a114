"""Where recipes' config groups and search spaces are found.

The built-in ones come first: the checkout's `configs/` and `search_spaces/` when
running from a checkout (or an editable install), else the copies the wheel ships
as `ablate/configs` / `ablate/search_spaces` (the same files: pyproject maps the
top-level folders into the package). `$ABLATE_CONFIG_DIR` / `$ABLATE_SPACES_DIR`
replace the built-in folder. After it, in order: each plugin's own `configs/` or
`search_spaces/`, then the folders in `$ABLATE_CONFIG_PATH` / `$ABLATE_SPACES_PATH`
(separated by `os.pathsep`; `ablate --config-path DIR` adds to the first).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ablate import plugins
from ablate.core.errors import AblateError
from ablate.core.paths import RESULTS, builtin_folder

log = logging.getLogger(__name__)
_WARNED: set[Path] = set()

CONFIG_PATH_ENV, SPACES_PATH_ENV = "ABLATE_CONFIG_PATH", "ABLATE_SPACES_PATH"  # added after


def search_path(kind: str) -> list[Path]:
    """Every folder searched for `kind`, built-in first (see the module doc)."""
    plugins.load_all()
    env = CONFIG_PATH_ENV if kind == "configs" else SPACES_PATH_ENV
    extra = [Path(p).expanduser() for p in env_list(env)]
    return list(dict.fromkeys([builtin_folder(kind), *plugins.folders(kind), *extra]))


def env_list(name: str) -> list[str]:
    """An `os.pathsep`-separated environment variable as its non-empty items."""
    return [p for p in os.environ.get(name, "").split(os.pathsep) if p.strip()]


def add_config_path(folder: str) -> None:
    """`--config-path DIR`: a folder of config groups (`DIR/filter/mine.yaml`) joins the path."""
    path = Path(folder).expanduser().resolve()
    if not path.is_dir() or not any(path.rglob("*.yaml")):
        raise AblateError(f"--config-path {folder}: no .yaml files in it; give a folder of "
                          "config groups, e.g. DIR/filter/myfilter.yaml")
    current = env_list(CONFIG_PATH_ENV)
    if str(path) not in current:
        os.environ[CONFIG_PATH_ENV] = os.pathsep.join([*current, str(path)])


def find(kind: str, relative: str) -> Path | None:
    """The first `relative` file (e.g. `data/ffpp.yaml`) on the search path, or None."""
    for folder in search_path(kind):
        if (folder / relative).is_file():
            return folder / relative
    return None


def warn_shadowed(kind: str) -> None:
    """Warn (once per file) about every config file an earlier folder shadows."""
    groups = {p.parent.relative_to(folder) for folder in search_path(kind)
              for p in folder.rglob("*.yaml")}
    for group in groups:
        names(kind, str(group))


def names(kind: str, group: str = "") -> list[str]:
    """Stems of the .yaml files in `group` over the whole search path (first one wins)."""
    found: dict[str, Path] = {}
    for folder in search_path(kind):
        for path in sorted((folder / group).glob("*.yaml")):
            if path.stem not in found:
                found[path.stem] = path
            elif path not in _WARNED:  # never silent: say which file wins
                _WARNED.add(path)
                log.warning("%s is shadowed by %s (the earlier folder on the %s search path "
                            "wins); rename one of them", path, found[path.stem], kind)
    return sorted(found)


def cache_base() -> Path:
    """Where ablate caches what it builds (benchmark, file digests): $ABLATE_CACHE, else
    ./results."""
    env = os.environ.get("ABLATE_CACHE")
    return (Path(env).expanduser() if env else Path.cwd() / RESULTS).resolve()
