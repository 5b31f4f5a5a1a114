"""Adapters on trees built from small descriptions of each tool's PUBLIC layout.

Each tree below is a literal list of paths transcribed from the named public source (not
from the adapters' own path functions), so a wrong assumption in an adapter fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from ablate.core.errors import AblateError
from ablate.data.adapters import DATASETS, build_manifest
from ablate.data.cli import data as data_cli
from ablate.data.manifest import load_manifest

CELEB_TEST_LIST = "1 YouTube-real/00170.mp4\n0 Celeb-synthesis/id0_id1_0000.mp4\n"


def build(root: Path, paths: list[str], texts: dict[str, str] | None = None) -> Path:
    """Create every path: images for .png/.jpg, the given text (else a stub) for others."""
    for rel in paths:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix in (".png", ".jpg"):
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
        else:
            path.write_text((texts or {}).get(rel, "stub"))
    return root


def videos(df: pd.DataFrame) -> dict[str, tuple]:
    """video_id -> (label, split, method) from the table's rows."""
    g = df.groupby("video_id").agg(label=("label", "first"), split=("split", "first"),
                                   method=("method", "first"))
    return {k: (int(v["label"]), v["split"], v["method"]) for k, v in g.to_dict("index").items()}


# ---------------------------------------------------------------- Celeb-DF

# DeepfakeBench preprocessing/preprocess.py: "frames", "landmarks" and "mask" directories in
# the same directory as the "videos" folder (save_path / 'frames' / <video stem> /
# f"{cnt_frame:03d}.png"); rearrange.py reads Celeb-DF-v2/<sub>/frames/<video>/.
CELEB_DEEPFAKEBENCH = [
    "Celeb-real/videos/id0_0000.mp4",
    "Celeb-real/frames/id0_0000/000.png",
    "Celeb-real/frames/id0_0000/010.png",
    "Celeb-real/landmarks/id0_0000/000.npy",
    "Celeb-real/frames/id1_0000/000.png",
    "Celeb-real/frames/id1_0000/010.png",
    "YouTube-real/frames/00170/000.png",
    "Celeb-synthesis/videos/id0_id1_0000.mp4",
    "Celeb-synthesis/frames/id0_id1_0000/000.png",
    "Celeb-synthesis/frames/id0_id1_0000/010.png",
    "List_of_testing_videos.txt",
]
# DiffusionFake datasets/celeb_df.py: f'{data_root}/Celeb-synthesis-mtcnn/*',
# Celeb-real-mtcnn, YouTube-real-mtcnn, List_of_testing_videos.txt at data_root.
CELEB_DIFFUSIONFAKE = [
    "Celeb-real-mtcnn/id0_0000/0000.png",
    "Celeb-real-mtcnn/id1_0000/0000.png",
    "YouTube-real-mtcnn/00170/0000.png",
    "Celeb-synthesis-mtcnn/id0_id1_0000/0000.png",
    "List_of_testing_videos.txt",
]
# docs/data.md: `ablate data prepare --videos 'ROOT/*/*.mp4' --out ROOT/frames`
CELEB_PREPARE = [
    "frames/Celeb-real/id0_0000/0000.png",
    "frames/Celeb-real/id1_0000/0000.png",
    "frames/YouTube-real/00170/0000.png",
    "frames/Celeb-synthesis/id0_id1_0000/0000.png",
    "List_of_testing_videos.txt",
]
CELEB_EXPECTED = {
    "Celeb-real/id0_0000": (0, "train", "real"),
    "Celeb-real/id1_0000": (0, "train", "real"),
    "YouTube-real/00170": (0, "test", "real"),
    "Celeb-synthesis/id0_id1_0000": (1, "test", "Celeb-synthesis"),
}


@pytest.mark.parametrize(
    "tree, layout",
    [(CELEB_DEEPFAKEBENCH, "subfolder_first"), (CELEB_DIFFUSIONFAKE, "mtcnn"),
     (CELEB_PREPARE, "frames_first")],
    ids=["deepfakebench", "diffusionfake", "prepare"],
)
def test_celebdf_layouts_read_without_settings(tmp_path, tree, layout):
    root = build(tmp_path / "Celeb-DF-v2", tree, {"List_of_testing_videos.txt": CELEB_TEST_LIST})
    df = DATASETS.build("celebdf", root=str(root), val_fraction=0.0)
    assert videos(df) == CELEB_EXPECTED
    assert df.attrs["protocol"]["layout"] == layout
    fake = df[df["video_id"] == "Celeb-synthesis/id0_id1_0000"].iloc[0]
    # fake idX_idY_NNNN: target idX_NNNN, source (donor identity) idY_NNNN
    assert Path(fake["target_path"]).parent.name == "id0_0000"
    assert Path(fake["source_path"]).parent.name == "id1_0000"
    identity = df.groupby("video_id")["identity"].first()
    assert identity["Celeb-real/id0_0000"] == identity["Celeb-synthesis/id0_id1_0000"] == "id0"
    assert identity["Celeb-real/id1_0000"] == "id1"
    assert pd.isna(identity["YouTube-real/00170"])


