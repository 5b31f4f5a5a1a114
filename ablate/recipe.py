"""Recipes: one composed Hydra config naming a variant for every slot.

`compose(overrides)` turns `["filter=code", "train.steps=10"]` into a validated
`DictConfig`; `recipe_hash` names the parts of it that define a result.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_search_path import ConfigSearchPath, SearchPathQuery
from hydra.core.global_hydra import GlobalHydra
from hydra.core.plugins import Plugins
from hydra.errors import HydraException
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ablate import locations, plugins
from ablate.core import schema
from ablate.core.errors import AblateError
from ablate.core.identity import hash_result, path_free
from ablate.core.names import GUIDANCE_ONLY, NO_GUIDE, SLOTS, is_guidance_key
from ablate.core.paths import builtin_folder
from ablate.core.schema import setting
from ablate.core.selection import check_selection
from ablate.registry import registry

# What a result's identity leaves out, derived from the declarations in ablate/core/schema.py
# (never listed by hand): settings or groups with result=False, and settings with
# hash_when_default=False at their default (added after results were stored).
NON_RESULT_KEYS = schema.NON_RESULT_KEYS


def is_guided(cfg: DictConfig) -> bool:
    """False for the plain baseline (`guide=none`)."""
    return str(cfg.guide.name) != NO_GUIDE


def config_dir() -> Path:
    """The built-in `configs/` (checkout, packaged copy, or $ABLATE_CONFIG_DIR)."""
    path = builtin_folder("configs")
    if not (path / "config.yaml").is_file():
        raise AblateError(f"no config.yaml in {path}; set ABLATE_CONFIG_DIR to the configs/ folder")
    return path


def options(group: str) -> list[str]:
    """Variant names available for one config group, over the whole config search path."""
    return locations.names("configs", group)


def _hydra_compose(overrides: list[str]) -> DictConfig:
    """Hydra's compose over the config search path in its order (ablate.locations: the
    user's folders, the built-in one, plugins'), so a user's `filter/paper.yaml` beats the
    built-in one here as it does in `locations.find` (see _SearchOrder)."""
    builtin = config_dir().resolve()
    folders = list(dict.fromkeys(p.resolve() for p in locations.search_path("configs")))
    if len(folders) > 1 and not _SHADOW_CHECKED:
        _SHADOW_CHECKED.append(True)
        locations.warn_shadowed("configs")
    at = folders.index(builtin)
    _SearchOrder.before, _SearchOrder.after = folders[:at], folders[at + 1:]
    _SearchOrder.register()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(builtin), version_base="1.3"):
            return hydra_compose("config", overrides=_open_roots(overrides))
    finally:
        GlobalHydra.instance().clear()
        _SearchOrder.before, _SearchOrder.after = [], []


class _SearchOrder(SearchPathPlugin):
    """Hydra's config search path in ablate's order. Hydra's primary folder is the built-in
    one (it holds config.yaml, which Hydra looks for there first), and Hydra puts every
    `hydra.searchpath` entry after it, which would let a built-in file shadow the user's
    (the bug this replaces). A SearchPathPlugin, registered through Hydra's public
    `Plugins.register`, may insert folders before the primary one: the user's go there, the
    plugins' after it. The folders are set by _hydra_compose for one compose only."""

    before: ClassVar[list[Path]] = []
    after: ClassVar[list[Path]] = []
    _registered: ClassVar[bool] = False

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        main = SearchPathQuery(provider="main", path=None)
        for folder in self.before:  # each inserted just before the primary: order kept
            search_path.prepend("ablate", f"file://{folder}", anchor=main)
        for folder in reversed(self.after):  # each inserted just after it: reversed
            search_path.append("ablate", f"file://{folder}", anchor=main)

    @classmethod
    def register(cls) -> None:
        """Once per process (Hydra would call a plugin registered twice twice)."""
        if not cls._registered:
            Plugins.instance().register(cls)
            cls._registered = True


_SHADOW_CHECKED: list[bool] = []  # warn about shadowed config files once per process


