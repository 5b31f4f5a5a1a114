"""ManifestDataset: items, caching of decoded frames, skip reporting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import ablate.data.dataset as dataset_module
from ablate.core.errors import AblateError
from ablate.data.dataset import FrameCache, ManifestDataset
from ablate.data.manifest import save_manifest

SIZE = 8


def png(path: Path, seed: int) -> str:
    """A 16x16 image with a left-right gradient (so a flip is visible)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(0, 255, 16, dtype=np.uint8)[None, :, None]
    pixels = np.broadcast_to(ramp, (16, 16, 3)).copy()
    pixels[..., 1] = seed * 20 % 256
    Image.fromarray(pixels).save(path)
    return str(path)


def table(tmp_path: Path, n_real: int = 4, split: str = "train") -> pd.DataFrame:
    """Reals 0..n-1 and one fake per real pair (source = real i+1, target = real i)."""
    rows = []
    reals = [png(tmp_path / f"real/{i}.png", i) for i in range(n_real)]
    for i, path in enumerate(reals):
        rows.append(
            {
                "path": path,
                "label": 0,
                "video_id": f"r{i}",
                "dataset": "toy",
                "split": split,
                "method": "real",
                "frame": 0,
                "source_path": path,
                "target_path": path,
            }
        )
    for i in range(n_real - 1):
        path = png(tmp_path / f"fake/{i}.png", 100 + i)
        rows.append(
            {
                "path": path,
                "label": 1,
                "video_id": f"f{i}",
                "dataset": "toy",
                "split": split,
                "method": "Deepfakes",
                "frame": 0,
                "source_path": reals[i + 1],
                "target_path": reals[i],
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture
def count_decodes(monkeypatch):
    calls: list[str] = []
    original = dataset_module.decode_image

    def counting(path: str, size: int):
        calls.append(path)
        return original(path, size)

    monkeypatch.setattr(dataset_module, "decode_image", counting)
    return calls


def test_items_shapes_ranges_and_partners(tmp_path):
    df = table(tmp_path)
    ds = ManifestDataset(df, image_size=SIZE, guided=True)
    assert len(ds) == 7 and ds.skipped == []
    for item in (ds[0], ds[5]):
        for key in ("image", "source", "target"):
            assert item[key].shape == (3, SIZE, SIZE) and item[key].dtype == torch.float32
            assert item[key].min() >= -1 and item[key].max() <= 1
        assert item["label"].shape == () and item["label"].dtype == torch.float32
    real, fake = ds[0], ds[4]
    assert torch.equal(real["source"], real["image"]) and torch.equal(real["target"], real["image"])
    assert fake["label"] == 1.0 and fake["video_id"] == "f0"
    assert torch.equal(fake["source"], ds[1]["image"])  # source = real 1
    assert torch.equal(fake["target"], ds[0]["image"])  # target = real 0
    plain = ManifestDataset(df, image_size=SIZE, guided=False)[4]
    assert "source" not in plain and "target" not in plain and plain["path"] == df["path"][4]


def test_decodes_each_file_once_across_epochs(tmp_path, count_decodes):
    ds = ManifestDataset(table(tmp_path), image_size=SIZE, guided=True)
    for _epoch in range(2):
        for batch in DataLoader(ds, batch_size=3, shuffle=True):
            assert batch["image"].shape[1:] == (3, SIZE, SIZE)
    assert sorted(count_decodes) == sorted(set(table(tmp_path)["path"]))


def test_disk_cache_is_reused(tmp_path, count_decodes):
    df = table(tmp_path)
    first = ManifestDataset(df, image_size=SIZE, cache_dir=tmp_path / "cache")
    assert len(count_decodes) == 7 and first.cache.stored(SIZE) == 7
    count_decodes.clear()
    ds = ManifestDataset(df, image_size=SIZE, cache_dir=tmp_path / "cache", memory_cache=False)
    for i in range(len(ds)):  # the stored pixels are the decoded ones
        assert torch.equal(ds[i]["image"], first[i]["image"])
    assert count_decodes == []
    ManifestDataset(df, image_size=SIZE * 2, cache_dir=tmp_path / "cache")  # other size: new
    assert len(count_decodes) == 7


def test_an_edited_frame_is_decoded_again_not_served_stale(tmp_path, count_decodes):
    df = table(tmp_path)
    ManifestDataset(df, image_size=SIZE, cache_dir=tmp_path / "cache")
    png(Path(df["path"][0]), seed=9)  # rewritten: another green level
    count_decodes.clear()
    ds = ManifestDataset(df, image_size=SIZE, cache_dir=tmp_path / "cache")
    assert count_decodes == [df["path"][0]]
    expected = dataset_module.decode_image(df["path"][0], SIZE)
    assert np.array_equal(ds.cache.get(df["path"][0], SIZE), expected)


def test_a_shard_cut_off_while_written_is_ignored(tmp_path, count_decodes):
    """The index is renamed into place last: pixels without one (a run killed while
    writing) or an index whose pixels are short are never read; those frames are decoded."""
    df = table(tmp_path)
    ManifestDataset(df, image_size=SIZE, cache_dir=tmp_path / "cache")
    shard = next((tmp_path / f"cache/{SIZE}px").glob("shard-*.u8"))
    shard.write_bytes(shard.read_bytes()[:-5])  # a torn write
    count_decodes.clear()
    ds = ManifestDataset(df, image_size=SIZE, cache_dir=tmp_path / "cache")
    assert len(count_decodes) == 7 and ds.cache.stored(SIZE) == 7  # a fresh, whole shard
    count_decodes.clear()
    ManifestDataset(df, image_size=SIZE, cache_dir=tmp_path / "cache")
    assert count_decodes == []


def test_loader_workers_read_the_store(tmp_path, count_decodes):
    df = table(tmp_path)
    ManifestDataset(df, image_size=SIZE, cache_dir=tmp_path / "cache")
    ds = ManifestDataset(df, image_size=SIZE, cache_dir=tmp_path / "cache", memory_cache=False)
    alone = [b["image"] for b in DataLoader(ds, batch_size=3)]
    workers = [b["image"] for b in DataLoader(ds, batch_size=3, num_workers=2)]
    assert all(torch.equal(a, b) for a, b in zip(alone, workers, strict=True))


def _file_backed(array: np.ndarray) -> bool:
    while array is not None and not isinstance(array, np.memmap):
        array = array.base
    return array is not None


def test_with_a_store_only_its_mapped_rows_are_kept_in_memory(tmp_path, monkeypatch):
    """The first run over a large set must not hold it all decoded: past the store's flush
    size, what the cache serves is the shards' memory-mapped rows, not decoded copies."""
    import ablate.data.frame_store as frame_store

    monkeypatch.setattr(frame_store, "FLUSH_EVERY", 3)
    df = table(tmp_path)
    ds = ManifestDataset(df, image_size=SIZE, cache_dir=tmp_path / "cache", guided=True)
    files = sorted(set(df["path"]))
    assert len(files) == 7 and all(_file_backed(ds.cache.get(f, SIZE)) for f in files)
    for f in files:  # and they are the decoded pixels
        assert np.array_equal(ds.cache.get(f, SIZE), dataset_module.decode_image(f, SIZE))


def test_lazily_decoded_frames_are_mapped_rows_once_stored(tmp_path):
    """Without preload, a frame read twice before the store's flush is not kept decoded:
    after the flush the cache serves the shard's row."""
    df = table(tmp_path)
    ds = ManifestDataset(df, image_size=SIZE, cache_dir=tmp_path / "cache", preload=False)
    path = df["path"][0]
    first, again = ds.cache.get(path, SIZE), ds.cache.get(path, SIZE)
    assert not _file_backed(again)  # held by the store, not yet written
    ds.cache.flush()
    stored = ds.cache.get(path, SIZE)
    assert _file_backed(stored) and np.array_equal(stored, first)


def test_a_claim_within_a_claim_of_the_same_frames_goes_on(tmp_path):
    """flock is per open file: a second claim of a set this process holds must not wait for
    itself."""
    import threading

    from ablate.data.frame_store import FrameStore

    store = FrameStore(tmp_path / "cache", SIZE)

    def nested() -> None:
        with store.claim(["a.png", "b.png"]), store.claim(["b.png", "a.png"]):
            pass

    thread = threading.Thread(target=nested, daemon=True)
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive()


def test_a_store_that_cannot_be_locked_is_used_without_waiting(tmp_path, monkeypatch, caplog):
    """A file system that refuses flock (ENOLCK) stores and serves frames all the same."""
    import errno

    import ablate.data.frame_store as frame_store

    def refuse(handle, operation):  # noqa: ANN001
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(frame_store.fcntl, "flock", refuse)
    df = table(tmp_path)
    ds = ManifestDataset(df, image_size=SIZE, cache_dir=tmp_path / "cache")
    assert ds.cache.stored(SIZE) == 7 and "cannot be locked" in caplog.text


DECODER = """
import sys, time
from pathlib import Path
from ablate.data.dataset import ManifestDataset
manifest, cache, go, ready = sys.argv[1:]
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.005)
ManifestDataset(manifest, image_size=48, cache_dir=cache)
"""


def test_processes_decoding_one_set_at_once_store_it_once(tmp_path):
    """Two real processes (as the two processes of a data-parallel run) preload the same
    manifest into one store, released at the same moment: one decodes, the other waits and
    reads its shards; every frame is stored once, not once per process."""
    import json
    import subprocess
    import sys
    import time

    from ablate.data.manifest import save_manifest

    rng = np.random.default_rng(0)
    rows = []
    for i in range(160):  # noise PNGs: slow enough to decode that the two runs overlap
        path = tmp_path / f"frames/{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (160, 160, 3), dtype=np.uint8)).save(path)
        rows.append({"path": str(path), "label": i % 2, "video_id": f"v{i}", "dataset": "toy",
                     "split": "train", "method": "real" if i % 2 == 0 else "Deepfakes",
                     "frame": 0, "source_path": None, "target_path": None})
    manifest = save_manifest(pd.DataFrame(rows), tmp_path / "m.csv")
    script, go = tmp_path / "decode.py", tmp_path / "go"
    script.write_text(DECODER)
    ready = [tmp_path / f"ready-{i}" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, str(script), str(manifest), str(tmp_path / "cache"),
                               str(go), str(r)], cwd=Path(__file__).parent.parent) for r in ready]
    deadline = time.monotonic() + 120
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        time.sleep(0.05)  # both have imported torch and wait for the go
    go.touch()
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    keys = [k for index in (tmp_path / "cache/48px").glob("shard-*.json")
            for k in json.loads(index.read_text())["keys"]]
    assert len(keys) == len(set(keys)) == 160