def test_celebdf_ambiguous_and_unknown_layouts_name_every_option(tmp_path):
    root = build(tmp_path / "c", CELEB_DEEPFAKEBENCH + CELEB_PREPARE,
                 {"List_of_testing_videos.txt": CELEB_TEST_LIST})
    with pytest.raises(AblateError) as err:
        DATASETS.build("celebdf", root=str(root))
    text = str(err.value)
    assert "several" in text and "\n" not in text and "--set layout=" in text
    assert all(name in text for name in ("frames_first", "subfolder_first", "mtcnn"))
    df = DATASETS.build("celebdf", root=str(root), layout="subfolder_first", val_fraction=0.0)
    assert df.attrs["protocol"]["layout"] == "subfolder_first"  # explicit layout= wins
    assert df["path"].str.contains("/Celeb-real/frames/").any()
    out = tmp_path / "c.csv"
    result = CliRunner().invoke(data_cli, ["manifest", "celebdf", "--root", str(root), "--out",
                                           str(out), "--layout", "mtcnn"])
    assert isinstance(result.exception, AblateError) and not out.exists()  # no mtcnn folders
    result = CliRunner().invoke(data_cli, ["manifest", "celebdf", "--root", str(root), "--out",
                                           str(out), "--layout", "subfolder_first"])
    assert result.exit_code == 0, result.output
    assert "layout subfolder_first" in result.output

    empty = build(tmp_path / "e", ["List_of_testing_videos.txt"],
                  {"List_of_testing_videos.txt": CELEB_TEST_LIST})
    with pytest.raises(AblateError) as err:
        DATASETS.build("celebdf", root=str(empty))
    text = str(err.value)
    assert "none of the known layouts" in text and "\n" not in text
    assert all(name in text for name in ("frames_first", "subfolder_first", "mtcnn", "layout="))


# ---------------------------------------------------------------- FaceForensics++

# DeepfakeBench: rearrange.py opens FaceForensics++/{train,val,test}.json at the dataset
# root; preprocess.py writes <M>/c23/frames/<video>/NNN.png beside <M>/c23/videos/.
FF_DEEPFAKEBENCH = [
    "train.json", "val.json", "test.json",
    "original_sequences/youtube/c23/videos/000.mp4",
    "original_sequences/youtube/c23/frames/000/000.png",
    "original_sequences/youtube/c23/frames/000/001.png",
    "original_sequences/youtube/c23/landmarks/000/000.npy",
    "original_sequences/youtube/c23/frames/003/000.png",
    "original_sequences/youtube/c23/frames/003/001.png",
    "original_sequences/youtube/c23/frames/001/000.png",
    "original_sequences/youtube/c23/frames/002/000.png",
    "manipulated_sequences/Deepfakes/c23/videos/000_003.mp4",
    "manipulated_sequences/Deepfakes/c23/frames/000_003/000.png",
    "manipulated_sequences/Deepfakes/c23/frames/000_003/001.png",
    "manipulated_sequences/Deepfakes/c23/frames/003_000/000.png",
    "manipulated_sequences/Deepfakes/c23/frames/001_002/000.png",
    "manipulated_sequences/Deepfakes/masks/videos/000_003.mp4",
    "manipulated_sequences/Face2Face/c23/frames/000_003/000.png",
    "manipulated_sequences/Face2Face/c23/frames/002_001/000.png",
]
# skJack/DiffusionFake README "Training Data Preparation": c23/000_003/000_003_0000.png and
# original_sequences/youtube/c23/000/000_0000.png; datasets/ffpp_control.py reads
# os.path.join(data_root, 'splits') for {split}.json.
FF_DIFFUSIONFAKE = [
    "splits/train.json", "splits/val.json", "splits/test.json",
    "original_sequences/youtube/c23/000/000_0000.png",
    "original_sequences/youtube/c23/000/000_0001.png",
    "original_sequences/youtube/c23/003/003_0000.png",
    "original_sequences/youtube/c23/003/003_0001.png",
    "original_sequences/youtube/c23/001/001_0000.png",
    "original_sequences/youtube/c23/002/002_0000.png",
    "manipulated_sequences/Deepfakes/c23/000_003/000_003_0000.png",
    "manipulated_sequences/Deepfakes/c23/000_003/000_003_0001.png",
    "manipulated_sequences/Deepfakes/c23/003_000/003_000_0000.png",
    "manipulated_sequences/Deepfakes/c23/001_002/001_002_0000.png",
    "manipulated_sequences/Face2Face/c23/000_003/000_003_0000.png",
    "manipulated_sequences/Face2Face/c23/002_001/002_001_0000.png",
]
SPLIT_TEXT = {"train": [["000", "003"]], "val": [["001", "002"]], "test": [["004", "005"]]}