def _open_roots(overrides: list[str]) -> list[str]:
    """`data.roots.NAME=DIR`, and a setting declared after the config files were written
    (`backbone.tuning=lora`, `loss.uniformity=0.5`: `hash_when_default=False`, so the files
    leave it out), as Hydra's `++` (add or replace): struct mode refuses a key the files lack
    without a `+`; the documented form should just work, and `+`/`++` forms stay as given.
    The guide's keys are left alone: `guide=none guide.layers=3` must still be refused."""
    return [f"++{o}" if _open_key(o.split("=", 1)[0]) else o for o in overrides]


_LATE_KEYS = tuple(k for k in schema.OMIT_AT_DEFAULT if not k.startswith("guide."))


def _open_key(key: str) -> bool:
    return key == "data.roots" or key.startswith("data.roots.") or key in _LATE_KEYS


def data_root(cfg: DictConfig | dict, name: str) -> str | None:
    """The root `data.roots.<name>` gives dataset `name` (None: the dataset config's own
    `root:`). A folder that does not exist is one line saying what to set: the recipe
    names it, so building a manifest from it would only fail later, less clearly."""
    roots = setting(cfg, "data.roots") or {}
    root = roots.get(name) if hasattr(roots, "get") else None
    if root is None:
        return None
    if not Path(str(root)).expanduser().is_dir():
        raise AblateError(
            f"data.roots.{name}={root}: no such folder; give the folder of {name}'s extracted "
            f"face frames (docs/data.md), or drop data.roots.{name} to use the root in "
            f"{locations.find('configs', f'data/{name}.yaml') or f'configs/data/{name}.yaml'}")
    return str(Path(str(root)).expanduser())


def _check_roots(cfg: DictConfig) -> None:
    """data.roots names dataset configs (a typo would be silently unused) and folders that
    exist (data_root says which does not)."""
    roots = setting(cfg, "data.roots")
    if roots is None:
        return
    if not isinstance(roots, DictConfig | dict):
        raise AblateError(f"data.roots must map dataset names to folders, e.g. "
                          f"data.roots.ffpp=/data/ffpp, not {roots!r}")
    known = options("data")
    for name in roots:
        if name not in known:
            raise AblateError(f"data.roots.{name}: no dataset config {name!r} "
                              f"(configs/data/{name}.yaml); dataset configs: {', '.join(known)}")
        data_root(cfg, str(name))


