"""Adapters on tiny fake trees of each dataset layout."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from ablate.core.errors import AblateError
from ablate.data.adapters import (
    DATASETS,
    DESCRIPTIVE_KEYS,
    adapter_settings,
    build_from_config,
    build_manifest,
    sample_evenly,
    sampling_from,
)
from ablate.data.cli import data as data_cli
from ablate.data.manifest import COLUMNS, OPTIONAL_COLUMNS, load_manifest

ALL = {"frames_per_video": None, "frames_per_video_eval": None}
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "data"


def frames(folder: Path, indices, ext: str = "png") -> Path:
    """Write tiny images named by frame index into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in indices:
        pixels = np.full((8, 8, 3), i % 256, dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:04d}.{ext}")
    return folder


# ---------------------------------------------------------------- FaceForensics++


@pytest.fixture
def ffpp_root(tmp_path: Path) -> Path:
    root = tmp_path / "ffpp"
    orig = root / "original_sequences/youtube/c23/frames"
    for vid in ("000", "001", "002", "003", "004", "005"):
        frames(orig / vid, [i for i in range(10) if not (vid == "001" and i == 3)])
    for method, names in {
        "Deepfakes": ["000_001", "001_000", "002_003", "004_005"],
        "Face2Face": ["000_001", "003_002", "005_004"],
    }.items():
        for name in names:
            frames(root / "manipulated_sequences" / method / "c23/frames" / name, range(10))
    (root / "splits").mkdir()
    for split, pairs in {
        "train": [["000", "001"]],
        "val": [["002", "003"]],
        "test": [["004", "005"]],
    }.items():
        (root / "splits" / f"{split}.json").write_text(json.dumps(pairs))
    return root


def _ffpp(root: Path, **settings) -> pd.DataFrame:
    return DATASETS.build("ffpp", root=str(root), methods=["Deepfakes", "Face2Face"], **settings)


def test_ffpp_rows_labels_splits(ffpp_root):
    df = _ffpp(ffpp_root, **ALL)
    assert list(df.columns) == COLUMNS + list(OPTIONAL_COLUMNS)
    assert set(df["dataset"]) == {"ffpp"}
    videos = df.groupby("video_id").agg(split=("split", "first"), label=("label", "first"))
    assert videos.loc["original/000", "split"] == "train"
    assert videos.loc["original/003", "split"] == "val"
    assert videos.loc["Deepfakes/004_005", "split"] == "test"
    assert videos.loc["Face2Face/003_002", "split"] == "val"
    assert videos["label"].to_dict()["Deepfakes/001_000"] == 1
    assert len(df) == 6 * 10 - 1 + 7 * 10
    reals = df[df["label"] == 0]
    assert (reals["source_path"] == reals["path"]).all()
    assert (reals["target_path"] == reals["path"]).all()


@pytest.mark.parametrize("source_is, source, target", [("B", "001", "000"), ("A", "000", "001")])
def test_ffpp_pairs_fake_frames_with_originals(ffpp_root, source_is, source, target):
    df = _ffpp(ffpp_root, source_is=source_is, **ALL)
    row = df[(df["video_id"] == "Deepfakes/000_001") & (df["frame"] == 5)].iloc[0]
    orig = ffpp_root / "original_sequences/youtube/c23/frames"
    assert row["source_path"] == str(orig / source / "0005.png")
    assert row["target_path"] == str(orig / target / "0005.png")


def test_ffpp_missing_original_frame_uses_nearest_and_counts(ffpp_root):
    df = _ffpp(ffpp_root, **ALL)
    row = df[(df["video_id"] == "Deepfakes/000_001") & (df["frame"] == 3)].iloc[0]
    assert Path(row["source_path"]).parts[-2:] == ("001", "0002.png")  # 001 lacks frame 3
    assert Path(row["target_path"]).parts[-2:] == ("000", "0003.png")
    notes = df.attrs["notes"]
    # fakes 000_001 (x2 methods) need source 001 frame 3; 001_000 needs it as target
    assert notes["fake frames paired with the nearest source frame (same index absent)"] == 2
    assert notes["fake frames paired with the nearest target frame (same index absent)"] == 1