def _ff_texts(prefix: str, **lists) -> dict[str, str]:
    return {f"{prefix}{s}.json": json.dumps(p) for s, p in {**SPLIT_TEXT, **lists}.items()}


@pytest.mark.parametrize(
    "tree, prefix, layout",
    [(FF_DEEPFAKEBENCH, "", "frames"), (FF_DIFFUSIONFAKE, "splits/", "diffusionfake")],
    ids=["deepfakebench", "diffusionfake"],
)
def test_ffpp_layouts_read_without_settings(tmp_path, tree, prefix, layout):
    root = build(tmp_path / "FaceForensics++", tree, _ff_texts(prefix))
    df = DATASETS.build("ffpp", root=str(root), methods=["Deepfakes", "Face2Face"],
                        splits=["train", "val"], frames_per_video=None, frames_per_video_eval=None)
    assert df.attrs["protocol"]["layout"] == layout
    assert videos(df) == {
        "original/000": (0, "train", "real"),
        "original/003": (0, "train", "real"),
        "original/001": (0, "val", "real"),
        "original/002": (0, "val", "real"),
        "Deepfakes/000_003": (1, "train", "Deepfakes"),
        "Deepfakes/003_000": (1, "train", "Deepfakes"),
        "Deepfakes/001_002": (1, "val", "Deepfakes"),
        "Face2Face/000_003": (1, "train", "Face2Face"),
        "Face2Face/002_001": (1, "val", "Face2Face"),
    }
    # frame 1 of fake 000_003 pairs with frame 1 of originals: target 000, source 003
    row = df[(df["video_id"] == "Deepfakes/000_003") & (df["frame"] == 1)].iloc[0]
    assert Path(row["target_path"]).parent.name == "000"
    assert Path(row["source_path"]).parent.name == "003"
    assert Path(row["source_path"]).stem.endswith("1")
    # identity = target original A: real A and fakes A_B of every method share it
    identity = df.groupby("video_id")["identity"].first().to_dict()
    assert identity == {
        "original/000": "000", "original/003": "003", "original/001": "001",
        "original/002": "002", "Deepfakes/000_003": "000", "Deepfakes/003_000": "003",
        "Deepfakes/001_002": "001", "Face2Face/000_003": "000", "Face2Face/002_001": "002",
    }


def test_ffpp_ambiguous_frames_and_splits(tmp_path):
    root = build(tmp_path / "ff", FF_DEEPFAKEBENCH + FF_DIFFUSIONFAKE, _ff_texts(""))
    for rel, text in _ff_texts("splits/").items():
        (root / rel).write_text(text)
    with pytest.raises(AblateError) as err:
        DATASETS.build("ffpp", root=str(root), methods=["Deepfakes"])
    text = str(err.value)
    assert "frames" in text and "diffusionfake" in text and "--set layout=" in text
    assert "\n" not in text
    with pytest.raises(AblateError, match="splits_dir"):
        DATASETS.build("ffpp", root=str(root), methods=["Deepfakes"], layout="frames")
    df = DATASETS.build("ffpp", root=str(root), methods=["Deepfakes"], layout="frames",
                        splits_dir=str(root / "splits"), splits=["train"])
    assert set(df["video_id"]) == {"original/000", "original/003", "Deepfakes/000_003",
                                   "Deepfakes/003_000"}


# ---------------------------------------------------------------- DFDC Preview

