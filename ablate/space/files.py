"""Finding search spaces by name or path, loading them, and deriving a copy with more
fixed settings (`--set`); the search path itself lives in ablate.locations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ablate.core.errors import AblateError
from ablate.locations import find, names, search_path
from ablate.space.model import SearchSpace
from ablate.space.parse import parse_space
from ablate.space.reader import _read_yaml, _Where


def spaces_dirs() -> list[Path]:
    """Folders searched for spaces by name, first one first: $ABLATE_SPACES_PATH's, the
    built-in one, plugins' (ablate.locations)."""
    return search_path("search_spaces")


def list_spaces() -> list[tuple[str, str]]:
    """(name, description) of every space on the search path; a broken file says so."""
    out = []
    for name in names("search_spaces"):
        path = find("search_spaces", f"{name}.yaml")
        try:
            space = load_space(str(path))
            size = (f"  [{space.design.kind} design: {space.design.size} cells x "
                    f"{space.seeds} seeds]" if space.design else "")
            out.append((name, space.description + size))
        except AblateError as err:
            out.append((name, f"(invalid: {err})"))
    return out


def load_space(name_or_path: str | Path) -> SearchSpace:
    """Parse a space by name (search_spaces/<name>.yaml) or by file path, strictly."""
    path = _find(str(name_or_path))
    try:
        text = path.read_text()
    except OSError as err:
        raise AblateError(f"cannot read search space {path}: {err.strerror}") from None
    return parse_space(text, path)


def _find(name_or_path: str) -> Path:
    path = Path(name_or_path).expanduser()
    looks_like_path = path.suffix in (".yaml", ".yml") or "/" in name_or_path
    if looks_like_path or path.is_file():
        if not path.is_file():
            raise AblateError(f"search space file {path} does not exist")
        return path

    candidate = find("search_spaces", f"{name_or_path}.yaml")
    if candidate is None:
        known = ", ".join(names("search_spaces")) or "none"
        where = ", ".join(str(p) for p in spaces_dirs())
        raise AblateError(
            f"unknown search space {name_or_path!r}; spaces in {where}: {known} "
            "(or give a path to a .yaml file)"
        )
    return candidate


def parse_settings(items: list[str] | tuple[str, ...], flag: str) -> dict[str, object]:
    """`key=value` items as a space's `fixed` mapping (values typed as YAML)."""
    fixed: dict[str, object] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise AblateError(f"{flag} {item!r} is not key=value")
        fixed[key] = yaml.safe_load(value) if value else None
    return fixed


# A recipe takes its length from one of these (ablate.recipe.explicit_steps_win): `--set` of
# one replaces the space's fixed other, as the command line replaces a preset's.
ONE_OF = ("train.steps", "train.epochs")


def displaced_by(settings: dict[str, Any]) -> set[str]:
    """The fixed keys that `--set` settings replace without naming them: the other of
    train.steps / train.epochs when one is set (not to null) and the other is not given."""
    given = [k for k in ONE_OF if settings.get(k) is not None]
    return {k for k in ONE_OF if k not in settings} if len(given) == 1 else set()


def derive_space(space: SearchSpace, settings: dict[str, Any], folder: Path) -> Path:
    """A copy of `space` with more fixed settings, written to folder/<space name>.yaml.

    `ablate sweep --set KEY=VALUE` uses it: workers read the derived file, the
    space keeps its name, and the file stays beside the results as provenance. A setting
    given replaces the fixed one it displaces (`displaced_by`: --set train.steps drops a fixed
    train.epochs).
    """
    if space.source_path is None:
        raise AblateError(f"search space {space.name} has no file to derive from")
    data = _read_yaml(space.source_path.read_text(), _Where(space.source_path))
    searched = sorted(set(settings) & {p.key for p in space.params})
    if searched:
        raise AblateError(f"--set {searched[0]} fixes a key that space {space.name} searches; "
                          "copy the space file and edit it instead")
    fixed = {k: v for k, v in (data.get("fixed") or {}).items()
             if k not in displaced_by(settings)}
    data["fixed"] = {**fixed, **settings}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{space.name}.yaml"
    path.write_text(f"# {space.source_path} with --set {settings}\n"
                    + yaml.safe_dump(data, sort_keys=False))
    return path
