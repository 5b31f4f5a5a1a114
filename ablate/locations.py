"""Where recipes' config groups and search spaces are found, and which file wins.

The search path for `configs` (and likewise `search_spaces`), first folder first:
1. the user's folders: `ablate --config-path DIR` (repeatable, in the order given), then
   `$ABLATE_CONFIG_PATH` / `$ABLATE_SPACES_PATH` (separated by `os.pathsep`);
2. the built-in folder: the checkout's `configs/` and `search_spaces/` when running from a
   checkout (or an editable install), else the copies the wheel ships as `ablate/configs` /
   `ablate/search_spaces` (pyproject maps the top-level folders into the package);
   `$ABLATE_CONFIG_DIR` / `$ABLATE_SPACES_DIR` replace it;
3. each plugin's own `configs/` or `search_spaces/`, in load order.

The first folder holding a file wins, so a user's `data/ffpp.yaml` (with the root of their
frames) beats the built-in one without editing site-packages, while a plugin adds files
but cannot silently change a built-in one. Every file shadowed this way is noted once
("data/ffpp.yaml from DIR shadows the built-in one"), never used silently.
Hydra composes recipes over the same order (ablate.recipe).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ablate import plugins
from ablate.core.errors import AblateError
from ablate.core.paths import CONFIG_PATH_ENV, RESULTS, builtin_folder, env_list, user_folders

log = logging.getLogger(__name__)
_WARNED: set[Path] = set()  # shadowed files already noted (once per process)
_CHECKED: set[tuple] = set()  # (kind, relative, search path) already looked at for copies



def search_path(kind: str) -> list[Path]:
    """Every folder searched for `kind`, the user's first (see the module doc)."""
    plugins.load_all()
    return list(dict.fromkeys([*user_folders(kind), builtin_folder(kind),
                               *plugins.folders(kind)]))


def add_config_path(folder: str) -> None:
    """`--config-path DIR`: a folder of config groups (`DIR/filter/mine.yaml`) goes to the
    front of the path, before `$ABLATE_CONFIG_PATH`'s folders: what the command line names
    beats what the environment says (the CLI adds repeated flags last one first, so the
    first given is searched first). Kept in the environment so sweep workers see it too."""
    path = Path(folder).expanduser().resolve()
    if not path.is_dir() or not any(path.rglob("*.yaml")):
        raise AblateError(f"--config-path {folder}: no .yaml files in it; give a folder of "
                          "config groups, e.g. DIR/filter/myfilter.yaml")
    rest = [p for p in env_list(CONFIG_PATH_ENV) if p != str(path)]
    os.environ[CONFIG_PATH_ENV] = os.pathsep.join([str(path), *rest])


def find(kind: str, relative: str) -> Path | None:
    """The first `relative` file (e.g. `data/ffpp.yaml`) on the search path, or None; a
    copy it shadows is noted once."""
    path = search_path(kind)
    winner = next((f for f in path if (f / relative).is_file()), None)
    seen = (kind, relative, tuple(path))
    if winner is not None and seen not in _CHECKED:  # the others: once per search path
        _CHECKED.add(seen)
        for loser in path[path.index(winner) + 1:]:
            if (loser / relative).is_file():
                _note_shadowed(kind, relative, winner, loser)
    return None if winner is None else winner / relative


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
                found[path.stem] = folder
            else:  # never silent: say which file wins
                _note_shadowed(kind, f"{Path(group, path.name).as_posix()}", found[path.stem],
                               folder)
    return sorted(found)


def _note_shadowed(kind: str, relative: str, winner: Path, loser: Path) -> None:
    """One warning per shadowed file: `data/ffpp.yaml from DIR shadows the built-in one`."""
    if (loser / relative) in _WARNED or winner == loser:
        return
    _WARNED.add(loser / relative)
    log.warning("%s from %s shadows %s (%s); the first folder on the %s search path wins: "
                "rename one to use both", relative, winner, _whose(kind, loser),
                loser / relative, kind)


def _whose(kind: str, folder: Path) -> str:
    """How a note names the folder a shadowed file is in."""
    if folder == builtin_folder(kind):
        return "the built-in one"
    if folder in plugins.folders(kind):
        return f"plugin {folder.parent.name}'s"
    return f"the one in {folder}"


def cache_base() -> Path:
    """Where ablate caches what it builds (benchmark, file digests): $ABLATE_CACHE, else
    ./results."""
    env = os.environ.get("ABLATE_CACHE")
    return (Path(env).expanduser() if env else Path.cwd() / RESULTS).resolve()
