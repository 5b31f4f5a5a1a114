"""Checks that what the recipes read from disk is there before a sweep starts: datasets
(manifest, benchmark family or configured root), real teacher weights, encoder weights.
Nothing is downloaded, so a missing file is a problem to report, with the key to set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ablate.core.errors import AblateError
from ablate.core.names import WEIGHT_FILE_SUFFIXES, WEIGHT_FILES
from ablate.core.schema import group_setting
from ablate.data.sources import (
    benchmark_datasets,
    dataset_overrides,
    dataset_settings,
    manifest_cache_path,
    recipe_overrides,
)
from ablate.locations import find
from ablate.recipe import is_guided, options
from ablate.space.check import _Check
from ablate.space.model import TINY_PREFIX


def _check_datasets(check: _Check, cfgs: list[Any]) -> None:
    """Every train/test set must be a manifest, a benchmark family or a ready dataset config
    (ready as the trial will read it: the train set with the recipe's data settings)."""
    try:
        benchmark = benchmark_datasets()
    except Exception as err:  # noqa: BLE001 (data layer broken: say so, do not hide the rest)
        check.notes.append(f"datasets not checked ({type(err).__name__}: {err})")
        return
    wanted: dict[tuple[str, str], dict | None] = {}
    for cfg in cfgs:
        for name in (str(cfg.data.train), *map(str, cfg.data.tests)):
            overrides = (recipe_overrides(cfg) if name == str(cfg.data.train)
                         else dataset_overrides(cfg, name))
            wanted.setdefault((name, repr(sorted((overrides or {}).items()))), overrides)
    for (name, _), overrides in wanted.items():
        path = Path(name).expanduser()
        if path.suffix in (".csv", ".parquet"):
            if not path.is_file():
                check.problem(f"dataset manifest {path} does not exist")
        elif name not in benchmark and name not in options("data"):
            check.problem(f"unknown dataset {name!r}; use a manifest path or one of: "
                          f"{', '.join(benchmark + options('data'))}")
        elif name not in benchmark:
            _check_dataset_config(check, name, overrides)


def _check_dataset_config(check: _Check, name: str, overrides: dict | None) -> None:
    """The manifest the loader will read (cached per settings) exists, or can be built."""
    try:
        settings = dataset_settings(name, overrides) or {}
    except AblateError as err:
        check.problem(str(err))
        return
    manifest = Path(settings.get("manifest") or manifest_cache_path(name, settings)).expanduser()
    if not manifest.is_file() and not settings.get("root"):
        check.problem(f"dataset {name} has no manifest ({manifest}) and no root: set "
                      f"data.roots.{name} (the extracted face frames), or root or manifest in "
                      f"{find('configs', f'data/{name}.yaml')}")


def _check_teachers(check: _Check, cfgs: list[Any]) -> None:
    for cfg in cfgs:
        if is_guided(cfg) and not str(cfg.teacher.name).startswith(TINY_PREFIX):
            _check_real_teacher(check, cfg)


def _check_encoders(check: _Check, cfgs: list[Any]) -> None:
    """A paper encoder (one that takes random_init) needs local ImageNet weights."""
    where = check.space.source_path or check.space.name
    for b in {str(c.backbone): c.backbone for c in cfgs}.values():
        if "random_init" not in b or b.get("random_init"):
            continue
        path = group_setting(b, "backbone.pretrained_path")
        if not path:
            check.problem(f"backbone {b.name} has no weights: set backbone.pretrained_path to a "
                          f"local timm file (under fixed: in {where}), or "
                          "backbone.random_init: true to train from scratch on purpose")
        elif not Path(str(path)).expanduser().is_file():
            check.problem(f"backbone.pretrained_path {path} does not exist: set it in {where} "
                          f"to your local {b.name} weights")


def _check_real_teacher(check: _Check, cfg: Any) -> None:
    """A real teacher needs local weights (or random_init); nothing is downloaded."""
    t = cfg.teacher
    if t.get("random_init"):
        return
    path = group_setting(t, "teacher.path")
    where = check.space.source_path or check.space.name
    if not path:
        check.problem(
            f"teacher {t.name} has no weights: set teacher.path to a local diffusers folder or "
            f".safetensors file (under fixed: in {where}, or path: in "
            f"configs/teacher/{t.name}.yaml), or teacher.random_init: true for speed runs; "
            "nothing is downloaded"
        )
    elif not Path(str(path)).expanduser().exists():
        check.problem(f"teacher.path {path} does not exist: set teacher.path in {where} "
                      f"to your local {t.name} weights")
    elif (not Path(str(path)).expanduser().is_dir()
          and Path(str(path)).suffix not in WEIGHT_FILE_SUFFIXES):
        check.problem(f"teacher.path {path} of teacher {t.name} must be a diffusers-layout "
                      f"folder or a {WEIGHT_FILES} file; set it in {where}")
    for key in ("vae_path", "clip_l_path", "clip_g_path", "t5_path"):  # sd3 / flux part files
        value = group_setting(t, f"teacher.{key}")
        if value and not Path(str(value)).expanduser().is_file():
            check.problem(f"teacher.{key} {value} does not exist: set it in {where} to your "
                          f"local {t.name} part file")
