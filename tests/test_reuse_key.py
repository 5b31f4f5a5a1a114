"""Trial identity: what a result was computed on (data rows + settings, teacher weights), and
the manifest cache keyed by the adapter settings that made each manifest."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import ablate.reuse_key as keys
from ablate.core.errors import AblateError
from ablate.data import sources
from ablate.data.manifest import COLUMNS, save_manifest
from ablate.recipe import compose
from ablate.reuse_key import (
    canonical_rows,
    data_fingerprint,
    dataset_fingerprint,
    reuse_key,
    teacher_fingerprint,
)


def _frames(folder: Path, n: int, value: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((8, 8, 3), value + i, dtype=np.uint8)).save(folder / f"{i:04d}.png")


def _ffpp_tree(root: Path) -> Path:
    """An FF++-like tree with c23 and c40 copies (other pixels, c40 one frame shorter)."""
    for comp, n, value in (("c23", 4, 10), ("c40", 3, 100)):
        for vid in ("000", "001", "002", "003", "004", "005"):
            _frames(root / "original_sequences/youtube" / comp / "frames" / vid, n, value)
        for fake in ("000_001", "002_003", "004_005"):
            _frames(root / "manipulated_sequences/Deepfakes" / comp / "frames" / fake, n, value + 50)
    (root / "splits").mkdir(parents=True)
    for split, pair in (("train", ["000", "001"]), ("val", ["002", "003"]), ("test", ["004", "005"])):
        (root / "splits" / f"{split}.json").write_text(json.dumps([pair]))
    return root


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Manifests, digests and stored teachers in tmp; the shared benchmark stays shared."""
    monkeypatch.setenv("ABLATE_CACHE", str(Path("results").resolve()))
    monkeypatch.setattr(sources, "MANIFEST_DIR", tmp_path / "manifests")
    monkeypatch.setattr(keys, "cache_folder", lambda: tmp_path / "cache")
    monkeypatch.setattr(keys, "TEACHERS_DIR", tmp_path / "teachers")
    return tmp_path


@pytest.fixture
def tinyff(isolated, monkeypatch):
    """Data config `tinyff` (an FF++ adapter on the tmp tree) on the config search path;
    returns a function that rewrites its settings."""
    root = _ffpp_tree(isolated / "ffpp")
    config = isolated / "configs" / "data" / "tinyff.yaml"
    config.parent.mkdir(parents=True)
    monkeypatch.setenv("ABLATE_CONFIG_PATH", str(config.parent.parent))

    def write(**settings) -> Path:
        base = {"name": "ffpp", "root": str(root), "manifest": None, "compression": "c23",
                "methods": ["Deepfakes"], "source_is": "B", "frames_per_video": None,
                "frames_per_video_eval": None}
        config.write_text(json.dumps({**base, **settings}))  # JSON is YAML
        return root

    write()
    return write


def _recipe(*extra: str):
    return compose(["data.train=tinyff", "data.tests=[tinyff]", *extra])


def _pair_of(table: pd.DataFrame, video: str, frame: int = 0) -> tuple[str, str]:
    """(source, target) original video folders of one fake frame."""
    row = table[(table["video_id"] == video) & (table["frame"] == frame)].iloc[0]
    return Path(row["source_path"]).parent.name, Path(row["target_path"]).parent.name


# ---------------------------------------------------------------- identity as a whole


def test_same_recipe_same_identity_and_each_part_counts(isolated):
    cfg = compose([])
    first = reuse_key(cfg)
    assert set(first) == {"recipe_hash", "data_sha", "teacher_sha", "identity"}
    assert reuse_key(cfg) == first  # digests now cached
    (isolated / "cache" / keys.DIGEST_FILE).unlink()  # as a fresh process would find it
    assert reuse_key(compose([])) == first
    assert first["teacher_sha"].startswith("builtin:")
    # the identity is a function of all three parts: one changed part changes it
    other_data = reuse_key(compose(["data.tests=[synth-blend]"]))
    assert other_data["data_sha"] != first["data_sha"]
    assert reuse_key(compose(["seed=1"]))["identity"] != first["identity"]
    assert reuse_key(compose(["teacher.seed=1"]))["teacher_sha"] != first["teacher_sha"]


