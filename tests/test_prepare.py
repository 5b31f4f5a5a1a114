"""`ablate data prepare`: sampling, face crops, skip reporting, resume, CLI errors.

Tiny synthetic videos (20 frames, MJPG .avi): one with a real face (skimage's
bundled astronaut photo), one of noise (no face), one of random bytes (corrupt).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

from ablate.data import prepare as prep
from ablate.errors import AblateError

FRAMES = 20
SIDE = 160


def _face_frames() -> list[np.ndarray]:
    """The astronaut's face (~65 px) in a 160x160 frame, moving a little per frame."""
    image = skimage.data.astronaut()[20:240, 110:330, ::-1]  # RGB -> BGR
    frames = []
    for i in range(FRAMES):
        shifted = np.roll(image, i % 5, axis=1)
        frames.append(cv2.resize(shifted, (SIDE, SIDE), interpolation=cv2.INTER_AREA))
    return frames


def _noise_frames(height: int = 120) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (height, SIDE, 3), dtype=np.uint8) for _ in range(FRAMES)]


def _write_video(path: Path, frames: list[np.ndarray]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (width, height))
    assert writer.isOpened(), "this OpenCV build cannot write MJPG .avi"
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """One face, one noise and one corrupt video, written once for the module."""
    root = tmp_path_factory.mktemp("clips")
    corrupt = root / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(1).bytes(4096))
    return {
        "face": _write_video(root / "face.avi", _face_frames()),
        "noise": _write_video(root / "noise.avi", _noise_frames()),
        "corrupt": corrupt,
    }


def _tree(root: Path, files: dict[str, Path]) -> Path:
    """Copy clips into `root` under the given relative names."""
    for rel, src in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, root / rel)
    return root


def _pngs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.png"))


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def run(videos: Path, out: Path, **kwargs):
    kwargs = {"frames": 5, "size": 64, "max_skip_fraction": 1.0, "progress": False, **kwargs}
    return prep.prepare(str(videos), str(out), **kwargs)


# ---------------------------------------------------------------- pieces


def test_sample_indices_are_evenly_spaced_with_both_ends():
    assert prep.sample_indices(20, 5) == [0, 5, 10, 14, 19]
    assert prep.sample_indices(3, 5) == [0, 1, 2]
    assert prep.sample_indices(4, 0) == [0, 1, 2, 3]


def test_square_box_grows_by_margin_and_stays_inside_the_frame():
    assert prep.square_box((40, 40, 20, 10), 0.5, 100, 200) == (35, 30, 30, 30)
    assert prep.square_box((0, 0, 20, 20), 0.5, 100, 200) == (0, 0, 30, 30)  # shifted in
    assert prep.square_box((150, 50, 80, 80), 1.0, 100, 200) == (100, 0, 100, 100)  # shrunk
    assert prep.centre_box(120, 160) == (20, 0, 120, 120)


def test_the_bundled_detector_finds_the_test_face_and_not_noise():
    detector = prep.make_detector("lbp")
    assert all(prep.detect_face(f, detector) for f in _face_frames()[:3])
    assert prep.detect_face(_noise_frames()[0], detector) is None


def test_haar_works_or_says_what_to_use():
    if hasattr(cv2, "CascadeClassifier"):
        assert prep.detect_face(_face_frames()[0], prep.make_detector("haar")) is not None
    else:
        prep._DETECTORS.pop("haar", None)
        with pytest.raises(AblateError, match="--detector lbp"):
            prep.make_detector("haar")


# ---------------------------------------------------------------- a run


def test_crops_skips_and_report(clips, tmp_path):
    videos = _tree(
        tmp_path / "v",
        {
            "a/b/face.avi": clips["face"],
            "noise.avi": clips["noise"],
            "bad/corrupt.mp4": clips["corrupt"],
        },
    )
    summary = run(videos, tmp_path / "out")

    face = tmp_path / "out/a/b/face"
    assert _pngs(face) == ["0000.png", "0005.png", "0010.png", "0014.png", "0019.png"]
    assert cv2.imread(str(face / "0000.png")).shape == (64, 64, 3)
    marker = json.loads((face / prep.MARKER).read_text())
    assert marker["sampled"] == marker["written"] == [0, 5, 10, 14, 19]
    assert marker["frame_count"] == FRAMES

    assert summary.videos == 3 and summary.prepared == 2
    assert summary.no_face == ["noise.avi"]
    assert list(summary.unreadable) == ["bad/corrupt.mp4"]
    assert summary.frames_written == 5 and summary.frames_no_face == 5
    assert _pngs(tmp_path / "out/noise") == []  # marker only: done, nothing to read
    assert not (tmp_path / "out/bad").exists()
    text = "\n".join(summary.format())
    assert "noise.avi" in text and "bad/corrupt.mp4" in text
    report = json.loads((tmp_path / "out" / prep.REPORT).read_text())
    assert report["no_face"] == ["noise.avi"] and "bad/corrupt.mp4" in report["unreadable"]


