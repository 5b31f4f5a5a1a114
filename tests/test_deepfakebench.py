"""`ablate data import deepfakebench` on tiny trees laid out as DeepfakeBench writes them.

The trees and JSON files follow DeepfakeBench's preprocessing (preprocessing/rearrange.py):
frames under the rgb dir at `FaceForensics++/original_sequences/youtube/<comp>/frames/<vid>/
NNN.png` and `FaceForensics++/manipulated_sequences/<Method>/<comp>/frames/<A>_<B>/NNN.png`,
`Celeb-DF-v2/<sub>/frames/<video>/NNN.png`; per-method JSON files `FF-DF.json` holding
`{"FF-DF": {"FF-real": ..., "FF-DF": ...}}` with a compression level under each split, and
`Celeb-DF-v2.json` without one (test videos listed under val too). Frame paths are written
the way the released JSON files spell them: relative to the rgb dir with `\\` separators,
listed in directory order (not sorted).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from PIL import Image

from ablate.core.errors import AblateError
from ablate.data.deepfakebench import import_deepfakebench
from ablate.data.manifest import load_manifest

FF = "FaceForensics++"
INDICES = (0, 10, 20)  # three frames per video, indices spaced so nearest != same


def write_frames(folder: Path, indices=INDICES, value: int = 0) -> list[Path]:
    """Tiny PNGs named NNN.png (DeepfakeBench's preprocess.py naming)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in indices:
        path = folder / f"{i:03d}.png"
        Image.fromarray(np.full((4, 4, 3), (value + i) % 256, dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def listed(paths: list[Path], rgb: Path, style: str = "windows") -> list[str]:
    """Frame paths as a DeepfakeBench JSON lists them: unsorted, relative or absolute."""
    order = [paths[2], paths[0], paths[1]]  # os.scandir order is arbitrary
    if style == "absolute":
        return [str(p) for p in order]
    rel = [p.relative_to(rgb).as_posix() for p in order]
    return [r.replace("/", "\\") for r in rel] if style == "windows" else [f"./{r}" for r in rel]


def ff_real(rgb: Path, vid: str, comp: str = "c23") -> Path:
    return rgb / FF / "original_sequences" / "youtube" / comp / "frames" / vid


def ff_fake(rgb: Path, method: str, vid: str, comp: str = "c23") -> Path:
    return rgb / FF / "manipulated_sequences" / method / comp / "frames" / vid


REALS = {"000": "train", "003": "train", "001": "test", "002": "test"}
FAKES = {
    "FF-DF": ("Deepfakes", {"000_003": "train", "001_002": "test"}),
    "FF-F2F": ("Face2Face", {"003_000": "train"}),
}


@pytest.fixture
def ffpp(tmp_path):
    """rgb dir with FF++ c23 + c40 frames and FF-DF.json / FF-F2F.json beside it."""
    rgb = tmp_path / "rgb"
    jsons = tmp_path / "dataset_json"
    jsons.mkdir()
    real_videos: dict[str, dict[str, dict]] = {
        s: {"c23": {}, "c40": {}} for s in ("train", "val", "test")
    }
    for comp in ("c23", "c40"):
        for n, (vid, split) in enumerate(REALS.items()):
            paths = write_frames(ff_real(rgb, vid, comp), value=100 + n)
            real_videos[split][comp][vid] = {"label": "FF-real", "frames": listed(paths, rgb)}
    files = []
    for label, (method, videos) in FAKES.items():
        fakes: dict[str, dict[str, dict]] = {
            s: {"c23": {}, "c40": {}} for s in ("train", "val", "test")
        }
        for comp in ("c23", "c40"):
            for vid, split in videos.items():
                paths = write_frames(ff_fake(rgb, method, vid, comp), value=200)
                fakes[split][comp][vid] = {
                    "label": label,
                    "frames": listed(paths, rgb),
                    "masks": [],
                }
        path = jsons / f"{label}.json"
        path.write_text(json.dumps({label: {"FF-real": real_videos, label: fakes}}))
        files.append(path)
    return rgb, files


def test_ffpp_rows_labels_methods_splits(ffpp, tmp_path):
    rgb, files = ffpp
    df = load_manifest(import_deepfakebench(files, rgb, tmp_path / "m.csv").attrs["manifest"])
    # 4 originals (listed in both files, kept once) + 3 fakes, 3 frames each
    assert len(df) == 7 * 3
    videos = set(df[["video_id", "label", "method", "split", "dataset"]].itertuples(index=False))
    assert videos == {
        ("FF-real/000", 0, "real", "train", "ffpp"),
        ("FF-real/003", 0, "real", "train", "ffpp"),
        ("FF-real/001", 0, "real", "test", "ffpp"),
        ("FF-real/002", 0, "real", "test", "ffpp"),
        ("FF-DF/000_003", 1, "Deepfakes", "train", "ffpp"),
        ("FF-DF/001_002", 1, "Deepfakes", "test", "ffpp"),
        ("FF-F2F/003_000", 1, "Face2Face", "train", "ffpp"),
    }
    assert sorted(df.loc[df["video_id"] == "FF-DF/000_003", "frame"]) == list(INDICES)
    assert not df.duplicated(["path", "split"]).any()
    # the bootstrap's cluster: original A for real A and for every fake A_B (its target)
    identity = dict(df[["video_id", "identity"]].drop_duplicates().itertuples(index=False))
    assert identity == {"FF-real/000": "000", "FF-real/003": "003", "FF-real/001": "001",
                        "FF-real/002": "002", "FF-DF/000_003": "000", "FF-DF/001_002": "001",
                        "FF-F2F/003_000": "003"}


def test_ffpp_fakes_paired_with_originals_by_frame_index(ffpp, tmp_path):
    rgb, files = ffpp
    df = load_manifest(import_deepfakebench(files, rgb, tmp_path / "m.csv").attrs["manifest"])
    fake = df[df["video_id"] == "FF-DF/000_003"].set_index("frame")
    for i in INDICES:
        # fake 000_003: target = original 000, source = original 003 (identity donor)
        assert fake.loc[i, "path"] == str(ff_fake(rgb, "Deepfakes", "000_003") / f"{i:03d}.png")
        assert fake.loc[i, "source_path"] == str(ff_real(rgb, "003") / f"{i:03d}.png")
        assert fake.loc[i, "target_path"] == str(ff_real(rgb, "000") / f"{i:03d}.png")
        # the pixels say which original and frame it is: value 100 + position of vid + i
        donor = np.asarray(Image.open(fake.loc[i, "source_path"]))
        assert donor[0, 0, 0] == 100 + list(REALS).index("003") + i
    other = df[df["video_id"] == "FF-F2F/003_000"].set_index("frame")
    assert other.loc[10, "source_path"] == str(ff_real(rgb, "000") / "010.png")
    reals = df[df["label"] == 0]
    assert (reals["source_path"] == reals["path"]).all()
    assert (reals["target_path"] == reals["path"]).all()

    swapped = import_deepfakebench(files, rgb, tmp_path / "a.csv", source_is="A")
    row = swapped[(swapped["video_id"] == "FF-DF/000_003") & (swapped["frame"] == 20)].iloc[0]
    assert row["source_path"] == str(ff_real(rgb, "000") / "020.png")


def test_compression_level_selection(ffpp, tmp_path):
    rgb, files = ffpp
    c23 = import_deepfakebench(files[:1], rgb, tmp_path / "a.csv")
    assert c23["path"].str.contains("/c23/frames/").all()
    c40 = import_deepfakebench(files[:1], rgb, tmp_path / "b.csv", compression="c40")
    assert c40["path"].str.contains("/c40/frames/").all()
    assert c40["source_path"].dropna().str.contains("/youtube/c40/").all()
    with pytest.raises(AblateError, match=r"no compression 'raw' \(has: c23, c40\)"):
        import_deepfakebench(files[:1], rgb, tmp_path / "c.csv", compression="raw")


def celeb_json(tmp_path: Path, style: str) -> tuple[Path, Path]:
    """Celeb-DF-v2.json: no compression level; a test video also listed under val."""
    rgb = tmp_path / "rgb"
    real = write_frames(rgb / "Celeb-DF-v2" / "Celeb-real" / "frames" / "id0_0000")
    fake = write_frames(rgb / "Celeb-DF-v2" / "Celeb-synthesis" / "frames" / "id0_id1_0000")
    train = write_frames(rgb / "Celeb-DF-v2" / "YouTube-real" / "frames" / "00000")
    r = {"label": "CelebDFv2_real", "frames": listed(real, rgb, style)}
    f = {"label": "CelebDFv2_fake", "frames": listed(fake, rgb, style)}
    t = {"label": "CelebDFv2_real", "frames": listed(train, rgb, style)}
    data = {
        "Celeb-DF-v2": {
            "CelebDFv2_real": {
                "train": {"00000": t},
                "val": {"id0_0000": r},
                "test": {"id0_0000": r},
            },
            "CelebDFv2_fake": {
                "train": {},
                "val": {"id0_id1_0000": f},
                "test": {"id0_id1_0000": f},
            },
        }
    }
    path = tmp_path / "Celeb-DF-v2.json"
    path.write_text(json.dumps(data))
    return rgb, path


@pytest.mark.parametrize("style", ["windows", "dot", "absolute"])
def test_relative_and_absolute_frame_paths(tmp_path, style):
    rgb, path = celeb_json(tmp_path, style)
    out = tmp_path / "out" / "celeb.csv"
    df = load_manifest(import_deepfakebench([path], rgb, out).attrs["manifest"])
    expected = {
        str(rgb / "Celeb-DF-v2" / sub / "frames" / vid / f"{i:03d}.png")
        for sub, vid in (
            ("Celeb-real", "id0_0000"),
            ("Celeb-synthesis", "id0_id1_0000"),
            ("YouTube-real", "00000"),
        )
        for i in INDICES
    }
    assert set(df["path"]) == expected
    counts = df.groupby(["split", "label"]).size().to_dict()
    assert counts == {("train", 0): 3, ("val", 0): 3, ("val", 1): 3, ("test", 0): 3, ("test", 1): 3}
    assert set(df["dataset"]) == {"celebdf"}
    assert set(df.loc[df["label"] == 1, "method"]) == {"Celeb-synthesis"}
    assert df.loc[df["label"] == 1, "source_path"].isna().all()  # unknown outside FF++
    test_only = import_deepfakebench([path], rgb, tmp_path / "t.csv", splits=["test"])
    assert set(test_only["split"]) == {"test"} and len(test_only) == 6


def test_missing_frames_name_the_json_and_leave_no_manifest(ffpp, tmp_path):
    rgb, files = ffpp
    gone = ff_fake(rgb, "Face2Face", "003_000") / "010.png"
    gone.unlink()
    out = tmp_path / "out" / "m.csv"
    with pytest.raises(AblateError) as err:
        import_deepfakebench(files, rgb, out)
    message = str(err.value)
    assert "\n" not in message
    assert str(files[1]) in message
    assert (
        "first FaceForensics++\\manipulated_sequences\\Face2Face\\c23\\frames\\003_000\\010.png "
        in message
    )
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))


def test_unknown_label_lists_known_ones(tmp_path):
    rgb, path = celeb_json(tmp_path, "windows")
    data = json.loads(path.read_text())
    data["Celeb-DF-v2"]["CelebDFv2_fake"]["test"]["id0_id1_0000"]["label"] = "CelebDF_fake"
    path.write_text(json.dumps(data))
    with pytest.raises(AblateError) as err:
        import_deepfakebench([path], rgb, tmp_path / "m.csv")
    message = str(err.value)
    assert "\n" not in message and "'CelebDF_fake'" in message
    for known in ("FF-real", "FF-DF", "FF-FH", "CelebDFv2_real", "CelebDFv2_fake", "DFDCP_FakeA"):
        assert known in message


def test_malformed_json_is_one_line(tmp_path):
    rgb, path = celeb_json(tmp_path, "windows")
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(AblateError, match="is not valid JSON") as err:
        import_deepfakebench([path], rgb, tmp_path / "m.csv")
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    path.write_text(json.dumps({"Celeb-DF-v2": {"CelebDFv2_real": {"test": {"v": {"frames": 3}}}}}))
    with pytest.raises(AblateError, match="not a DeepfakeBench dataset JSON") as err:
        import_deepfakebench([path], rgb, tmp_path / "m.csv")
    assert "\n" not in str(err.value)


def test_cli_success_and_one_line_error(ffpp, tmp_path):
    rgb, files = ffpp
    out = tmp_path / "cli.csv"
    code, stdout, stderr = run_cli(
        "data",
        "import",
        "deepfakebench",
        *map(str, files),
        "--root",
        str(rgb),
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert code == 0, stderr
    assert f"wrote 21 frames to {out}" in stdout
    assert len(pd.read_csv(out)) == 21
    (ff_real(rgb, "002") / "000.png").unlink()
    code, stdout, stderr = run_cli(
        "data",
        "import",
        "deepfakebench",
        *map(str, files),
        "--root",
        str(rgb),
        "--out",
        str(tmp_path / "bad.csv"),
        cwd=tmp_path,
    )
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(files[0]) in lines[0]
    assert not (tmp_path / "bad.csv").exists()
