"""A single run that survives a crash: its resumable state, kept in its own run folder.

`ablate train` writes, besides what `ablate.checkpoint` describes:

    <run>/recipe.yaml   when training starts (rewritten at the end): the folder alone can resume
    <run>/state/        the full training state of the last validation, in the one format a
                        sweep's trial checkpoints use (ablate/train_state.py), replaced at each
    <run>/run.json      when the run ends: from then on it is finished and `state/` is removed

So a folder with `run.json` is finished, one with a state can be resumed, one with only
`recipe.yaml` stopped before its first validation (nothing to resume from).

A state is replaced so that no moment lacks a complete one, whatever kills the process: the
new state goes to `.state-new` (never read), the current one is renamed to `.state-old`, the
new one to `state`, and the old one is removed. Each rename is atomic, so after a `kill -9`
`state` or else `.state-old` is complete (`latest_state`). Not flushed to disk (no fsync): a
power cut may lose the newest state, as it may lose any file just written.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from ablate.checkpoint import RECIPE, RUN_INFO
from ablate.core.errors import AblateError
from ablate.core.files import write_atomic
from ablate.recipe import compose, load_yaml, recipe_hash, to_yaml, validate
from ablate.train import run_name
from ablate.train_state import META

STATE = "state"
NEW = ".state-new"  # being written: never read
OLD = ".state-old"  # the previous state while `state` is swapped in
FINISHED, RESUMABLE, NO_STATE = "finished", "resumable", "no state"


@dataclass(frozen=True)
class RunFolder:
    """What a run folder holds: `status` (FINISHED, RESUMABLE or NO_STATE) and, when
    resumable, the state to resume from and its step."""

    folder: Path
    status: str
    state: Path | None = None
    step: int | None = None


# ---------------------------------------------------------------- keeping the state


def keep_state(folder: Path, given: Path) -> Path:
    """Make `given` (a state folder `train(on_checkpoint=...)` handed over, which is ours
    until the call returns) the run's state, replacing the last one (see the module doc)."""
    new, current, old = folder / NEW, folder / STATE, folder / OLD
    shutil.rmtree(new, ignore_errors=True)  # a half-written one a kill left behind
    shutil.move(str(given), str(new))  # a rename on one file system, else a copy
    if current.is_dir():
        shutil.rmtree(old, ignore_errors=True)  # `state` is complete: this one is not needed
        os.replace(current, old)
    os.replace(new, current)
    shutil.rmtree(old, ignore_errors=True)
    return current


def latest_state(folder: Path) -> Path | None:
    """The complete state in `folder`: `state`, else `.state-old` (a kill between the two
    renames of `keep_state`), else None."""
    for name in (STATE, OLD):
        if (folder / name / META).is_file():
            return folder / name
    return None


def finish(folder: Path, code_version: str) -> None:
    """Mark a run that trained to its end finished: run.json (written by `train`) also names
    the code version that finished it (what `ablate record` stores with its numbers), and
    every state goes (a finished run is never resumed)."""
    info_file = folder / RUN_INFO
    info = json.loads(info_file.read_text())
    info["code_version"] = code_version
    write_atomic(info_file, json.dumps(info, indent=2, default=str).encode())
    for name in (STATE, OLD, NEW):
        shutil.rmtree(folder / name, ignore_errors=True)


def state_step(state: Path) -> int:
    """The training step a state was saved at."""
    return int(json.loads((state / META).read_text())["step"])


# ---------------------------------------------------------------- what a folder holds


def inspect_run(path: str | Path) -> RunFolder:
    """What the run folder `path` holds; one line when it is not a run folder."""
    folder = Path(path).expanduser()
    if not (folder / RECIPE).is_file():
        raise AblateError(f"{path} is not a run folder (no {RECIPE}); give the folder "
                          "`ablate train` printed (results/runs/<name>)")
    if (folder / RUN_INFO).is_file():
        return RunFolder(folder, FINISHED)
    state = latest_state(folder)
    if state is None:
        return RunFolder(folder, NO_STATE)
    return RunFolder(folder, RESUMABLE, state, state_step(state))


def resumable(path: str | Path) -> RunFolder:
    """The run at `path`, refused in one line unless it can be resumed."""
    run = inspect_run(path)
    if run.status == FINISHED:
        raise AblateError(f"run {run.folder} has finished ({RUN_INFO} is written); there is "
                          f"nothing to resume. Evaluate it with `ablate eval {run.folder}` or "
                          f"record it with `ablate record {run.folder}`")
    if run.status == NO_STATE:
        raise AblateError(f"run {run.folder} has no saved state: it stopped before its first "
                          "validation (train.eval_every), so there is nothing to resume from. "
                          f"Train it again (its recipe: {run.folder / RECIPE})")
    return run


