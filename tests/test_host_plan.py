"""Host memory and disk at FF++ scale (ablate/data/host_plan.py): the plan counts the frames a
run decodes from its manifests alone; frames over the host budget go to the on-disk frame
store before a single one is decoded, or the run stops with the plan in one line; within the
budget nothing changes; preloading in threads gives what one thread gives."""

from __future__ import annotations

import copy
import json
import logging
import time
from collections import namedtuple
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import ablate.data.dataset as dataset_module
from ablate.core.errors import AblateError
from ablate.data import host_plan as host_plan_module
from ablate.data.dataset import FrameCache, ManifestDataset
from ablate.data.host_plan import GIB, default_store, host_plan
from ablate.data.loader import eval_frame_cache, train_and_val
from ablate.recipe import compose

SIZE = 32  # the recipe's image_size: a decoded frame is 32 * 32 * 3 bytes
FRAME = SIZE * SIZE * 3
# By construction (see `tiny`): train rows 4 + 4 reals (r0, r1: frames 0 2 4 6) and 3 fakes
# (f01: frames 1 2 3; target r0/i, source r1/i); r0/2 and r1/2 are rows already, r0/1 r0/3
# r1/1 r1/3 are not: 4 more. Val: r2/0 r2/1 and f23/0 (val reads no partners). Test: r4/0 r4/1,
# f45/0 f45/1.
TRAIN_ROWS, VAL_ROWS, PARTNERS = 8 + 3, 2 + 1, 4
GUIDED_FRAMES = 8 + 3 + 4 + 3  # 18
BASELINE_FRAMES = 8 + 3 + 3  # 14: no source/target frames
TEST_FRAMES = 2 + 2
NEED_GUIDED = GUIDED_FRAMES * FRAME  # 55,296 bytes
LATENT = GUIDED_FRAMES * 16 * SIZE * SIZE // 8  # the latent cache it could fill: 36,864 bytes
FITS_GB = 0.0002  # 214,748 bytes: over NEED_GUIDED + LATENT; in MiB (209 bytes) it would not be
OVER_GB = 0.00003  # 32,212 bytes: under NEED_GUIDED; in bytes x 2**40 it would fit


def _frame(folder: Path, video: str, index: int) -> str:
    path = folder / video / f"{index:04d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([*map(ord, video), index])
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A manifest of real PNG frames; every frame a source/target points at is on disk."""
    root = tmp_path_factory.mktemp("tiny")
    for video in ("r0", "r1", "r2", "r3", "r4", "r5"):
        for i in range(8):
            _frame(root, video, i)
    rows = []

    def add(video: str, frames: list[int], split: str, pair: tuple[str, str] | None = None):
        for i in frames:
            path = _frame(root, video, i)
            target, source = ((_frame(root, pair[0], i), _frame(root, pair[1], i)) if pair
                              else (path, path))
            rows.append({"path": path, "label": int(pair is not None), "video_id": video,
                         "dataset": "tiny", "split": split,
                         "method": "Deepfakes" if pair else "real", "frame": i,
                         "source_path": source, "target_path": target})

    add("r0", [0, 2, 4, 6], "train")
    add("r1", [0, 2, 4, 6], "train")
    add("f01", [1, 2, 3], "train", ("r0", "r1"))
    add("r2", [0, 1], "val")
    add("f23", [0], "val", ("r2", "r3"))
    add("r4", [0, 1], "test")
    add("f45", [0, 1], "test", ("r4", "r5"))
    out = root / "tiny.csv"
    pd.DataFrame(rows).to_csv(out, index=False)
    return out


@pytest.fixture(scope="module")
def base(tiny):
    return compose(["backbone=tiny", f"image_size={SIZE}", "train=cpu", f"data.train={tiny}",
                    f"data.tests=[{tiny}]"])


@pytest.fixture
def cfg(base, tmp_path, monkeypatch):
    """The recipe, with the shared store of this test's own ($ABLATE_CACHE)."""
    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path / "cache"))
    return copy.deepcopy(base)


@pytest.fixture
def decoded(monkeypatch, caplog):
    """Every decode, with whether the run had already said the frames go to disk."""
    calls: list[tuple[str, bool]] = []
    decode = dataset_module.decode_image

    def spy(path: str, size: int) -> np.ndarray:
        told = any("on-disk frame store" in r.getMessage() for r in caplog.records)
        calls.append((path, told))
        return decode(path, size)

    monkeypatch.setattr(dataset_module, "decode_image", spy)
    caplog.set_level(logging.WARNING, logger="ablate.data.host_plan")
    return calls