def test_ffpp_frame_sampling_per_split(ffpp_root):
    df = _ffpp(ffpp_root, frames_per_video=4, frames_per_video_eval=2)
    per_video = df.groupby(["split", "video_id"]).size()
    assert set(per_video["train"]) == {4}
    assert set(per_video["val"]) == {2} and set(per_video["test"]) == {2}
    assert sorted(df.loc[df["video_id"] == "Deepfakes/000_001", "frame"]) == [0, 3, 6, 9]


def test_ffpp_balances_fakes_to_ratio(ffpp_root):
    df = _ffpp(ffpp_root, fake_real_ratio=1.0, **ALL)
    counts = df.groupby(["split", "label"]).size().unstack()
    assert (counts[1] <= counts[0]).all()
    assert counts.loc["train", 1] == counts.loc["train", 0] == 19
    kept = _ffpp(ffpp_root, fake_real_ratio=None, **ALL)
    assert (kept["label"] == 1).sum() == 70


def test_official_code_preset(ffpp_root):
    sampling = sampling_from("ffpp", {"preset": "official_code"})
    assert sampling.frames("train", 0) == 50 and sampling.frames("test", 1) == 16
    assert sampling.fake_real_ratio == 1.0
    assert (
        sampling_from("ffpp", {"preset": "official_code", "fake_real_ratio": 2}).fake_real_ratio
        == 2
    )
    df = _ffpp(ffpp_root, preset="official_code", frames_per_fake_video=3)
    per_video = df.groupby("video_id").size()
    assert per_video["original/000"] == 10
    counts = df.groupby(["split", "label"]).size().unstack()
    assert counts.loc["train", 1] == 9  # 3 fake videos x 3 frames, under 19 reals


def test_official_code_balances_train_only(ffpp_root):
    """Released code: fakes subsampled 1:1 on train; val and test keep every sampled frame."""
    df = _ffpp(ffpp_root, preset="official_code", frames_per_real_video=2,
               frames_per_fake_video=10)
    counts = df.groupby(["split", "label"]).size().unstack()
    assert counts.loc["train", 0] == 4 and counts.loc["train", 1] == 4  # 30 fakes -> 4
    assert counts.loc["val", 0] == 4 and counts.loc["val", 1] == 20  # all kept
    assert counts.loc["test", 0] == 4 and counts.loc["test", 1] == 20
    every = _ffpp(ffpp_root, preset="official_code", frames_per_real_video=2,
                  frames_per_fake_video=10, balance_splits=["train", "val", "test"])
    assert (every.groupby(["split", "label"]).size().unstack()[1] == 4).all()


def test_sample_evenly():
    assert sample_evenly(list(range(10)), 3) == [0, 4, 9]  # linspace(0, 9, 3) = 0, 4.5, 9
    assert sample_evenly([1, 2], 5) == [1, 2]
    assert sample_evenly([1, 2, 3], None) == [1, 2, 3]


def test_ffpp_errors(ffpp_root, tmp_path):
    with pytest.raises(AblateError, match="not found"):
        _ffpp(tmp_path / "nowhere")
    with pytest.raises(AblateError, match="no setting"):
        _ffpp(ffpp_root, colour="blue")
    with pytest.raises(AblateError, match="unknown FF\\+\\+ method"):
        DATASETS.build("ffpp", root=str(ffpp_root), methods=["Deepfake"])
    with pytest.raises(AblateError, match="leave FaceSwap out"):  # default methods
        DATASETS.build("ffpp", root=str(ffpp_root))
    with pytest.raises(AblateError, match="source_is"):
        _ffpp(ffpp_root, source_is="C")
    (ffpp_root / "splits/val.json").write_text(json.dumps([["998", "999"]]))
    with pytest.raises(AblateError, match="no val frames"):
        _ffpp(ffpp_root)
    assert set(_ffpp(ffpp_root, splits=["train", "test"])["split"]) == {"train", "test"}
    (ffpp_root / "splits/val.json").unlink()
    with pytest.raises(AblateError, match="split file"):
        _ffpp(ffpp_root)


