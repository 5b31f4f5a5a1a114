"""Recipes: one composed Hydra config naming a variant for every slot.

`compose(overrides)` turns `["filter=code", "train.steps=10"]` into a validated
`DictConfig`; `recipe_hash` names the parts of it that define a result.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ablate import locations
from ablate.core.errors import AblateError
from ablate.core.names import GUIDANCE_ONLY, NO_GUIDE, SLOTS, is_guidance_key

# Keys that change where or how visibly a run happens, not what it computes.
# Settings that change how fast a result comes, not what it is (beyond float rounding):
# a recipe differing only in these is the same result and is reused, not re-run.
# train.precision stays in: bf16 changes numbers beyond rounding noise.
NON_RESULT_KEYS = (
    "run", "train.device", "train.log_every", "train.channels_last", "train.attention",
    "train.grad_checkpointing", "train.branch_backward", "train.compile", "train.latent_cache",
    "train.latent_cache_dir", "train.latent_cache_mb", "train.loader_workers", "train.pin_memory",
    "train.processes", "data.frame_cache_dir",
)

# `eval` keys came after recipes were first hashed: at these defaults they are left out of
# the hash (a recipe keeps the hash it had before they existed); any other value counts.
EVAL_DEFAULTS = {"eer": "interpolated", "bootstrap_unit": "auto"}


def is_guided(cfg: DictConfig) -> bool:
    """False for the plain baseline (`guide=none`)."""
    return str(cfg.guide.name) != NO_GUIDE


def config_dir() -> Path:
    """The built-in `configs/` (checkout, packaged copy, or $ABLATE_CONFIG_DIR)."""
    path = locations.builtin("configs")
    if not (path / "config.yaml").is_file():
        raise AblateError(f"no config.yaml in {path}; set ABLATE_CONFIG_DIR to the configs/ folder")
    return path


def options(group: str) -> list[str]:
    """Variant names available for one config group, over the whole config search path."""
    return locations.names("configs", group)


def _hydra_compose(overrides: list[str]) -> DictConfig:
    """Hydra's compose on the built-in configs plus the plugin and user config folders."""
    primary = config_dir()
    extra = [p for p in locations.search_path("configs") if p != primary]
    if extra and not _SHADOW_CHECKED:
        _SHADOW_CHECKED.append(True)
        locations.warn_shadowed("configs")
    if extra:  # quoted: a folder may hold commas, spaces or brackets
        quoted = ",".join(_quote(f"file://{p}") for p in extra)
        overrides = [f"hydra.searchpath=[{quoted}]", *overrides]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(primary), version_base="1.3"):
            return hydra_compose("config", overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


_SHADOW_CHECKED: list[bool] = []  # warn about shadowed config files once per process


def _quote(text: str) -> str:
    """A Hydra override string in single quotes (backslashes and quotes escaped)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def compose(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose the recipe; every Hydra complaint becomes a one-line AblateError."""
    try:
        cfg = _hydra_compose(list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        raise AblateError(_explain(err, overrides)) from None
    validate(cfg)
    return cfg


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
        valid = _keys_under(parent)
        hint = f"; valid keys{' under ' + parent if parent else ''}: {', '.join(valid)}"
        return f"unknown recipe key {key!r}{hint} (prefix with + to add a new key)"
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


def _keys_under(parent: str) -> list[str]:
    cfg = _hydra_compose([])
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return sorted(node.keys()) if isinstance(node, DictConfig) else []


def validate(cfg: DictConfig) -> None:
    """Every slot names a registered variant (checked before anything is built)."""
    from ablate.registry import registry

    for slot in SLOTS:
        if "name" not in cfg[slot]:
            raise AblateError(f"recipe slot {slot} has no `name`; pick one of {options(slot)}")
        registry(slot).get(cfg[slot].name)
    if not isinstance(cfg.image_size, int) or cfg.image_size <= 0:
        raise AblateError(f"image_size must be a positive integer, not {cfg.image_size!r}")
    _check_choices(cfg)
    if not is_guided(cfg):
        extra = sorted(f"guide.{k}" for k in cfg.guide if k != "name")
        if extra:
            raise AblateError(_no_guide_message(extra))


def _check_choices(cfg: DictConfig) -> None:
    """Settings whose bad values would only surface minutes later, when data or
    evaluation starts: the augmentation preset and the validation interval."""
    from ablate.data.augment import build_augment

    build_augment(cfg.data.get("augment", "none"), int(cfg.image_size))
    _check_eval(cfg.get("eval") or {})
    every = cfg.train.get("eval_every", 0)
    if every != "epoch" and (isinstance(every, bool) or not isinstance(every, int) or every < 0):
        raise AblateError(f"train.eval_every must be a number of steps >= 0 or 'epoch', "
                          f"not {every!r}")


def _check_eval(settings: DictConfig | dict) -> None:
    from ablate.metrics import BOOT_UNITS, EER_CONVENTIONS

    for key, allowed in (("eer", EER_CONVENTIONS), ("bootstrap_unit", BOOT_UNITS)):
        value = settings.get(key)
        if value is not None and value not in allowed:
            raise AblateError(f"eval.{key} must be one of {', '.join(allowed)}, not {value!r}")


def ignored_by_baseline(cfg: DictConfig, overrides: list[str] | tuple[str, ...]) -> list[str]:
    """Overrides that a baseline recipe composes but never uses (to warn about)."""
    if is_guided(cfg):
        return []
    return [o for o in overrides if is_guidance_key(o.lstrip("+~").split("=", 1)[0])]


# result-defining only when set; the teacher's separate part files (single-file sd3 / flux)
UNSET_KEYS = ("guide.layers", "teacher.vae_path", "teacher.clip_l_path", "teacher.clip_g_path",
              "teacher.t5_path")


def result_dict(cfg: DictConfig) -> dict:
    """The parts of a recipe that define its result (no paths, no logging; for the
    baseline, nothing of the modules it does not build)."""
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    dropped = NON_RESULT_KEYS + (() if is_guided(cfg) else GUIDANCE_ONLY)
    for dotted in dropped:
        *parents, leaf = dotted.split(".")
        node = data
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    for dotted in UNSET_KEYS:  # added after results were stored: null keeps their hashes
        parent, leaf = dotted.split(".")
        if isinstance(data.get(parent), dict) and data[parent].get(leaf, 0) is None:
            data[parent].pop(leaf)
    evals = {k: v for k, v in (data.pop("eval", None) or {}).items()
             if EVAL_DEFAULTS.get(k, object()) != v}
    if evals:
        data["eval"] = evals
    used = plugin_identities(data)
    if used:
        data["plugins"] = used
    return data


def plugin_identities(data: dict) -> dict[str, dict[str, str]]:
    """slot -> (module, version, sha256) of the plugin behind that slot's variant, for the
    slots of `data` (a result dict) whose variant a plugin registered."""
    from ablate import plugins
    from ablate.registry import registry

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
    """12 hex digits identifying a recipe's result-defining settings (seed included)."""
    blob = json.dumps(result_dict(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


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