def _no_room(monkeypatch) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(host_plan_module.shutil, "disk_usage", lambda _: usage(10, 10, 100))


# ------------------------------------------------------------------------- counting


def test_the_plan_counts_frames_and_bytes_as_by_hand(cfg, tiny):
    cfg.data.host_memory_gb = 1
    plan = host_plan(cfg)
    assert (plan.train_rows, plan.val_rows, plan.partner_frames) == (TRAIN_ROWS, VAL_ROWS,
                                                                    PARTNERS)
    assert plan.train_frames == GUIDED_FRAMES
    assert plan.frame_bytes == FRAME == 3072
    assert plan.train_ram_bytes == GUIDED_FRAMES * 3072
    assert plan.test_frames == {str(tiny): TEST_FRAMES} and plan.test_total_frames == 4
    assert plan.test_ram_bytes == TEST_FRAMES * 3072
    assert plan.latent_cache_bytes == LATENT
    assert plan.host_budget_bytes == GIB
    assert [p.place for p in plan.phases] == ["memory", "memory"]
    assert "18 distinct frames" in plan.describe() and "\n" not in plan.describe()
    assert plan.as_dict()["train_frames"] == GUIDED_FRAMES

    cfg.guide.name = "none"  # the baseline reads no source/target frames (and no latents)
    baseline = host_plan(cfg)
    assert (baseline.train_frames, baseline.partner_frames) == (BASELINE_FRAMES, 0)
    assert baseline.latent_cache_bytes == 0


def test_the_plan_is_what_a_run_decodes_and_stores(cfg, tiny, decoded, tmp_path):
    """RAM: the frames preloading decodes; disk: the store's files, pixels to the byte."""
    cfg.data.frame_cache_dir = str(tmp_path / "store")
    plan = host_plan(cfg)
    train, val = train_and_val(cfg)
    assert len(decoded) == plan.train_frames == GUIDED_FRAMES
    shards = Path(plan.store) / f"{SIZE}px"
    pixels = sum(f.stat().st_size for f in shards.glob("*.u8"))
    index = sum(f.stat().st_size for f in shards.glob("*.json"))
    assert pixels == GUIDED_FRAMES * FRAME
    assert pixels + index <= plan.train_disk_bytes <= 1.05 * (pixels + index)
    assert host_plan(cfg).train_disk_bytes == 0  # stored now: nothing more to write


# ------------------------------------------------------------------ the budget rule


def test_over_the_budget_the_frames_go_to_disk_before_one_is_decoded(cfg, decoded, caplog):
    cfg.data.host_memory_gb = OVER_GB
    train, val = train_and_val(cfg)
    assert len(decoded) == GUIDED_FRAMES
    assert all(told for _, told in decoded), "a frame was decoded before the decision"
    said = [r.getMessage() for r in caplog.records if "frame store" in r.getMessage()]
    assert len(said) == 1 and str(default_store()) in said[0] and "\n" not in said[0]
    assert train.cache is val.cache and train.cache.cache_dir == default_store()
    assert train.cache.stored(SIZE) == GUIDED_FRAMES
    assert len(train.cache) == 0  # nothing decoded is held in memory
    assert len(train) == TRAIN_ROWS and train[0]["source"].shape == (3, SIZE, SIZE)
    held = list(train.cache._arrays.values())
    assert held and all(isinstance(a, np.memmap) for a in held)  # pages of the store only


def test_within_the_budget_nothing_changes(cfg, decoded, caplog):
    cfg.data.host_memory_gb = FITS_GB
    train, val = train_and_val(cfg)
    assert len(decoded) == GUIDED_FRAMES
    assert train.cache.cache_dir is None and not default_store().exists()
    assert len(train.cache) == GUIDED_FRAMES
    assert not any(isinstance(a, np.memmap) for a in train.cache._arrays.values())
    assert not [r for r in caplog.records if "frame store" in r.getMessage()]