def test_identity_module_imports_neither_torch_nor_ray():
    code = ("import sys, ablate.reuse_key; "
            "bad = [m for m in ('torch', 'ray') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_canonical_rows_hand_worked():
    """Paths relative to the folder all rows share, in the table's order, NA as empty."""
    def table(base: str, order=(0, 1)) -> pd.DataFrame:
        rows = [
            [f"{base}/real/v1/0.png", 0, "v1", "d", "train", "real", 0,
             f"{base}/real/v1/0.png", f"{base}/real/v1/0.png"],
            [f"{base}/fake/v2/3.png", 1, "v2", "d", "test", "m", 3, None, f"{base}/real/v1/3.png"],
        ]
        return pd.DataFrame([rows[i] for i in order], columns=COLUMNS)

    expected = (
        "path,label,video_id,dataset,split,method,frame,source_path,target_path\n"
        "real/v1/0.png,0,v1,d,train,real,0,real/v1/0.png,real/v1/0.png\n"
        "fake/v2/3.png,1,v2,d,test,m,3,,real/v1/3.png\n"
    )
    assert canonical_rows(table("/data/set")).decode() == expected
    assert canonical_rows(table("/elsewhere/x/y")) == canonical_rows(table("/data/set"))
    assert canonical_rows(table("/data/set", (1, 0))) != canonical_rows(table("/data/set"))


# ---------------------------------------------------------------- data


def test_config_edit_c23_to_c40_changes_data_sha_and_the_manifest(tinyff, isolated):
    from ablate.data.loader import resolve_dataset

    legacy = isolated / "manifests" / "tinyff.csv"  # a cache of the old name-only layout
    legacy.parent.mkdir(parents=True)
    legacy.write_text("not a manifest\n")
    cfg = _recipe()
    c23, whole = data_fingerprint(cfg), reuse_key(cfg)
    table = resolve_dataset("tinyff")
    assert set(table["path"].str.split("/").str[-4]) == {"c23"}  # .../<comp>/frames/<vid>/x.png
    assert len(table) == 9 * 4  # 6 originals + 3 fakes, 4 frames each
    tinyff(compression="c40")
    c40 = data_fingerprint(cfg)
    assert c40 != c23
    edited = reuse_key(cfg)  # the recipe is unchanged, its result is not
    assert edited["recipe_hash"] == whole["recipe_hash"] and edited["identity"] != whole["identity"]
    table = resolve_dataset("tinyff")
    assert set(table["path"].str.split("/").str[-4]) == {"c40"} and len(table) == 9 * 3
    built = sorted((isolated / "manifests").glob("tinyff-*.csv"))
    assert len(built) == 2
    stamps = {p: p.stat().st_mtime_ns for p in built}
    tinyff()  # back to c23: the same settings reuse their file
    assert data_fingerprint(cfg) == c23
    assert {p: p.stat().st_mtime_ns for p in built} == stamps
    assert legacy.read_text() == "not a manifest\n"  # never read, never replaced


def test_recipe_source_is_builds_its_own_manifest(tinyff):
    from ablate.data.loader import source_table

    b_cfg, a_cfg = _recipe("data.source_is=B"), _recipe("data.source_is=A")
    # fake 000_001 is target 000 with the face of 001: source_is B -> source 001
    assert _pair_of(source_table(b_cfg), "Deepfakes/000_001") == ("001", "000")
    assert _pair_of(source_table(a_cfg), "Deepfakes/000_001") == ("000", "001")
    assert data_fingerprint(a_cfg) != data_fingerprint(b_cfg)
    assert _pair_of(source_table(b_cfg), "Deepfakes/000_001") == ("001", "000")


def test_baseline_ignores_source_is_like_its_recipe_hash(tinyff):
    from ablate.data.loader import source_table

    a_cfg, b_cfg = _recipe("guide=none", "data.source_is=A"), _recipe("guide=none")
    assert _pair_of(source_table(a_cfg), "Deepfakes/000_001") == ("001", "000")  # config's B
    assert data_fingerprint(a_cfg) == data_fingerprint(b_cfg)
    assert reuse_key(a_cfg) == reuse_key(b_cfg)


def test_same_rows_other_frames_change_data_sha(tinyff):
    cfg = _recipe()
    before = data_fingerprint(cfg)
    root = tinyff()
    frame = root / "original_sequences/youtube/c23/frames/000/0000.png"  # the first probed one
    Image.fromarray(np.full((8, 8, 3), 250, dtype=np.uint8)).save(frame)
    assert data_fingerprint(cfg) != before


def test_moved_tree_keeps_data_sha_but_builds_its_own_manifest(tinyff, isolated):
    import shutil

    cfg = _recipe()
    before = data_fingerprint(cfg)
    moved = shutil.copytree(tinyff(), isolated / "elsewhere" / "ffpp")
    tinyff(root=str(moved))
    assert data_fingerprint(cfg) == before  # the same frames: the same data
    table = sources.resolve_dataset("tinyff")
    assert table["path"].str.startswith(str(moved)).all()  # read from the new place
    assert len(list((isolated / "manifests").glob("tinyff-*.csv"))) == 2


def test_fixed_manifest_cannot_take_other_settings(tinyff, isolated):
    fixed = isolated / "fixed.csv"
    save_manifest(sources.resolve_dataset("tinyff"), fixed)
    tinyff(manifest=str(fixed), root=None)
    assert len(sources.resolve_dataset("tinyff", {"source_is": "B"})) == 36  # = its own setting
    with pytest.raises(AblateError, match="data.source_is=A cannot apply"):
        sources.resolve_dataset("tinyff", {"source_is": "A"})
    assert "cannot apply" in dataset_fingerprint("tinyff", {"source_is": "A"})["unavailable"]


def test_manifest_write_is_atomic(tmp_path, monkeypatch):
    table = pd.DataFrame([["a.png", 0, "v", "d", "train", "real", 0, "a.png", "a.png"]],
                         columns=COLUMNS)
    out = save_manifest(table, tmp_path / "m.csv")
    before = out.read_bytes()

    def half_write(self, path, *args, **kwargs):
        Path(path).write_text("path,lab")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_write)
    with pytest.raises(OSError, match="disk full"):
        save_manifest(table, out)
    assert out.read_bytes() == before  # readers still see the whole old file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv"]  # no temp file left