def test_build_manifest_writes_relative_and_round_trips(ffpp_root):
    out = ffpp_root / "ffpp.csv"
    df = build_manifest(
        "ffpp",
        str(ffpp_root),
        str(out),
        methods="Deepfakes",
        frames_per_video=2,
        frames_per_video_eval=2,
    )
    text = pd.read_csv(out, dtype=str)
    assert text["path"].str.startswith("original_sequences/youtube/c23/frames/").sum() == 12
    assert text["video_id"].str.startswith("original/00").sum() == 12
    elsewhere = ffpp_root / "manifests" / "ffpp.csv"  # not above the frames: absolute paths
    build_manifest("ffpp", str(ffpp_root), str(elsewhere), methods="Deepfakes")
    assert pd.read_csv(elsewhere, dtype=str)["path"].str.startswith(str(ffpp_root)).all()
    back = load_manifest(out)
    assert back["path"].tolist() == df["path"].tolist()
    assert back["source_path"].tolist() == df["source_path"].tolist()
    assert back["video_id"].tolist() == df["video_id"].tolist()


# ---------------------------------------------------------------- Celeb-DF


def _celeb_tree(root: Path, first: str = "frames") -> Path:
    def folder(sub: str) -> Path:
        return root / first / sub if first == "frames" else root / sub / "frames"

    for vid in ("id0_0000", "id1_0000", "id0_0001"):
        frames(folder("Celeb-real") / vid, range(4))
    frames(folder("YouTube-real") / "00170", range(4))
    frames(folder("Celeb-synthesis") / "id0_id1_0000", range(4))
    frames(folder("Celeb-synthesis") / "id1_id0_0001", range(4))
    (root / "List_of_testing_videos.txt").write_text(
        "1 YouTube-real/00170.mp4\n0 Celeb-synthesis/id0_id1_0000.mp4\n"
        "1 Celeb-real/id0_0001.mp4\n0 Celeb-synthesis/id9_id8_0000.mp4\n"
    )
    return root


def test_celebdf_test_list_and_labels(tmp_path):
    root = _celeb_tree(tmp_path / "celeb")
    df = DATASETS.build("celebdf", root=str(root), val_fraction=0.0, **ALL)
    test = df[df["split"] == "test"].groupby("video_id")["label"].first()
    assert test.to_dict() == {
        "YouTube-real/00170": 0,
        "Celeb-synthesis/id0_id1_0000": 1,
        "Celeb-real/id0_0001": 0,
    }
    assert set(df.loc[df["split"] == "train", "video_id"]) == {
        "Celeb-real/id0_0000",
        "Celeb-real/id1_0000",
        "Celeb-synthesis/id1_id0_0001",
    }
    assert df.attrs["notes"]["test-list videos without frames (missing from test)"] == 1


def test_celebdf_pairs_source_and_target(tmp_path):
    root = _celeb_tree(tmp_path / "celeb")
    df = DATASETS.build("celebdf", root=str(root), **ALL).set_index(["video_id", "frame"])
    row = df.loc[("Celeb-synthesis/id0_id1_0000", 2)]
    assert Path(row["source_path"]).parts[-2:] == ("id1_0000", "0002.png")
    assert Path(row["target_path"]).parts[-2:] == ("id0_0000", "0002.png")
    row = df.loc[("Celeb-synthesis/id1_id0_0001", 2)]  # target id1_0001 does not exist
    assert pd.isna(row["target_path"])
    assert Path(row["source_path"]).parts[-2:] == ("id0_0001", "0002.png")