def test_auto_is_half_the_available_memory(cfg, monkeypatch, decoded):
    monkeypatch.setattr(host_plan_module, "available_memory", lambda: 2 * NEED_GUIDED)
    assert host_plan(cfg).host_budget_bytes == NEED_GUIDED
    train, _ = train_and_val(cfg)  # NEED_GUIDED + the latent cache's: over it
    assert train.cache.cache_dir == default_store()
    monkeypatch.setattr(host_plan_module, "available_memory", lambda: 2**40)
    train, _ = train_and_val(cfg)
    assert train.cache.cache_dir is None


def test_no_room_on_disk_either_stops_before_decoding_with_the_plan(cfg, monkeypatch, decoded):
    cfg.data.host_memory_gb = OVER_GB
    _no_room(monkeypatch)
    with pytest.raises(AblateError) as err:
        train_and_val(cfg)
    message = str(err.value)
    assert decoded == []
    assert "\n" not in message and f"{GUIDED_FRAMES:,} frames at {SIZE}px" in message
    assert "data.host_memory_gb" in message and "data.frame_cache_dir" in message
    assert "100 bytes free" in message
    with pytest.raises(AblateError, match="data.host_memory_gb"):
        host_plan(cfg).check()  # the preflight says the same before any run starts


def test_evaluation_streams_its_frames_whatever_the_budget(cfg, tmp_path):
    """Test frames are scored once: evaluation holds none of them in RAM (its memory stays
    flat as test sets grow), and reads a store only where the user set one."""
    from ablate.evaluate import test_rows

    for budget in (TEST_FRAMES * FRAME / GIB / 2, 1):
        cfg.data.host_memory_gb = budget
        cache = eval_frame_cache(cfg)
        dataset = test_rows(str(cfg.data.tests[0]), SIZE, cache)
        assert len(dataset) > 0 and cache.cache_dir is None and cache._arrays == {}
        assert dataset[0]["image"].shape[-1] == SIZE  # decoded on demand, still not kept
        assert cache._arrays == {}
    cfg.data.frame_cache_dir = str(tmp_path / "store")
    assert eval_frame_cache(cfg).cache_dir == tmp_path / "store"


@pytest.mark.parametrize("value", ["lots", 0, -1, True])
def test_a_bad_budget_is_one_line(cfg, value):
    cfg.data.host_memory_gb = value
    with pytest.raises(AblateError, match=r"data.host_memory_gb must be auto or a number"):
        host_plan(cfg)


# ------------------------------------------------------------------ parallel preload


def _preloaded(rows: pd.DataFrame, threads: int, monkeypatch, store: Path | None):
    monkeypatch.setattr(dataset_module, "decode_threads", lambda: threads)
    cache = FrameCache(store)
    data = ManifestDataset(rows, SIZE, guided=True, cache=cache, max_skip_fraction=1.0)
    return data, cache


def test_threads_decode_what_one_thread_decodes_in_its_order(tiny, tmp_path, monkeypatch):
    rows = pd.read_csv(tiny)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    rows.loc[0, ["path", "source_path", "target_path"]] = str(bad)
    decode, order = dataset_module.decode_image, sorted(set(rows["path"]))

    def slow_first(path: str, size: int) -> np.ndarray:
        # earlier files finish later, so threads complete out of order
        if path in order:
            time.sleep(0.002 * (len(order) - order.index(path)))
        return decode(path, size)

    monkeypatch.setattr(dataset_module, "decode_image", slow_first)
    results = {}
    for threads in (1, 4):
        store = tmp_path / f"store{threads}"
        data, cache = _preloaded(rows, threads, monkeypatch, store)
        keys = [k.split("|")[0] for f in sorted((store / f"{SIZE}px").glob("*.json"))
                for k in json.loads(f.read_text())["keys"]]
        memory, _ = _preloaded(rows, threads, monkeypatch, None)
        results[threads] = (keys, [s.file for s in data.skipped], memory)
    (keys1, skipped1, mem1), (keys4, skipped4, mem4) = results[1], results[4]
    # every split guided: 18 rows + partners 4 (f01) + 1 (f23: r3/0) + 2 (f45: r5/0, r5/1);
    # row r0/0 became the bad file, which is not stored
    assert keys1 == keys4 and len(keys1) == 18 + 4 + 1 + 2 - 1
    assert skipped1 == skipped4 == [str(bad)]
    assert list(mem1.cache._arrays) == list(mem4.cache._arrays)
    assert all(np.array_equal(mem1.cache._arrays[k], mem4.cache._arrays[k])
               for k in mem1.cache._arrays)