# DeepfakeBench preprocess.py: DFDCP sub datasets original_videos, method_A, method_B, frames
# written to <sub>/frames/<video stem>/; rearrange.py: index = key.split('/')[0], frames at
# DFDCP/<index>/frames/<vidname>, labels and sets from DFDCP/dataset.json.
DFDCP_META = {
    "original_videos/1255229/1255229_A_001.mp4": {"label": "real", "set": "test"},
    "method_A/1255229/1255229_A/1224068_B_001.mp4": {"label": "fake", "set": "test"},
    "method_B/1255229/1255229_A/1255229_C_001.mp4": {"label": "fake", "set": "train"},
    "original_videos/1224068/1224068_B_001.mp4": {"label": "real", "set": "train"},
}
DFDCP_DEEPFAKEBENCH = [
    "dataset.json",
    "original_videos/1255229/1255229_A_001.mp4",
    "original_videos/frames/1255229_A_001/000.png",
    "original_videos/frames/1224068_B_001/000.png",
    "method_A/frames/1224068_B_001/000.png",
    "method_B/frames/1255229_C_001/000.png",
]


def test_dfdc_preview_deepfakebench_layout(tmp_path):
    root = build(tmp_path / "DFDCP", DFDCP_DEEPFAKEBENCH, {"dataset.json": json.dumps(DFDCP_META)})
    df = DATASETS.build("dfdc_preview", root=str(root), val_fraction=0.0)
    assert df.attrs["protocol"]["layout"] == "deepfakebench"
    assert videos(df) == {
        "original_videos/1255229/1255229_A_001": (0, "test", "real"),
        "method_A/1255229/1255229_A/1224068_B_001": (1, "test", "method_A"),
        "method_B/1255229/1255229_A/1255229_C_001": (1, "train", "method_B"),
        "original_videos/1224068/1224068_B_001": (0, "train", "real"),
    }
    # the same stem under two top folders is no clash in this layout (method_A vs original)
    assert df.loc[df["video_id"].str.startswith("method_A"), "path"].str.contains(
        "/method_A/frames/1224068_B_001/").all()
    build(root, ["frames/1255229_A_001/000.png"])  # a second layout appears
    with pytest.raises(AblateError) as err:
        DATASETS.build("dfdc_preview", root=str(root))
    assert all(n in str(err.value) for n in ("stem", "mirror", "deepfakebench", "layout="))


# ---------------------------------------------------------------- WildDeepfake

# OpenTAI/wild-deepfake ships real_train, fake_train, real_test, fake_test archives; extracted,
# fake_test/<n>/fake/<k>/ is face sequence k of source video n (the brief transcribes it).
WILD = [
    "real_train/3/real/0/0.png", "real_train/3/real/0/1.png",
    "real_train/3/real/1/0.png", "real_train/3/real/1/1.png",
    "real_train/4/real/0/0.png",
    "real_train/5/real/0/0.png", "real_train/5/real/2/0.png",
    "real_train/6/real/0/0.png",
    "fake_train/8/fake/0/0.png", "fake_train/8/fake/1/0.png",
    "real_test/1/real/0/0.png",
    "fake_test/7/fake/0/0.png", "fake_test/7/fake/0/1.png", "fake_test/7/fake/1/0.png",
]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_wilddeepfake_video_is_the_source_video(tmp_path, seed):
    root = build(tmp_path / "wild", WILD)
    df = DATASETS.build("wilddeepfake", root=str(root), val_fraction=0.5, seed=seed,
                        frames_per_video=None, frames_per_video_eval=None)
    assert sorted(df["video_id"].unique()) == [
        "fake_test/7", "fake_train/8", "real_test/1", "real_train/3", "real_train/4",
        "real_train/5", "real_train/6",
    ]
    seq = df["path"].map(lambda p: Path(p).parent.relative_to(root).as_posix())
    assert set(seq[df["video_id"] == "fake_test/7"]) == {"fake_test/7/fake/0", "fake_test/7/fake/1"}
    assert (df["video_id"] == "fake_test/7").sum() == 3
    # no source video (so no face sequence of it) straddles train and val
    assert (df.groupby("video_id")["split"].nunique() == 1).all()
    assert set(df.loc[df["video_id"].str.contains("_train/"), "split"]) <= {"train", "val"}
    train_ids = df.loc[df["video_id"].str.contains("_train/"), ["video_id", "split"]]
    assert (train_ids.drop_duplicates()["split"] == "val").sum() == round(0.5 * 5)


# ---------------------------------------------------------------- DiffSwap


def test_diffswap_loose_images_and_grouping_folders(tmp_path):
    root = build(tmp_path / "diffswap", [
        "real/a.png", "real/b.jpg", "fake/c.png", "fake/group/0.png", "fake/group/1.png",
    ])
    df = DATASETS.build("diffswap", root=str(root))
    assert videos(df) == {
        "real/a": (0, "test", "real"), "real/b": (0, "test", "real"),
        "fake/c": (1, "test", "diffswap"), "fake/group": (1, "test", "diffswap"),
    }
    assert (df["video_id"] == "fake/group").sum() == 2