def test_lazy_decoding_also_caches(tmp_path, count_decodes):
    ds = ManifestDataset(table(tmp_path), image_size=SIZE, preload=False)
    assert count_decodes == []
    for _ in range(2):
        ds[0]
    assert len(count_decodes) == 1


def test_shared_cache_between_datasets(tmp_path, count_decodes):
    df = table(tmp_path)
    cache = FrameCache()
    ManifestDataset(df, image_size=SIZE, cache=cache)
    ManifestDataset(df, image_size=SIZE, cache=cache, guided=True)
    assert len(count_decodes) == 7


def test_skips_and_reports_bad_frames(tmp_path, caplog):
    df = table(tmp_path, n_real=12)  # 12 reals + 11 fakes = 23 rows
    Path(df["path"][2]).write_bytes(b"garbage, not a png")
    Path(df["path"][3]).unlink()
    ds = ManifestDataset(df, image_size=SIZE, max_skip_fraction=0.1)
    assert len(ds) == 21
    assert {(s.reason, s.file) for s in ds.skipped} == {
        ("unreadable images", df["path"][2]),
        ("missing files", df["path"][3]),
    }
    assert "skipped 2 rows" in ds.skip_summary() and df["path"][3] in ds.skip_summary()
    assert "skipped 2 rows" in caplog.text
    # guided: fakes whose source/target is one of the bad reals go too (fakes 1, 2, 3)
    guided = ManifestDataset(df, image_size=SIZE, guided=True, max_skip_fraction=0.5)
    assert len(guided.skipped) == 5
    assert {s.file for s in guided.skipped} == {df["path"][2], df["path"][3]}