def test_celebdf_layout_setting_and_inverted_list(tmp_path):
    root = _celeb_tree(tmp_path / "celeb", first="sub")
    df = DATASETS.build("celebdf", root=str(root), layout="subfolder_first", **ALL)
    assert (df["split"] == "test").sum() == 12
    (root / "List_of_testing_videos.txt").write_text("0 YouTube-real/00170.mp4\n")
    with pytest.raises(AblateError, match="1 for real"):
        DATASETS.build("celebdf", root=str(root), layout="subfolder_first")


def test_celebdf_val_fraction(tmp_path):
    root = _celeb_tree(tmp_path / "celeb")
    df = DATASETS.build("celebdf", root=str(root), val_fraction=0.5, **ALL)
    assert df.loc[df["split"] == "val", "video_id"].nunique() == 2  # round(0.5 * 3)
    assert df.loc[df["split"] == "train", "video_id"].nunique() == 1


# ---------------------------------------------------------------- others


def test_wilddeepfake(tmp_path):
    root = tmp_path / "wild"
    frames(root / "real_train/a", range(3))
    frames(root / "fake_train/b", range(3))
    frames(root / "real_test/c", range(3))
    frames(root / "fake_test/7/fake/0", range(3), ext="jpg")
    df = DATASETS.build("wilddeepfake", root=str(root), val_fraction=0.0)
    videos = df.groupby("video_id").agg(label=("label", "first"), split=("split", "first"))
    assert videos.to_dict("index") == {
        "real_train/a": {"label": 0, "split": "train"},
        "fake_train/b": {"label": 1, "split": "train"},
        "real_test/c": {"label": 0, "split": "test"},
        "fake_test/7": {"label": 1, "split": "test"},  # the source video, not the sequence
    }
    assert df.loc[df["label"] == 1, "source_path"].isna().all()
    with pytest.raises(AblateError, match="no video folders"):
        DATASETS.build("wilddeepfake", root=str(tmp_path))


def _dfdc_tree(root: Path) -> Path:
    meta = {
        "original_videos/111/111_A_001.mp4": {"label": "real", "set": "test", "target_id": "111"},
        "method_A/111/111_A/222_B_001.mp4": {"label": "fake", "set": "test", "target_id": "111"},
        "method_B/333/333_A/333_C_002.mp4": {"label": "fake", "set": "train"},
        "original_videos/333/333_A_002.mp4": {"label": "real", "set": "train"},
    }
    root.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps(meta))
    for key in list(meta)[:3]:
        frames(root / "frames" / Path(key).stem, range(3))
    return root


def test_dfdc_preview(tmp_path):
    df = DATASETS.build("dfdc_preview", root=str(_dfdc_tree(tmp_path / "dfdc")), val_fraction=0)
    videos = df.groupby("video_id").agg(
        label=("label", "first"), split=("split", "first"), method=("method", "first")
    )
    assert videos.loc["method_A/111/111_A/222_B_001"].tolist() == [1, "test", "method_A"]
    assert videos.loc["original_videos/111/111_A_001"].tolist() == [0, "test", "real"]
    assert videos.loc["method_B/333/333_A/333_C_002"].tolist() == [1, "train", "method_B"]
    assert df.attrs["notes"]["dataset.json videos without a frame folder (skipped)"] == 1


