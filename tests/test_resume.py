"""Resumable training: a run resumed from an evaluation's saved state ends exactly where the
uninterrupted run ends (CPU: bitwise equal weights, the same curves and selection), and the
loader skips the batches before the resume point without loading them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import Dataset

from ablate.checkpoint import RUN_INFO, TRAINABLE
from ablate.core.errors import AblateError
from ablate.data.dataset import ManifestDataset
from ablate.data.loader import make_loader, train_and_val
from ablate.data.sampler import ResumableLoader
from ablate.model.build import build_detector
from ablate.recipe import compose
from ablate.train import train
from tests.conftest import fixed_batch

# 12 training frames in batches of 4: 3 batches an epoch, so 8 steps cross two epoch ends
TINY = ["backbone=tiny", "image_size=32", "train=cpu", "train.device=cpu", "train.steps=8",
        "train.batch_size=4", "train.eval_every=2", "train.log_every=1",
        "data.train=synth-blend", "data.augment=flip"]
STEPS, BATCH = 8, 4


class Recorder:
    """Copies of every state folder, the live trainable weights at the last step, and the
    number of frames the training set decoded (monkeypatched in by `record`)."""

    def __init__(self, out: Path, last: int) -> None:
        self.out, self.last, self.states, self.given, self.items = out, last, {}, [], 0
        self.detector = None
        self.final: dict[str, torch.Tensor] = {}

    def on_eval(self, step: int, auc: float) -> None:
        if step == self.last:  # the weights training ended with (not the selected step's)
            self.final = {k: v.clone() for k, v in self.detector.trainable_state_dict().items()}

    def on_checkpoint(self, step: int, auc: float, folder: Path) -> None:
        self.given.append(folder)
        self.states[step] = shutil.copytree(folder, self.out / f"state-{step}")


def record(monkeypatch, out: Path, last: int = STEPS) -> Recorder:
    rec = Recorder(out, last)

    def build(cfg, teacher=None):
        rec.detector = build_detector(cfg, teacher)
        return rec.detector

    monkeypatch.setattr("ablate.train.build_detector", build)
    real_item = ManifestDataset.__getitem__

    def item(self, index):
        if self.augment != "none":  # the training set (val is unaugmented, scored in batches)
            rec.items += 1
        return real_item(self, index)

    monkeypatch.setattr(ManifestDataset, "__getitem__", item)
    return rec


def _subset(ds: ManifestDataset, n: int, size: int) -> ManifestDataset:
    rows = ds.rows.groupby("label").head(n // 2).reset_index(drop=True)
    return ManifestDataset(rows, size, guided=ds.guided, augment=ds.augment, cache=ds.cache)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cfg = compose([*TINY, f"run.out_dir={tmp_path_factory.mktemp('runs')}"])
    train_set, val = train_and_val(cfg)
    return cfg, _subset(train_set, 12, cfg.image_size), _subset(val, 16, cfg.image_size)


@pytest.fixture(scope="module")
def uninterrupted(setup, tmp_path_factory):
    cfg, train_set, val = setup
    with pytest.MonkeyPatch.context() as mp:
        rec = record(mp, tmp_path_factory.mktemp("full"))
        result = train(cfg, loader=make_loader(train_set, BATCH, True, cfg.seed), val=val,
                       progress=False, on_eval=rec.on_eval, on_checkpoint=rec.on_checkpoint)
    return result, rec


def _assert_same_end(a, rec_a: Recorder, b, rec_b: Recorder) -> None:
    assert rec_a.final and set(rec_a.final) == set(rec_b.final)
    moved = [k for k in rec_a.final if not torch.equal(rec_a.final[k], rec_b.final[k])]
    assert not moved, f"{len(moved)} of {len(rec_a.final)} tensors differ: {moved[:3]}"
    assert b.curves == a.curves  # every loss term and val AUC, to the last bit
    assert b.selection == a.selection
    selected_a, selected_b = load_file(a.folder / TRAINABLE), load_file(b.folder / TRAINABLE)
    assert all(torch.equal(selected_a[k], selected_b[k]) for k in selected_a)
    for name in ("checkpoint_step", "steps"):
        assert (json.loads((b.folder / RUN_INFO).read_text())[name]
                == json.loads((a.folder / RUN_INFO).read_text())[name])


# mid epoch 0 (and the selected step is the saved one); the end of epoch 1
@pytest.mark.parametrize("resume_at", [2, 6])
def test_resumed_run_ends_exactly_where_the_uninterrupted_run_ends(
        setup, uninterrupted, resume_at, monkeypatch, tmp_path):
    cfg, train_set, val = setup
    full, rec_full = uninterrupted
    assert sorted(rec_full.states) == [2, 4, 6, 8]
    assert full.selection["step"] == 2  # so resuming at 6 must carry the selection over
    rec = record(monkeypatch, tmp_path)
    resumed = train(cfg, loader=make_loader(train_set, BATCH, True, cfg.seed), val=val,
                    progress=False, on_eval=rec.on_eval, on_checkpoint=rec.on_checkpoint,
                    resume_from=rec_full.states[resume_at])
    _assert_same_end(full, rec_full, resumed, rec)
    assert rec.items == (STEPS - resume_at) * BATCH  # the skipped batches were never loaded
    assert sorted(rec.states) == [s for s in (2, 4, 6, 8) if s > resume_at]
    # timing: the saved step times, then the new ones
    saved = json.loads((rec_full.states[resume_at] / "state.json").read_text())["step_times"]
    times = json.loads((rec.states[STEPS] / "state.json").read_text())["step_times"]
    assert len(saved) == resume_at and times[:resume_at] == saved and len(times) == STEPS
    assert resumed.step_time_s == pytest.approx(float(np.median(times)))


def test_state_folder_exists_only_during_the_callback(uninterrupted):
    _, rec = uninterrupted
    assert rec.given and not any(p.exists() for p in rec.given)


@pytest.mark.slow  # seconds of training or many steps: not in make test-fast
def test_default_data_resumes_mid_epoch(monkeypatch, tmp_path):
    """The sweep's path: train builds the loader itself (800 frames: 4 steps stay in epoch 0)."""
    cfg = compose([*TINY, "train.steps=4", f"run.out_dir={tmp_path}"])
    rec_a = record(monkeypatch, tmp_path / "a", last=4)
    a = train(cfg, progress=False, on_eval=rec_a.on_eval, on_checkpoint=rec_a.on_checkpoint)
    rec_b = record(monkeypatch, tmp_path / "b", last=4)
    b = train(cfg, progress=False, on_eval=rec_b.on_eval, resume_from=rec_a.states[2])
    _assert_same_end(a, rec_a, b, rec_b)
    assert rec_b.items == 2 * BATCH