def test_too_many_skips_is_an_error(tmp_path):
    df = table(tmp_path, n_real=12)
    Path(df["path"][2]).write_bytes(b"garbage")
    Path(df["path"][3]).unlink()
    with pytest.raises(AblateError, match="max_skip_fraction=0.05"):
        ManifestDataset(df, image_size=SIZE)


def test_guided_fake_without_partner_is_skipped_and_counted(tmp_path):
    df = table(tmp_path, n_real=12)
    df.loc[df["label"] == 1, "source_path"] = None
    with pytest.raises(AblateError, match="11 fakes without source/target"):
        ManifestDataset(df, image_size=SIZE, guided=True)
    assert len(ManifestDataset(df, image_size=SIZE, guided=False)) == 23


def test_preload_false_raises_on_corrupt_frame(tmp_path):
    df = table(tmp_path)
    Path(df["path"][0]).write_bytes(b"garbage")
    ds = ManifestDataset(df, image_size=SIZE, preload=False)
    with pytest.raises(AblateError, match="cannot decode"):
        ds[0]


def test_augment_flips_image_only(tmp_path):
    torch.manual_seed(0)
    df = table(tmp_path)
    plain = ManifestDataset(df, image_size=SIZE, guided=True)[4]
    ds = ManifestDataset(df, image_size=SIZE, guided=True, augment="flip")
    items = [ds[4] for _ in range(20)]
    flipped = [torch.equal(item["image"], plain["image"].flip(-1)) for item in items]
    kept = [torch.equal(item["image"], plain["image"]) for item in items]
    assert any(flipped) and any(kept) and all(f or k for f, k in zip(flipped, kept, strict=True))
    for item in items:
        assert torch.equal(item["source"], plain["source"])
        assert torch.equal(item["target"], plain["target"])