# ---------------------------------------------------------------- DF40

# YZY-stack/DF40: README method table (FS/FR/EFS/FE); DF40 issue #36 shows
# DF40/mobileswap/cdf/frames; DeepfakeBench_DF40 rearrange.py reads e4e/ff/inversions/<image>
# (one image per video); the 9 methods outside FF++/Celeb-DF ship real/ inside (README),
# e.g. CollabDiff/{real,fake} (DF40 issue #29).
DF40_TREE = [
    "simswap/ff/frames/000_003/000.png", "simswap/ff/frames/000_003/001.png",
    "simswap/cdf/frames/id0_id1_0000/000.png",
    "mobileswap/cdf/frames/id2_id3_0001/000.png",
    "fomm/ff/frames/001_002/000.png",
    "StyleGAN2/ff/frames/440/000.png",
    "sd2.1/ff/frames/447/000.png",
    "e4e/ff/inversions/000.png", "e4e/ff/inversions/001.png",
    "CollabDiff/real/r1.png", "CollabDiff/fake/f1.png",
]
DF40_FAMILY = {"simswap": "FS", "mobileswap": "FS", "fomm": "FR", "StyleGAN2": "EFS",
               "sd2.1": "EFS", "e4e": "FE", "CollabDiff": "FE"}


def test_df40_methods_families_and_test_sets(tmp_path):
    root = build(tmp_path / "DF40", DF40_TREE)
    df = DATASETS.build("df40", root=str(root))
    assert set(df["split"]) == {"test"}
    per = df.groupby("dataset").agg(family=("family", "first"))["family"].to_dict()
    assert per == {f"df40/{m}": f for m, f in DF40_FAMILY.items()}
    assert videos(df)["e4e/ff/inversions/000"] == (1, "test", "e4e")  # each image a video
    assert videos(df)["e4e/ff/inversions/001"] == (1, "test", "e4e")
    assert videos(df)["CollabDiff/real/r1"] == (0, "test", "real")
    assert videos(df)["simswap/ff/frames/000_003"] == (1, "test", "simswap")
    assert (df["video_id"] == "simswap/ff/frames/000_003").sum() == 2
    assert "methods without real frames (add reals=[FF++/Celeb-DF test manifest])" in df.attrs[
        "notes"]

    one = DATASETS.build("df40", root=str(root), method="SimSwap", domain="ff")  # case-insensitive
    assert set(one["video_id"]) == {"simswap/ff/frames/000_003"}
    efs = DATASETS.build("df40", root=str(root), family="EFS")
    assert set(efs["method"]) == {"StyleGAN2", "sd2.1"}


def test_df40_reals_from_another_manifest(tmp_path):
    root = build(tmp_path / "DF40", DF40_TREE)
    ff_root = build(tmp_path / "ff", FF_DEEPFAKEBENCH, _ff_texts("", val=[["004", "005"]], test=[["001", "002"]]))
    reals = tmp_path / "ffpp.csv"
    build_manifest("ffpp", str(ff_root), str(reals), methods=["Deepfakes"],
                   splits=["train", "test"])
    df = DATASETS.build("df40", root=str(root), method="simswap", reals=[str(reals)])
    real = df[df["label"] == 0]
    assert set(real["dataset"]) == {"df40/real"}
    assert set(real["video_id"]) == {"ffpp/original/001", "ffpp/original/002"}  # test reals only


def test_df40_unknown_method_folder_is_one_line_and_writes_nothing(tmp_path):
    root = build(tmp_path / "DF40", DF40_TREE + ["mystery_gan/ff/frames/000/000.png"])
    out = tmp_path / "df40.csv"
    result = CliRunner().invoke(data_cli, ["manifest", "df40", "--root", str(root),
                                           "--out", str(out)])
    assert isinstance(result.exception, AblateError)
    text = str(result.exception)
    assert "\n" not in text and "mystery_gan" in text and "simswap" in text
    assert "methods=[" in text and "allow_unknown=true" in text
    assert not out.exists() and not Path(f"{out}.json").exists()
    df = DATASETS.build("df40", root=str(root), allow_unknown=True)
    assert df.loc[df["method"] == "mystery_gan", "family"].unique().tolist() == ["unknown"]
    df = DATASETS.build("df40", root=str(root), methods=["simswap", "e4e"])  # selection skips it
    assert set(df["method"]) == {"simswap", "e4e"}
    back = build_manifest("df40", str(root), str(out), methods="simswap")
    assert load_manifest(out)["family"].tolist() == back["family"].tolist()