def test_too_many_skipped_stops_with_counts(clips, tmp_path):
    videos = _tree(
        tmp_path / "v",
        {"face.avi": clips["face"], "noise.avi": clips["noise"], "z.mp4": clips["corrupt"]},
    )
    with pytest.raises(AblateError, match=r"2 of 3 videos skipped \(1 without a face, 1 unread"):
        run(videos, tmp_path / "out", max_skip_fraction=0.5)
    with pytest.raises(AblateError, match="stopped early: 1 of 3") as err:
        run(videos, tmp_path / "out2", max_skip_fraction=0.0)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out2/z").exists()  # noise.avi stopped the run before z.mp4


def test_resume_skips_finished_and_redoes_unfinished(clips, tmp_path):
    videos = _tree(tmp_path / "v", {"x/one.avi": clips["face"], "y/two.avi": clips["face"]})
    out = tmp_path / "out"
    run(videos, out)
    before = _mtimes(out / "x")

    again = run(videos, out)
    assert (again.prepared, again.already_done) == (0, 2)
    assert _mtimes(out / "x") == before

    # an interrupted video: crops and a temp file but no marker -> redone, leftovers removed
    (out / "y/two" / prep.MARKER).unlink()
    (out / "y/two/0003.png").write_bytes(b"stale")
    (out / "y/two/.0005.png.tmp").write_bytes(b"half")
    third = run(videos, out)
    assert (third.prepared, third.already_done) == (1, 1)
    assert _mtimes(out / "x") == before
    assert _pngs(out / "y/two") == ["0000.png", "0005.png", "0010.png", "0014.png", "0019.png"]
    assert not list((out / "y/two").glob(".*.tmp"))


def test_other_settings_need_overwrite(clips, tmp_path):
    videos = _tree(tmp_path / "v", {"one.avi": clips["face"]})
    run(videos, tmp_path / "out")
    with pytest.raises(AblateError, match="other settings.*--overwrite"):
        run(videos, tmp_path / "out", size=32)
    summary = run(videos, tmp_path / "out", size=32, frames=3, overwrite=True)
    assert summary.prepared == 1
    assert _pngs(tmp_path / "out/one") == ["0000.png", "0010.png", "0019.png"]
    assert cv2.imread(str(tmp_path / "out/one/0000.png")).shape == (32, 32, 3)


def test_detector_none_centre_crops_every_sampled_frame(clips, tmp_path):
    videos = _tree(tmp_path / "v", {"noise.avi": clips["noise"]})
    summary = run(videos, tmp_path / "out", detector="none", frames=0)
    assert summary.frames_written == FRAMES and not summary.no_face
    crop = cv2.imread(str(tmp_path / "out/noise/0007.png"))
    frame = _noise_frames()[7]
    expected = cv2.resize(frame[:, 20:140], (64, 64), interpolation=cv2.INTER_AREA)
    assert crop.shape == (64, 64, 3)
    assert np.abs(crop.astype(int) - expected).mean() < 40  # MJPG is lossy; a shift is not


def test_header_that_overcounts_frames_is_resampled(clips, tmp_path, monkeypatch):
    videos = _tree(tmp_path / "v", {"one.avi": clips["face"]})
    monkeypatch.setattr(prep, "frame_count", lambda video: FRAMES + 10)
    run(videos, tmp_path / "out")
    marker = prep.read_marker(tmp_path / "out/one")
    assert marker["frame_count"] == FRAMES and marker["written"] == [0, 5, 10, 14, 19]
    assert _pngs(tmp_path / "out/one") == [
        "0000.png",
        "0005.png",
        "0010.png",
        "0014.png",
        "0019.png",
    ]


def test_glob_input_and_name_clash(clips, tmp_path):
    videos = _tree(tmp_path / "v", {"s1/a.avi": clips["face"], "s2/b.avi": clips["noise"]})
    summary = run(f"{videos}/s1/*.avi", tmp_path / "out")
    assert summary.videos == 1 and _pngs(tmp_path / "out/a")  # base = the glob's fixed part
    shutil.copy(clips["face"], videos / "s1/a.mp4")
    with pytest.raises(AblateError, match="would both write to"):
        run(videos, tmp_path / "out3")