def test_dfdc_preview_stem_clash_and_mirror(tmp_path):
    root = tmp_path / "dfdc"
    root.mkdir()
    meta = {
        "original_videos/1/x.mp4": {"label": "real", "set": "test"},
        "method_A/1/x.mp4": {"label": "fake", "set": "test"},
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(AblateError, match="layout=mirror"):
        DATASETS.build("dfdc_preview", root=str(root), layout="stem")
    for key in meta:
        frames(root / "frames" / key.removesuffix(".mp4"), range(2))
    df = DATASETS.build("dfdc_preview", root=str(root), layout="mirror")
    assert sorted(df.groupby("video_id")["label"].first()) == [0, 1]


def test_dfd(tmp_path):
    root = tmp_path / "dfd"
    frames(root / "original_sequences/actors/c23/frames/01__walking", range(5))
    frames(root / "manipulated_sequences/DeepFakeDetection/c23/frames/01_02__walking__X", range(5))
    df = DATASETS.build("dfd", root=str(root), frames_per_video_eval=2)
    assert set(df["split"]) == {"test"} and len(df) == 4
    assert df.groupby("method")["label"].first().to_dict() == {"DeepFakeDetection": 1, "real": 0}
    with pytest.raises(AblateError, match="c40"):
        DATASETS.build("dfd", root=str(root), compression="c40")


def test_diffswap(tmp_path):
    root = tmp_path / "diffswap"
    frames(root / "real/r1", range(2))
    frames(root / "fake/f1", range(2))
    frames(root / "fake/f2", range(2))
    df = DATASETS.build("diffswap", root=str(root))
    assert set(df["split"]) == {"test"}
    assert df.groupby("label").size().to_dict() == {0: 2, 1: 4}
    (root / "real/r1").rename(root / "r1")
    (root / "real").rmdir()
    with pytest.raises(AblateError, match="real"):
        DATASETS.build("diffswap", root=str(root))


# ---------------------------------------------------------------- configs and CLI


@pytest.mark.parametrize("config", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_data_configs_name_known_settings(config):
    cfg = yaml.safe_load(config.read_text())
    assert cfg["name"] in DATASETS
    settings = {k for k in cfg if k not in ("name", "root", "manifest", *DESCRIPTIVE_KEYS)}
    assert settings <= set(adapter_settings(cfg["name"]))


def test_build_from_config(tmp_path):
    root = tmp_path / "diffswap"
    frames(root / "real/r1", range(2))
    frames(root / "fake/f1", range(2))
    cfg = yaml.safe_load((CONFIGS / "diffswap.yaml").read_text())
    with pytest.raises(AblateError, match="root"):
        build_from_config(cfg)
    df = build_from_config({**cfg, "root": str(root), "manifest": str(tmp_path / "m.csv")})
    assert len(df) == 4 and (tmp_path / "m.csv").is_file()


def test_cli_manifest_then_check(ffpp_root, tmp_path):
    out = tmp_path / "m.parquet"
    runner = CliRunner()
    result = runner.invoke(
        data_cli,
        [
            "manifest",
            "ffpp",
            "--root",
            str(ffpp_root),
            "--out",
            str(out),
            "--source-is",
            "A",
            "--set",
            "methods=[Deepfakes]",
            "--set",
            "frames_per_video=4",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "nearest" in result.output
    result = runner.invoke(data_cli, ["check", str(out)])
    assert result.exit_code == 0, result.output
    assert "no problems found" in result.output
    result = runner.invoke(
        data_cli, ["manifest", "ffpp", "--root", str(ffpp_root), "--out", str(out), "--set", "oops"]
    )
    assert isinstance(result.exception, AblateError)
    result = runner.invoke(
        data_cli, ["manifest", "nope", "--root", str(ffpp_root), "--out", str(out)]
    )
    assert isinstance(result.exception, AblateError)


# ---------------------------------------------------------------- presets and the record


@pytest.mark.parametrize(
    "preset, counts",
    [
        ("deepfakebench", {"frames_per_video": 32, "frames_per_video_eval": 32,
                           "frames_per_real_video": None, "frames_per_fake_video": None,
                           "fake_real_ratio": None}),
        ("paper", {"frames_per_video": 270, "frames_per_video_eval": 100,
                   "frames_per_real_video": None, "frames_per_fake_video": None,
                   "fake_real_ratio": None}),
        ("official_code", {"frames_per_real_video": 50, "frames_per_fake_video": 16,
                           "fake_real_ratio": 1.0}),
    ],
)
def test_preset_recorded_beside_the_manifest(ffpp_root, tmp_path, preset, counts):
    out = tmp_path / "m.csv"
    df = build_manifest("ffpp", str(ffpp_root), str(out), methods=["Deepfakes"], preset=preset)
    record = json.loads((tmp_path / "m.csv.json").read_text())
    assert record["preset"] == preset and record["adapter"] == "ffpp"
    assert {k: record[k] for k in counts} == counts
    assert record["layout"] == "frames" and record["rows"] == len(df)
    assert record["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert load_manifest(out).attrs["protocol"]["preset"] == preset
    # every video has 10 frames (original 001: 9), fewer than any preset asks
    fewer = df.attrs["notes"]["videos with fewer frames than asked (all their frames kept)"]
    assert fewer == df["video_id"].nunique() == 6 + 4
    assert "001: 9 < " in " ".join(df.attrs["note_examples"][
        "videos with fewer frames than asked (all their frames kept)"])


def test_fewer_frames_note_counts_only_short_videos(ffpp_root):
    df = _ffpp(ffpp_root, frames_per_video=10, frames_per_video_eval=10)
    key = "videos with fewer frames than asked (all their frames kept)"
    assert df.attrs["notes"][key] == 1  # only original/001 (9 frames) is short of 10
    assert df.attrs["note_examples"][key] == ["original/001: 9 < 10"]
    assert key not in _ffpp(ffpp_root, frames_per_video=9, frames_per_video_eval=9).attrs["notes"]


def test_explicit_counts_win_over_the_preset_and_are_recorded(ffpp_root, tmp_path):
    out = tmp_path / "m.csv"
    build_manifest("ffpp", str(ffpp_root), str(out), methods=["Deepfakes"],
                   preset="deepfakebench", frames_per_video=4)
    record = json.loads((tmp_path / "m.csv.json").read_text())
    assert (record["preset"], record["frames_per_video"], record["frames_per_video_eval"]) == (
        "deepfakebench", 4, 32)
    assert pd.read_csv(out).query("split == 'train'").groupby("video_id").size().max() == 4


def test_failed_build_keeps_the_previous_manifest_and_record(ffpp_root, tmp_path):
    out = tmp_path / "m.csv"
    build_manifest("ffpp", str(ffpp_root), str(out), methods=["Deepfakes"], preset="paper")
    before = out.read_bytes(), (tmp_path / "m.csv.json").read_bytes()
    with pytest.raises(AblateError):
        build_manifest("ffpp", str(ffpp_root), str(out), methods=["Deepfakes"], layout="nope")
    assert (out.read_bytes(), (tmp_path / "m.csv.json").read_bytes()) == before


def test_config_settings_reach_the_manifest(tmp_path, monkeypatch):
    """configs/data/<name>.yaml settings (preset, layout, frames) reach the built manifest
    through the recipe's path: sources.locate -> build_from_config -> manifest + record."""
    from ablate.data import sources

    root = tmp_path / "celeb"
    _celeb_tree(root, first="sub")
    frames(root / "frames/Celeb-real/id5_0000", range(4))  # a second layout: detection fails
    cfg = yaml.safe_load((CONFIGS / "celebdf.yaml").read_text())
    cfg.update(root=str(root), preset="deepfakebench", layout="subfolder_first",
               frames_per_video_eval=2)
    configs = tmp_path / "configs" / "data"
    configs.mkdir(parents=True)
    (configs / "mycel.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("ABLATE_CONFIG_PATH", str(tmp_path / "configs"))
    monkeypatch.chdir(tmp_path)
    source = sources.locate("mycel")
    table = load_manifest(source.manifest)
    record = table.attrs["protocol"]
    assert (record["preset"], record["layout"]) == ("deepfakebench", "subfolder_first")
    assert (record["frames_per_video"], record["frames_per_video_eval"]) == (32, 2)
    assert set(table[table["split"] == "test"].groupby("video_id").size()) == {2}
    assert not table["path"].str.contains("id5_0000").any()  # the other layout's tree unread

    out = tmp_path / "direct.csv"
    build_from_config({**cfg, "manifest": str(out)})
    assert json.loads((tmp_path / "direct.csv.json").read_text())["settings"]["layout"] == (
        "subfolder_first")