def compose(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose the recipe; every Hydra complaint becomes a one-line AblateError."""
    try:
        cfg = _hydra_compose(list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        raise AblateError(_explain(err, overrides)) from None
    explicit_steps_win(cfg, overrides)
    validate(cfg)
    return cfg


def override_keys(overrides: list[str] | tuple[str, ...]) -> set[str]:
    """The dotted keys the overrides set (`+train.steps=5` -> train.steps; `~key` removes)."""
    return {o.lstrip("+").split("=", 1)[0] for o in overrides
            if "=" in o and not o.startswith("~")}


def explicit_steps_win(cfg: DictConfig, overrides: list[str] | tuple[str, ...]) -> None:
    """An explicit setting beats what a preset implies (docs/recipe.md): `train.steps` given
    in the overrides (command line, a space's fixed settings or params) and `train.epochs`
    not, the preset's epochs (which would override the steps) become null. Both given:
    one line saying to give one."""
    given = override_keys(overrides)
    if "train.steps" not in given or cfg.train.get("steps") is None:
        return
    if "train.epochs" in given:
        if cfg.train.get("epochs") is not None:
            raise AblateError(
                f"train.steps={cfg.train.steps} and train.epochs={cfg.train.epochs} are both "
                "given; give one (train.steps: optimiser steps, train.epochs: passes over the "
                "training set), or set the other to null")
        return
    if cfg.train.get("epochs") is not None:
        cfg.train.epochs = None


def _explain(err: Exception, overrides: list[str] | tuple[str, ...]) -> str:
    text = str(err).strip()
    missing = re.search(r"Could not find '(\w+)/(\S+)'", text)
    if missing:
        group, name = missing.groups()
        return f"unknown {group} {name!r}; valid {group} variants: {', '.join(options(group))}"
    bad_key = re.search(r"Could not override '([\w.]+)'", text) or re.search(
        r"Key '([\w.]+)' is not in struct", text
    )
    if bad_key:
        key = bad_key.group(1)
        if key.startswith("guide.") and _composes_without_guide(overrides, key):
            return _no_guide_message([key])
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        valid = valid_keys(_composed_without(overrides, key), parent)
        if valid is None or key.rsplit(".", 1)[-1] in valid:  # known, not in the YAML
            return (f"recipe key {key!r} is not in the composed recipe's config files; add it "
                    f"with +{key}=VALUE")
        return schema.unknown_key_message(key, valid)
    first = text.splitlines()[0] if text else type(err).__name__
    return f"cannot compose the recipe from {' '.join(overrides) or 'the defaults'}: {first}"


def _no_guide_message(keys: list[str]) -> str:
    return (f"{', '.join(keys)} does nothing without a guide (guide=none is the plain baseline); "
            "drop it, or pick a guide: guide=controlnet or guide=adapter")


def _composes_without_guide(overrides: list[str] | tuple[str, ...], key: str) -> bool:
    """Whether the overrides minus those setting `key` compose to guide=none."""
    rest = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] != key]
    if len(rest) == len(overrides):
        return False
    try:
        return not is_guided(compose(rest))
    except AblateError:
        return False


def _composed_without(overrides: list[str] | tuple[str, ...], key: str) -> DictConfig | None:
    """The recipe the overrides compose to without those on `key` (else the defaults): the
    variants whose keys a bad key is checked against."""
    rest = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] != key]
    for attempt in (rest, []):
        try:
            return _hydra_compose(attempt)
        except (HydraException, OmegaConfBaseException):
            continue
    return None


def valid_keys(cfg: DictConfig | None, parent: str) -> list[str] | None:
    """The keys a recipe may hold directly under `parent` ("" = the top level): a group's
    declared settings (ablate/core/schema.py); for a slot, `name` and the arguments of the
    variant `cfg` names (less those its builder passes itself). None: anything goes (a
    variant whose factory takes **kwargs)."""
    if parent not in SLOTS or cfg is None:
        return schema.known_keys(parent)

    name = cfg[parent].get("name") if isinstance(cfg.get(parent), DictConfig) else None
    if name is None or name not in registry(parent):
        return schema.known_keys(parent)
    entry = registry(parent).get(name)
    if entry.takes_any_key:
        return None
    return ["name", *schema.BUILDER_APPLIED.get(parent, ()),
            *(k for k in entry.arguments() if k not in schema.BUILDER_ARGUMENTS[parent])]


def check_keys(cfg: DictConfig) -> None:
    """Every key of a composed recipe is declared (a group's or top-level setting) or taken by
    its slot's variant: a typo in a config file or a `+key=` override is one line naming the
    nearest valid key, never a setting silently ignored."""
    for key in cfg:
        if key not in schema.known_keys():
            raise AblateError(schema.unknown_key_message(str(key), schema.known_keys()))
    for parent in (*SLOTS, *schema.GROUPS):
        node = cfg.get(parent)
        if not isinstance(node, DictConfig):
            continue
        valid = valid_keys(cfg, parent)
        for key in node:
            if valid is not None and key not in valid:
                raise AblateError(schema.unknown_key_message(f"{parent}.{key}", valid))
    _check_present(cfg)


def _check_present(cfg: DictConfig) -> None:
    """A composed recipe carries every result-defining group setting. A missing one would be
    read as its declared default while the recipe hashes as if it had no value, so a result
    stored under that hash could be reused for a run that trains differently: say so, once,
    rather than fill it in (setting() falls back only for recipes saved before a setting
    existed, which are read, never composed)."""
    for name, group in schema.GROUPS.items():
        node = cfg.get(name)
        if not group.result or not isinstance(node, DictConfig):
            continue
        for key, declared in group.settings.items():
            if declared.result and declared.hash_when_default and key not in node:
                raise AblateError(
                    f"recipe setting {name}.{key} is missing from the composed recipe (a "
                    f"{name} config file without it?); add `{key}: {declared.default}` to that "
                    f"file, or set {name}.{key}=VALUE")


def validate(cfg: DictConfig) -> None:
    """Every slot names a registered variant and every key is known (checked before
    anything is built)."""
    for slot in SLOTS:
        if "name" not in cfg[slot]:
            raise AblateError(f"recipe slot {slot} has no `name`; pick one of {options(slot)}")
        registry(slot).get(cfg[slot].name)
    if not is_guided(cfg):
        extra = sorted(f"guide.{k}" for k in cfg.guide if k != "name")
        if extra:
            raise AblateError(_no_guide_message(extra))
    check_keys(cfg)
    _check_roots(cfg)
    if not isinstance(cfg.image_size, int) or cfg.image_size <= 0:
        raise AblateError(f"image_size must be a positive integer, not {cfg.image_size!r}")
    _check_choices(cfg)
    schema.timestep_range(cfg)  # the guided step's range of the teacher's schedule


def _check_choices(cfg: DictConfig) -> None:
    """Settings whose bad values would only surface minutes later, when data or
    evaluation starts: those with declared choices (the augmentation preset, the EER
    convention, the bootstrap unit), the schedule's length and the validation interval,
    and the checkpoint selection rule with its proxy (ablate/core/selection.py)."""
    schema.check_choices(cfg)
    check_selection(cfg)
    for key in ("train.steps", "train.epochs"):
        value = setting(cfg, key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise AblateError(f"{key} must be a positive integer or null, not {value!r}")
    if setting(cfg, "train.steps") is None and setting(cfg, "train.epochs") is None:
        raise AblateError("set train.steps (a positive integer) or train.epochs")
    every = setting(cfg, "train.eval_every")
    if every != "epoch" and (isinstance(every, bool) or not isinstance(every, int) or every < 0):
        raise AblateError(f"train.eval_every must be a number of steps >= 0 or 'epoch', "
                          f"not {every!r}")


def ignored_by_baseline(cfg: DictConfig, overrides: list[str] | tuple[str, ...]) -> list[str]:
    """Overrides that a baseline recipe composes but never uses (to warn about)."""
    if is_guided(cfg):
        return []
    return [o for o in overrides if is_guidance_key(o.lstrip("+~").split("=", 1)[0])]


def result_dict(cfg: DictConfig) -> dict:
    """The parts of a recipe that define its result (no paths: a file setting reads as set,
    a manifest as its file name; no logging; for the baseline, nothing of the modules it
    does not build)."""
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    dropped = schema.non_result_keys() + (() if is_guided(cfg) else GUIDANCE_ONLY)
    for dotted in dropped:
        *parents, leaf = dotted.split(".")
        node = data
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    for dotted, default in schema.omit_at_default().items():  # came later: not at the default
        parent, leaf = dotted.split(".")
        node = data.get(parent)
        if isinstance(node, dict) and leaf in node and _plain(node[leaf]) == _plain(default):
            node.pop(leaf)
    if not data.get("eval", True):  # every eval key at its default (or eval: null)
        data.pop("eval")
    used = plugin_identities(data)
    if used:
        data["plugins"] = used
    return path_free(data)


def plugin_identities(data: dict) -> dict[str, dict[str, str]]:
    """slot -> (module, version, sha256) of the plugin behind that slot's variant, for the
    slots of `data` (a result dict) whose variant a plugin registered."""
    out = {}
    for slot in SLOTS:
        name = (data.get(slot) or {}).get("name") if isinstance(data.get(slot), dict) else None
        if name is None or name not in registry(slot):
            continue
        key = registry(slot).get(name).plugin
        if key is not None:  # no plugin object: registered outside a plugin load
            plugin = plugins.get(key)
            out[slot] = plugin.identity() if plugin else {"module": key, "version": "unknown"}
    return out


def recipe_hash(cfg: DictConfig) -> str:
    """12 hex digits identifying a recipe's result-defining settings (seed included), with
    no path in them: a weights file or manifest counts as set, its bytes join the reuse key
    (ablate/core/identity.py), so a run moved to another mount point keeps its hash."""
    return hash_result(result_dict(cfg))


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def load_yaml(path: str | Path) -> DictConfig:
    """A recipe saved beside a checkpoint."""
    try:
        cfg = OmegaConf.load(path)
    except (OSError, OmegaConfBaseException) as err:
        raise AblateError(f"cannot read recipe {path}: {err}") from None
    assert isinstance(cfg, DictConfig)
    return cfg


def _plain(value: object) -> object:
    """Sequences compare as lists: a YAML list equals a setting's tuple default."""
    return list(value) if isinstance(value, list | tuple) else value