def test_ffpp_download_layout_feeds_the_ffpp_adapter(clips, tmp_path):
    """The docs' command on FF++'s own layout gives what `ablate data manifest ffpp` reads."""
    from ablate.data.adapters import build_manifest

    root = tmp_path / "ffpp"
    files = {f"original_sequences/youtube/c23/videos/00{i}.avi": clips["face"] for i in range(6)}
    files["manipulated_sequences/Deepfakes/c23/videos/000_003.avi"] = clips["face"]
    files["manipulated_sequences/Deepfakes/masks/videos/000_003.avi"] = clips["noise"]
    _tree(root, files)
    for split, pair in (
        ("train", ["000", "003"]),
        ("val", ["001", "004"]),
        ("test", ["002", "005"]),
    ):
        (root / "splits").mkdir(exist_ok=True)
        (root / "splits" / f"{split}.json").write_text(json.dumps([pair]))

    summary = run(f"{root}/*_sequences/*/c23/videos/*.avi", root, frames_dir="frames")
    assert summary.videos == 7 and not summary.no_face  # masks left out by the glob
    assert _pngs(root / "manipulated_sequences/Deepfakes/c23/frames/000_003")
    df = build_manifest("ffpp", str(root), str(tmp_path / "m.csv"), methods=["Deepfakes"])
    fake = df[df["video_id"] == "Deepfakes/000_003"]
    assert sorted(fake["frame"]) == [0, 5, 10, 14, 19]
    assert fake["source_path"].str.contains("frames/003/").all()  # source_is B, same index
    assert fake["target_path"].str.contains("frames/000/").all()

    with pytest.raises(AblateError, match="renames a 'videos' folder"):
        run(root / "original_sequences/youtube/c23/videos", tmp_path / "o", frames_dir="frames")


def test_diffswap_tree_feeds_its_adapter(clips, tmp_path):
    from ablate.data.adapters import build_manifest

    videos = _tree(tmp_path / "v", {"real/r1.avi": clips["face"], "fake/f1.avi": clips["face"]})
    run(videos, tmp_path / "diffswap")
    df = build_manifest("diffswap", str(tmp_path / "diffswap"), str(tmp_path / "m.csv"))
    assert sorted(df["video_id"].unique()) == ["fake/f1", "real/r1"]
    assert sorted(df["frame"].unique()) == [0, 5, 10, 14, 19]


def test_workers_give_the_same_crops(clips, tmp_path):
    videos = _tree(tmp_path / "v", {"one.avi": clips["face"], "two.avi": clips["noise"]})
    summary = run(videos, tmp_path / "out", workers=2)
    assert (summary.prepared, summary.no_face) == (2, ["two.avi"])
    assert _pngs(tmp_path / "out/one") == [
        "0000.png",
        "0005.png",
        "0010.png",
        "0014.png",
        "0019.png",
    ]


# ---------------------------------------------------------------- CLI


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    from ablate.cli import main

    monkeypatch.setattr(sys, "argv", ["ablate", *args])
    try:
        main()
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_bad_input_is_one_error_line(monkeypatch, capsys, tmp_path):
    code, _, err = _cli(
        monkeypatch,
        capsys,
        "data",
        "prepare",
        "--videos",
        str(tmp_path / "missing"),
        "--out",
        str(tmp_path / "out"),
    )
    assert code == 2
    assert err.startswith("error: --videos") and err.count("\n") == 1


def test_cli_prepares_and_reports(monkeypatch, capsys, clips, tmp_path):
    videos = _tree(tmp_path / "v", {"face.avi": clips["face"], "noise.avi": clips["noise"]})
    out = tmp_path / "out"
    args = [
        "data",
        "prepare",
        "--videos",
        str(videos),
        "--out",
        str(out),
        "--frames",
        "4",
        "--size",
        "48",
        "--quiet",
    ]
    code, _, err = _cli(monkeypatch, capsys, *args)
    assert code == 2 and "1 of 2 videos skipped" in err and err.count("\n") == 1

    code, stdout, _ = _cli(monkeypatch, capsys, *args, "--max-skip-fraction", "0.5")
    assert code == 0
    assert "2 found, 0 processed now, 2 already done, 1 without a face" in stdout
    assert "no face in any sampled frame: noise.avi" in stdout
