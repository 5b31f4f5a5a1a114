"""Variants from the user's own code: plugins that register into ablate's registries.

A plugin is a module whose import registers variants (`@FILTERS.register(...)`).
Three ways in, all loaded once, before any registry lookup:

- an installed package's entry point in the group `ablate.variants`
  (`[project.entry-points."ablate.variants"] mine = "mypkg.variants"`);
- `$ABLATE_PLUGINS`: module names or `.py` files, separated by `os.pathsep`;
- `ablate --plugin MODULE_OR_FILE` (the CLI adds it to `$ABLATE_PLUGINS`, so Ray
  workers started from this process load it too).

A plugin's package may carry `configs/` (Hydra groups, e.g. `configs/filter/mine.yaml`)
and `search_spaces/` folders beside its module; they join the search paths. What a
plugin is (module, version, sha256 of its files) is recorded with every result that
uses one of its variants, so a changed plugin never passes for the old one.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from ablate.core.errors import AblateError, first_line

LOOSE_FILE_PREFIX = "ablate_plugin_"  # the module name of a plugin loaded from a file

GROUP = "ablate.variants"
ENV = "ABLATE_PLUGINS"


@dataclass(frozen=True)
class Plugin:
    """One loaded plugin and what identifies its code."""

    name: str  # entry point name, or the module name
    module: str
    version: str  # distribution version, or "file" for a loose script
    sha256: str  # of the plugin's source files (its package folder, or the file)
    root: Path  # the folder that may hold configs/ and search_spaces/

    def identity(self) -> dict[str, str]:
        return {"module": self.module, "version": self.version, "sha256": self.sha256[:16]}


_LOADED: dict[str, Plugin] = {}  # module -> plugin
_DONE: set[str] = set()  # specs already handled (entry points and env items)
_CURRENT: list[str] = []  # modules of the plugins being imported right now (innermost last)


def load_all() -> list[Plugin]:
    """Import every plugin (entry points, then $ABLATE_PLUGINS) not loaded yet, after
    ablate's own variants (so a name clash is always reported against the plugin)."""
    # lazy: loads torch only when called
    import ablate.model  # noqa: F401

    for ep in _entry_points():
        key = f"ep:{ep.name}={ep.value}"
        if key not in _DONE:
            _DONE.add(key)
            dist = ep.dist.version if ep.dist is not None else "unknown"
            _load_module(ep.module, ep.name, dist)  # `pkg.mod` or `pkg.mod:attr`: the module
    for item in explicit():
        key = f"env:{item}"
        if key not in _DONE:
            _DONE.add(key)
            _load_item(item)
    return list(_LOADED.values())


def explicit() -> list[str]:
    """The $ABLATE_PLUGINS items, in order."""
    return [p for p in os.environ.get(ENV, "").split(os.pathsep) if p.strip()]


def add(item: str) -> None:
    """`--plugin ITEM`: load it now and keep it in $ABLATE_PLUGINS for child processes."""
    item = str(Path(item).expanduser().resolve()) if item.endswith(".py") else item
    if item not in explicit():
        os.environ[ENV] = os.pathsep.join([*explicit(), item])
    load_all()


def loading(factory: object = None) -> str | None:
    """Who is registering a variant right now: the plugin being imported (its module), None
    for ablate's own modules, else the factory's module (registered outside a plugin load,
    e.g. a notebook import: recorded by module, with no version)."""
    if _CURRENT:
        return _CURRENT[-1]
    module = str(getattr(factory, "__module__", "") or "")
    return None if module == "ablate" or module.startswith("ablate.") else module


def get(module: str) -> Plugin | None:
    """The loaded plugin with this module, or None."""
    return _LOADED.get(module)


def folders(kind: str) -> list[Path]:
    """Existing `configs` or `search_spaces` folders of the loaded plugins."""
    out = []
    for plugin in _LOADED.values():
        if (plugin.root / kind).is_dir():
            out.append(plugin.root / kind)
    return out