@pytest.mark.slow  # seconds of training or many steps: not in make test-fast
def test_a_list_loader_resumes_by_slicing(setup, monkeypatch, tmp_path):
    _, _, val = setup
    cfg = compose([*TINY, "train.steps=4", f"run.out_dir={tmp_path}"])
    batches = [fixed_batch(size=32, seed=s) for s in range(3)]  # 3 batches an epoch
    rec_a = record(monkeypatch, tmp_path / "a", last=4)
    a = train(cfg, loader=batches, val=val, progress=False, on_eval=rec_a.on_eval,
              on_checkpoint=rec_a.on_checkpoint)
    rec_b = record(monkeypatch, tmp_path / "b", last=4)
    b = train(cfg, loader=batches, val=val, progress=False, on_eval=rec_b.on_eval,
              resume_from=rec_a.states[2])  # continues with batches[2:], then batches[0]
    _assert_same_end(a, rec_a, b, rec_b)


def test_refuses_a_state_of_another_seed_or_recipe(setup, uninterrupted):
    cfg, train_set, val = setup
    state = uninterrupted[1].states[2]
    for override, word in (("seed=1", "seed 0"), ("train.lr=0.5", "of recipe")):
        other = compose([*TINY, override, f"run.out_dir={cfg.run.out_dir}"])
        with pytest.raises(AblateError, match=word) as err:
            train(other, loader=make_loader(train_set, BATCH, True, other.seed), val=val,
                  progress=False, resume_from=state)
        assert "\n" not in str(err.value)
    smaller = _subset(train_set, 8, cfg.image_size)  # 2 batches an epoch, not 3
    with pytest.raises(AblateError, match="3 batches per epoch, this training set has 2"):
        train(cfg, loader=make_loader(smaller, BATCH, True, cfg.seed), val=val,
              progress=False, resume_from=state)
    with pytest.raises(AblateError, match="not a training state"):
        train(cfg, loader=make_loader(train_set, BATCH, True, cfg.seed), val=val,
              progress=False, resume_from=state.parent)


# --------------------------------------------------------------- the loader alone


class Numbers(Dataset):
    """Item i: (i, a draw from torch's RNG where it is loaded); records what it loaded. The
    sampler's keys are (index, augmentation seed); the seed is ignored here."""

    def __init__(self, n: int) -> None:
        self.n, self.loaded = n, []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: tuple[int, int]) -> tuple[int, int]:
        i, _ = key
        self.loaded.append(i)
        return i, int(torch.randint(1 << 30, ()))


def _epochs(loader, epochs: int) -> list[list[int]]:
    return [batch[0].tolist() for _ in range(epochs) for batch in loader]


def test_seek_yields_the_uninterrupted_batches_and_loads_nothing_skipped():
    data = Numbers(10)
    loader = ResumableLoader(data, batch_size=3, shuffle=True, seed=5, drop_last=True)
    assert len(loader) == 3
    full = _epochs(loader, 3)  # 9 batches
    epochs = [sorted(sum(full[i:i + 3], [])) for i in (0, 3, 6)]
    assert all(len(set(e)) == 9 and set(e) <= set(range(10)) for e in epochs)
    assert full[0:3] != full[3:6]  # each epoch reshuffles
    for done in (1, 3, 5):
        data.loaded.clear()
        loader = ResumableLoader(data, batch_size=3, shuffle=True, seed=5, drop_last=True)
        loader.seek(done)
        rest = [b[0].tolist() for b in loader]  # the rest of the epoch batch `done` is in
        rest += _epochs(loader, 2 - done // 3)
        assert rest == full[done:]
        assert data.loaded == sum(full[done:], [])  # only what is yielded is loaded


def test_workers_see_the_same_batches_and_epoch_seeds():
    """num_workers > 0: the same order, and an epoch restarted at its start (a resume at an
    epoch's end) draws the same worker random numbers as the uninterrupted run."""
    def run(workers: int, done: int = 0) -> list[list[int]]:
        loader = ResumableLoader(Numbers(8), batch_size=2, shuffle=True, seed=3,
                                 drop_last=True, num_workers=workers)
        loader.seek(done)
        return [[b[0].tolist(), b[1].tolist()] for e in range(3 - done // 4) for b in loader]

    with_workers = run(2)
    assert [b[0] for b in with_workers] == [b[0] for b in run(0)]
    assert run(2, done=4) == with_workers[4:]  # indices and worker draws of epochs 1 and 2