@pytest.mark.parametrize("preset", ["flip", "paper", "code"])
@pytest.mark.parametrize("index", [0, 4], ids=["real", "fake"])
def test_augment_leaves_clean_source_and_target_unaugmented(tmp_path, preset, index):
    """Weight targets come from "clean": it must equal what augment="none" gives as image."""
    torch.manual_seed(0)
    df = table(tmp_path)
    plain = ManifestDataset(df, image_size=SIZE, guided=True)[index]
    ds = ManifestDataset(df, image_size=SIZE, guided=True, augment=preset)
    items = [ds[index] for _ in range(30)]
    for item in items:
        assert torch.equal(item["clean"], plain["image"])
        assert torch.equal(item["source"], plain["source"])
        assert torch.equal(item["target"], plain["target"])
        assert item["image"].shape == (3, SIZE, SIZE) and item["image"].dtype == torch.float32
        assert item["image"].min() >= -1 and item["image"].max() <= 1
    assert any(not torch.equal(item["image"], item["clean"]) for item in items)
    if index == 0:  # a real's partners are its own un-augmented frame
        assert torch.equal(plain["source"], plain["image"])


def test_augment_none_gives_clean_image_and_bad_names_fail_early(tmp_path):
    df = table(tmp_path)
    item = ManifestDataset(df, image_size=SIZE, guided=True)[4]
    assert torch.equal(item["image"], item["clean"])
    for bad in (True, False, "cutout"):
        with pytest.raises(AblateError, match="none, flip, paper, code"):
            ManifestDataset(df, image_size=SIZE, augment=bad)


def test_split_selection_and_manifest_path(tmp_path):
    df = pd.concat([table(tmp_path / "a", split="train"), table(tmp_path / "b", split="test")])
    save_manifest(df, tmp_path / "m.csv")
    assert len(ManifestDataset(tmp_path / "m.csv", image_size=SIZE, split="test")) == 7
    with pytest.raises(AblateError, match="no val rows"):
        ManifestDataset(df, image_size=SIZE, split="val")
    with pytest.raises(AblateError, match="split must be"):
        ManifestDataset(df, image_size=SIZE, split="dev")