# ------------------------------------------------------------------ internals


@functools.cache
def _entry_points() -> list[metadata.EntryPoint]:
    """Scanned once per process (a scan reads every installed distribution)."""
    return sorted(metadata.entry_points(group=GROUP), key=lambda ep: ep.name)


def _load_item(item: str) -> None:
    if item.endswith(".py"):
        path = Path(item).expanduser()
        if not path.is_file():
            raise AblateError(f"plugin file {path} does not exist; give a .py file or an "
                              "importable module name in --plugin / $ABLATE_PLUGINS")
        _load_file(path)
    else:
        _load_module(item, item, _dist_version(item))


def _load_module(module: str, name: str, version: str) -> None:
    if module in _LOADED:
        return
    try:
        imported = _import(name, module, lambda: importlib.import_module(module))
    except ModuleNotFoundError as err:
        if err.name and (module == err.name or module.startswith(err.name + ".")):
            raise AblateError(f"plugin {name}: no module named {module!r}; install its package "
                              "or fix --plugin / $ABLATE_PLUGINS / its entry point") from None
        raise AblateError(f"plugin {name}: importing {module} failed: {err}") from None
    top = sys.modules.get(module.split(".")[0], imported)
    source = Path(getattr(top, "__file__", None) or getattr(imported, "__file__", "")).resolve()
    if source.name == "__init__.py":  # a package: all its code, its own configs/ and spaces
        root, files = source.parent, sorted(source.parent.rglob("*.py"))
    else:  # a top-level single-file module: no folder of its own to search
        root, files = source.with_suffix(""), [source]
    _LOADED[module] = Plugin(name, module, version, _sha256(files, root), root)


def _load_file(path: Path) -> None:
    path = path.resolve()
    tag = hashlib.sha1(str(path).encode()).hexdigest()[:8]  # two files may share a name
    module = f"{LOOSE_FILE_PREFIX}{path.stem}_{tag}"
    if module in _LOADED:
        return
    spec = importlib.util.spec_from_file_location(module, path)
    assert spec is not None and spec.loader is not None
    loaded_module = importlib.util.module_from_spec(spec)
    sys.modules[module] = loaded_module

    def run() -> None:
        spec.loader.exec_module(loaded_module)  # type: ignore[union-attr]

    try:
        _import(path.name, module, run)
    except ModuleNotFoundError as err:
        raise AblateError(f"plugin {path.name}: importing it failed: {err}") from None
    # the file's own folder holds configs/ and search_spaces/ only when named <stem>/
    _LOADED[module] = Plugin(path.name, module, "file", _sha256([path], path.parent),
                             path.parent / path.stem)


def _import(name: str, module: str, action):  # noqa: ANN001, ANN202
    """Run a plugin's import (its registrations recorded as its own); a registry clash or
    any error in the plugin names the plugin."""
    _CURRENT.append(module)
    try:
        return action()
    except AblateError as err:
        raise AblateError(f"plugin {name}: {err}") from None
    except ModuleNotFoundError:
        raise
    except ValueError as err:
        hint = "; rename the variant" if "registered twice" in str(err) else ""
        raise AblateError(f"plugin {name}: {err}{hint}") from None
    except Exception as err:  # noqa: BLE001 - whatever the user's module raises
        first = first_line(err, "")
        raise AblateError(f"plugin {name}: importing it failed: {type(err).__name__}: "
                          f"{first}") from None
    finally:
        _CURRENT.pop()


def _dist_version(module: str) -> str:
    top = module.split(".")[0]
    for dist in metadata.packages_distributions().get(top, []):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


def _sha256(files: list[Path], root: Path) -> str:
    """Of the files' paths relative to `root` and their bytes (not where they are installed)."""
    h = hashlib.sha256()
    for file in files:
        h.update(str(file.relative_to(root) if file.is_relative_to(root) else file.name).encode())
        h.update(file.read_bytes())
    return h.hexdigest()
