"""The training loader with worker processes yields the very batches it yields without them,
so `train.loader_workers` (a speed setting, not hashed) cannot change a result: each frame's
augmentation is seeded from (seed, epoch, index), never from a process's RNG."""

from __future__ import annotations

import pytest
import torch

from ablate.data.dataset import ManifestDataset
from ablate.data.loader import make_loader, train_and_val
from ablate.recipe import compose, recipe_hash
from ablate.train import train
from tests.test_resume import TINY, record

BATCH = 4


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    cfg = compose([*TINY, "data.augment=code", f"run.out_dir={tmp_path_factory.mktemp('r')}"])
    train_set, _ = train_and_val(cfg)
    rows = train_set.rows.groupby("label").head(6).reset_index(drop=True)  # 12 frames
    return ManifestDataset(rows, cfg.image_size, guided=True, augment="code",
                           cache=train_set.cache)


def _epochs(loader, epochs: int, skip: int = 0) -> list[dict]:
    loader.seek(skip)
    return [batch for _ in range(epochs) for batch in loader]


def _assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        assert x["path"] == y["path"]
        for key in ("image", "clean", "source", "target", "label"):
            assert torch.equal(x[key], y[key]), key


@pytest.mark.parametrize("skip", [0, 4])  # from the start; resumed mid epoch 1
def test_workers_yield_the_batches_one_process_yields(frames, skip):
    alone = _epochs(make_loader(frames, BATCH, True, seed=3), 2, skip)
    with_workers = _epochs(make_loader(frames, BATCH, True, seed=3, workers=2, prefetch=1), 2,
                           skip)
    _assert_same(alone, with_workers)


def test_each_epoch_augments_a_frame_afresh(frames):
    """The seed follows the epoch: a frame is not cropped and flipped alike every epoch."""
    loader = make_loader(frames, BATCH, True, seed=3)
    first, second = ({p: img for b in loader for p, img in zip(b["path"], b["image"],
                                                              strict=True)}
                     for _ in range(2))
    assert first.keys() == second.keys()
    assert sum(not torch.equal(first[p], second[p]) for p in first) >= len(first) // 2


def test_loading_a_batch_leaves_the_global_rng_alone(frames):
    """The training step draws noise and timesteps from torch's global RNG: with workers the
    main process's RNG is not touched by augmentation, so without them it must not be either."""
    before = torch.random.get_rng_state()
    next(iter(make_loader(frames, BATCH, True, seed=3)))
    assert torch.equal(before, torch.random.get_rng_state())


@pytest.mark.slow  # seconds of training or many steps: not in make test-fast
def test_a_run_with_loader_workers_is_the_run_without(monkeypatch, tmp_path):
    base = [*TINY, "train.steps=4", "data.augment=code", f"run.out_dir={tmp_path}"]
    runs = []
    for workers in (0, 2):
        cfg = compose([*base, f"train.loader_workers={workers}"])
        rec = record(monkeypatch, tmp_path / str(workers), last=4)
        runs.append((recipe_hash(cfg), train(cfg, progress=False, on_eval=rec.on_eval), rec))
    (hash_a, a, rec_a), (hash_b, b, rec_b) = runs
    assert hash_a == hash_b  # a speed setting: the same result, reused by a sweep
    assert a.curves == b.curves
    assert all(torch.equal(rec_a.final[k], rec_b.final[k]) for k in rec_a.final)


@pytest.mark.slow  # seconds of training or many steps: not in make test-fast
def test_a_frame_cache_dir_is_filled_once_then_read_by_later_runs(monkeypatch, tmp_path):
    import ablate.data.dataset as dataset_module

    decoded = []
    decode = dataset_module.decode_image
    monkeypatch.setattr(dataset_module, "decode_image",
                        lambda path, size: decoded.append(path) or decode(path, size))
    base = [*TINY, "train.steps=2", f"run.out_dir={tmp_path}", "data.tests=[synth-colour]"]
    plain = train(compose(base), progress=False)
    first = len(decoded)
    stored = [*base, f"data.frame_cache_dir={tmp_path / 'frames'}"]
    assert recipe_hash(compose(stored)) == recipe_hash(compose(base))
    runs = []
    for _ in range(2):
        decoded.clear()
        runs.append((train(compose(stored), progress=False), len(decoded)))
    (filled, decodes_first), (again, decodes_again) = runs
    assert decodes_first == first > 0 and decodes_again == 0
    assert filled.curves == again.curves == plain.curves