# ---------------------------------------------------------------- teacher


def _fitted_twin(folder: Path, unet_bytes: bytes) -> Path:
    (folder / "unet").mkdir(parents=True, exist_ok=True)
    (folder / "vae").mkdir(exist_ok=True)
    (folder / "unet/config.json").write_text('{"cross_attention_dim": 768}')
    (folder / "unet/diffusion_pytorch_model.safetensors").write_bytes(unet_bytes)
    (folder / "vae/diffusion_pytorch_model.safetensors").write_bytes(b"vae" * 100)
    (folder / "ablate_teacher.json").write_text('{"created": "today"}')
    return folder


def test_refit_twin_changes_teacher_sha(isolated):
    folder = _fitted_twin(isolated / "teachers" / "tiny-sd15-synth-blend", b"a" * 1000)
    cfg = compose(["teacher.path=tiny-sd15-synth-blend"])  # a name under the teachers folder
    first, whole = teacher_fingerprint(cfg), reuse_key(cfg)
    assert first.startswith("weights:")
    assert teacher_fingerprint(compose([f"teacher.path={folder}"])) == first  # same weights
    weights = folder / "unet/diffusion_pytorch_model.safetensors"
    stat = weights.stat()
    weights.write_bytes(b"b" * 1000)  # a re-fit: same size, new bytes, new mtime
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    refit = teacher_fingerprint(cfg)
    assert refit != first
    (folder / "ablate_teacher.json").write_text('{"created": "tomorrow"}')  # provenance only
    assert teacher_fingerprint(cfg) == refit
    assert reuse_key(cfg)["identity"] != whole["identity"]
    assert reuse_key(cfg)["recipe_hash"] == whole["recipe_hash"]


def test_touch_keeps_the_sha_but_rehashes(isolated, monkeypatch):
    lora = isolated / "adapter.safetensors"
    lora.write_bytes(b"lora weights" * 50)
    calls = []
    real = keys.sha256_file
    monkeypatch.setattr(keys, "sha256_file", lambda p: calls.append(p) or real(p))
    cfg = compose([f"teacher.lora={lora}"])
    first = teacher_fingerprint(cfg)
    assert len(calls) == 1
    cached = json.loads((isolated / "cache" / keys.DIGEST_FILE).read_text())["entries"]
    assert cached[f"file:{lora.resolve()}"]["sha256"] == hashlib.sha256(lora.read_bytes()).hexdigest()
    assert teacher_fingerprint(cfg) == first and len(calls) == 1  # cached: not read again
    stat = lora.stat()
    os.utime(lora, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched, same bytes
    assert teacher_fingerprint(cfg) == first and len(calls) == 2
    lora.write_bytes(b"other weights" * 50)
    assert teacher_fingerprint(cfg) != first


def test_missing_weights_say_so_and_baseline_has_no_teacher(isolated):
    assert teacher_fingerprint(compose(["teacher.path=/no/such/twin"])) == "missing:/no/such/twin"
    assert teacher_fingerprint(compose(["teacher.lora=nowhere"])) == "missing:nowhere"
    empty = isolated / "adapter"  # an adapter folder without its weights file
    empty.mkdir()
    assert teacher_fingerprint(compose([f"teacher.lora={empty}"])) == f"missing:{empty}"
    assert teacher_fingerprint(compose(["guide=none"])) is None
    assert reuse_key(compose(["recipe=baseline", "teacher.seed=5"]))["teacher_sha"] is None


def test_the_fingerprint_finds_a_stored_teacher_where_loading_does(tmp_path, monkeypatch):
    from ablate.model.teachers import lora as tm

    for module in (tm, keys):
        monkeypatch.setattr(module, "TEACHERS_DIR", tmp_path)
    (tmp_path / "twin").mkdir()
    assert keys.stored("twin") == tm.stored_path("twin", "teacher.path")
