"""The schedule a recipe trains on: an explicit `train.steps` beats a preset's epochs (on the
command line and in a search space), giving both is one line, and `ablate train --dry-run`
prints the schedule that training then runs (ablate/schedule.py serves both)."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import TINY_RUN, run_cli

from ablate.cli import cli
from ablate.core.errors import AblateError
from ablate.model.build import native_size_note
from ablate.recipe import compose
from ablate.schedule import evaluation_steps, plan, total_steps
from ablate.space import derive_space, load_space, parse_space
from ablate.sweep.trial import trial_overrides

ROOT = Path(__file__).resolve().parents[1]


def test_an_explicit_steps_beats_a_presets_epochs():
    preset = compose(["recipe=official_code"])
    assert preset.train.epochs == 20 and total_steps(preset, 400) == 8000
    cfg = compose(["recipe=official_code", "train.steps=2"])
    assert cfg.train.epochs is None
    assert total_steps(cfg, 400) == 2
    # an explicit epochs=null beside the steps is no conflict
    assert total_steps(compose(["recipe=official_code", "train.steps=2",
                                "train.epochs=null"]), 400) == 2


SPACE = """
fixed:
  recipe: official_code
  train.steps: 3
params:
  filter: {choice: [paper, code]}
"""


def test_a_spaces_fixed_steps_and_sampled_steps_beat_the_presets_epochs():
    fixed = parse_space(SPACE, Path("s.yaml"))
    cfg = compose(trial_overrides(fixed, {"filter": "code"}, {}, seed=0))
    assert cfg.train.epochs is None and total_steps(cfg, 400) == 3

    searched = parse_space("fixed: {recipe: official_code}\n"
                           "params: {train.steps: {choice: [5, 7]}}\n", Path("s.yaml"))
    cfg = compose(trial_overrides(searched, {"train.steps": 7}, {}, seed=1))
    assert cfg.train.epochs is None and total_steps(cfg, 400) == 7


def test_sweep_set_steps_replaces_a_spaces_fixed_epochs(tmp_path):
    space = load_space(str(ROOT / "search_spaces" / "paper.yaml"))  # fixed train.epochs: 20
    assert total_steps(compose(space.overrides()), 100) == 2000
    derived = load_space(str(derive_space(space, {"train.steps": 9}, tmp_path)))
    assert "train.epochs" not in derived.fixed
    assert total_steps(compose(derived.overrides()), 100) == 9


def test_steps_and_epochs_both_given_is_one_line(tmp_path):
    with pytest.raises(AblateError, match="both given; give one"):
        compose(["recipe=official_code", "train.steps=2", "train.epochs=3"])
    both = parse_space("fixed: {train.epochs: 2}\nparams: {train.steps: {choice: [5]}}\n",
                       Path("s.yaml"))
    with pytest.raises(AblateError, match="both given"):
        compose(trial_overrides(both, {"train.steps": 5}, {}, seed=0))
    code, _, stderr = run_cli("train", "--dry-run", "train.steps=2", "train.epochs=3",
                              cwd=tmp_path, env={"ABLATE_CACHE": str(Path("results").resolve())})
    lines = [ln for ln in stderr.splitlines() if not ln.startswith("WARNING")]
    assert code == 2 and len(lines) == 1 and "give one" in lines[0], stderr


def test_the_dry_run_prints_the_schedule():
    out = CliRunner().invoke(cli, ["train", "--dry-run", *TINY_RUN, "train.eval_every=2"])
    assert out.exit_code == 0, out.output
    text = out.output[out.output.index("schedule:"):]
    assert "batch size: 4" in text
    assert "optimiser steps: 4 (train.steps=4)" in text
    assert "every 2 steps: 2 evaluations (2, 4), last at step 4" in text
    assert "checkpoint kept: one run folder at the end" in text


def test_the_schedule_with_batches_per_epoch_unknown_prints_the_formula():
    cfg = compose(["recipe=official_code"])
    lines = "\n".join(plan(cfg, None, "the manifest is not built yet").lines())
    assert "optimiser steps: 20 x B (train.epochs=20 x B batches per epoch; B unknown: " \
           "the manifest is not built yet)" in lines
    assert "20 evaluations, last at step 20 x B" in lines
    known = "\n".join(plan(cfg, 400).lines())
    assert "optimiser steps: 8000 (train.epochs=20 x 400 batches per epoch)" in known
    assert "every 400 steps: 20 evaluations, last at step 8000" in known


def test_evaluation_steps_end_at_the_last_step():
    assert evaluation_steps(8000, 400)[-1] == 8000 and len(evaluation_steps(8000, 400)) == 20
    assert evaluation_steps(10, 4) == [4, 8, 10]
    assert evaluation_steps(3, 0) == [3]


def _small_manifest(folder: Path) -> Path:
    """12 train rows of the embedded benchmark, one of them a fake without its source frame
    (training skips it: 11 usable, 2 batches of 4 per epoch; counting rows would say 3)."""
    # lazy: builds the embedded benchmark if it is missing
    from ablate.data.sources import resolve_dataset

    table = resolve_dataset("synth-blend")
    train = table[table["split"] == "train"]
    rows = [train[train["label"] == 0].head(6), train[train["label"] == 1].head(6)]
    val = table[table["split"] == "val"]
    rows += [val[val["label"] == 0].head(4), val[val["label"] == 1].head(4)]
    small = pd.concat(rows, ignore_index=True)
    fake = small.index[(small["split"] == "train") & (small["label"] == 1)][0]
    small.loc[fake, "source_path"] = None
    path = folder / "small.csv"
    small[["path", "label", "video_id", "dataset", "split", "method", "frame", "source_path",
           "target_path"]].to_csv(path, index=False)
    return path


@pytest.mark.slow
def test_the_dry_runs_schedule_is_what_training_runs(tmp_path):
    # lazy: loads torch only when called
    from ablate.train import train

    manifest = _small_manifest(tmp_path)
    tiny = [o for o in TINY_RUN if not o.startswith("train.steps=")]  # epochs instead
    overrides = [*tiny, f"data.train={manifest}", "data.max_skip_fraction=0.2",
                 "train.epochs=2", "train.eval_every=epoch", f"run.out_dir={tmp_path}",
                 "run.name=r"]
    out = CliRunner().invoke(cli, ["train", "--dry-run", *overrides])
    assert out.exit_code == 0, out.output
    text = out.output[out.output.index("schedule:"):]
    planned = int(re.search(r"optimiser steps: (\d+)", text).group(1))
    evaluations = [int(s) for s in
                   re.search(r"evaluations \(([\d, ]+)\)", text).group(1).split(", ")]

    result = train(compose(overrides), progress=False)
    assert result.steps == planned == 4, text
    assert [s for s, name, _ in result.curves if name == "val/auc"] == evaluations == [2, 4]
    assert "(train.epochs=2 x 2 batches per epoch: 11 training frames / batch 4" in text, text


class _Teacher(SimpleNamespace):
    """What native_size reads of a teacher: its name, VAE factor, denoiser and VAE configs."""


def _teacher(name: str, latent: int | None, vae: int | None = None) -> _Teacher:
    return _Teacher(name=name, vae_factor=8,
                    denoiser=SimpleNamespace(config=SimpleNamespace(sample_size=latent)),
                    vae=SimpleNamespace(config=SimpleNamespace(sample_size=vae)))


def test_a_teacher_far_from_its_native_size_is_one_warning_line():
    sdxl, sd15 = _teacher("sdxl", 128), _teacher("sd15", 64)
    note = native_size_note(sdxl, 256)
    assert note is not None and "1024 px" in note and "4x smaller" in note and "\n" not in note
    assert native_size_note(sd15, 224) is None  # the paper's own setup: no warning
    assert native_size_note(_teacher("flux", None, 1024), 256) is not None  # from the VAE
    assert native_size_note(sdxl, 256, random_init=True) is None  # random weights learned none
    assert native_size_note(_teacher("tiny-sdxl", 8), 512) is None  # twins: no native size