def taken_message(folder: Path) -> str | None:
    """Why a new run cannot be written into `folder` (None: it can)."""
    try:
        run = inspect_run(folder)
    except AblateError:
        return None  # no run in it (absent, empty, or other files)
    if run.status == RESUMABLE:
        return (f"{folder} holds an unfinished run (saved at step {run.step}); continue it "
                f"with `ablate train --resume {folder}`, or choose another run.name")
    return (f"{folder} already holds a{' finished' if run.status == FINISHED else 'n unfinished'}"
            " run; choose another run.name (or remove that folder)")


# ---------------------------------------------------------------- starting a run


def plan_folder(cfg: DictConfig) -> Path:
    """Fix the run's folder: sets `run.name`, so the recipe saved in it (and so a resume)
    names it. A name you gave must not hold a run already; a generated one (timestamp and
    recipe hash) that does gets a suffix (two runs of one recipe started in one second)."""
    out = Path(str(cfg.run.out_dir)).expanduser()
    name = run_name(cfg)
    why = taken_message(out / name)
    if why is not None:
        if cfg.run.name is not None:
            raise AblateError(why)
        name = next(f"{name}-{n}" for n in range(2, 10_000)
                    if taken_message(out / f"{name}-{n}") is None)
    cfg.run.name = name
    return out / name


def write_recipe(cfg: DictConfig, folder: Path) -> list[Path]:
    """The run's recipe, in its folder before training starts (renamed into place); returns
    the folders this created, deepest first (for `forget_unstarted`)."""
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / RECIPE, to_yaml(cfg).encode())
    return created


def forget_unstarted(folder: Path, created: list[Path]) -> None:
    """A run that failed before its first saved state (bad data, Ctrl-C while loading) has
    nothing to resume: remove its recipe and the folders `write_recipe` created, so bad input
    leaves no run folder behind. A run with a state stays resumable."""
    if latest_state(folder) is not None or (folder / RUN_INFO).exists():
        return
    (folder / RECIPE).unlink(missing_ok=True)
    for path in created:
        try:
            path.rmdir()
        except OSError:  # not empty: something else is in it
            return


# ---------------------------------------------------------------- the recipe a resume uses


def resume_recipe(folder: Path, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The run's own recipe (its recipe.yaml) with `overrides` applied, which may change only
    what leaves the result alone (device, speed, paths): one line naming both recipe hashes
    otherwise. Its run.name and run.out_dir point at `folder`, wherever it was started."""
    saved = load_yaml(folder / RECIPE)
    cfg = apply_overrides(saved.copy(), list(overrides))
    was, now = recipe_hash(saved), recipe_hash(cfg)
    if was != now:
        raise AblateError(
            f"run {folder} was trained with recipe {was}; these overrides ({' '.join(overrides)})"
            f" give recipe {now}. --resume continues the same recipe: give only settings that "
            "leave the result alone (train.device, loader workers, caches), or train the new "
            "recipe without --resume")
    cfg.run.name, cfg.run.out_dir = folder.name, str(folder.parent)
    return cfg


def apply_overrides(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """Hydra overrides on a saved recipe: `slot=variant` (that variant's config file, as
    `ablate train` would compose it) first, then `key=value` settings, as Hydra orders them."""
    if not overrides:
        return cfg
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as err:
        raise AblateError(f"cannot read the overrides {' '.join(overrides)}: "
                          f"{str(err).strip().splitlines()[0]}") from None
    for item in parsed:
        key = item.key_or_group
        if key.split(".")[0] == "run":
            raise AblateError(f"{item.input_line}: a resumed run stays in its folder; give "
                              "no run.* override with --resume")
        if item.is_delete() or item.is_sweep_override():
            raise AblateError(f"{item.input_line}: --resume takes plain key=value overrides")
        if key == "recipe":
            raise AblateError(f"{item.input_line}: a preset sets many settings at once; "
                              "--resume continues the run's own recipe")
    groups = [o for o in parsed if isinstance(cfg.get(o.key_or_group), DictConfig)]
    for item in groups:
        cfg[item.key_or_group] = compose([item.input_line])[item.key_or_group]
    for item in (o for o in parsed if all(o is not g for g in groups)):
        key = item.key_or_group
        if OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT and not item.is_add():
            raise AblateError(f"{key} is not a setting of this run's recipe; check the key "
                              "(its recipe.yaml lists them)")
        OmegaConf.update(cfg, key, item.value(), merge=False, force_add=item.is_add())
    validate(cfg)
    return cfg


_ABSENT = object()
