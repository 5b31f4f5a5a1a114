"""`ablate data prepare`: sampling, face crops, misses, matching crops, resume, CLI errors.

Tiny synthetic videos (20 frames, MJPG .avi): one with a real face (skimage's
bundled astronaut photo), one of noise (no face), one of random bytes (corrupt),
one of skimage's non-face photos; and a small FF++ tree for matching crops.
The detector is the default, MTCNN (tests/test_faces.py checks it on its own).
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

from ablate.core.errors import AblateError
from ablate.data import decode, faces
from ablate.data import prepare as prep

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


def test_the_bundled_cascade_finds_the_test_face_and_not_noise():
    detector = faces.make_detector("lbp")
    assert all(faces.detect_faces(f[..., ::-1], detector) for f in _face_frames()[:3])
    assert not faces.detect_faces(_noise_frames()[0][..., ::-1], detector)


def test_haar_works_or_says_what_to_use(monkeypatch):
    frame = _face_frames()[0][..., ::-1]
    if hasattr(cv2, "CascadeClassifier"):
        assert faces.detect_faces(frame, faces.make_detector("haar"))
    else:
        monkeypatch.setattr(faces, "_BUILT", {})
        with pytest.raises(AblateError, match="use --detector mtcnn or lbp"):
            faces.make_detector("haar")


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
    reason = summary.unreadable["bad/corrupt.mp4"]  # names the file and what to do
    assert str(videos / "bad/corrupt.mp4") in reason and "then rerun" in reason
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


def test_frames_that_do_not_decode_make_the_video_unreadable_by_name(
    clips, tmp_path, monkeypatch
):
    """Sampled frames past the real end (a stream cut short) are not silently dropped."""
    videos = _tree(tmp_path / "v", {"one.avi": clips["face"]})
    monkeypatch.setattr(decode, "frame_count", lambda video: FRAMES + 10)
    summary = run(videos, tmp_path / "out")
    reason = summary.unreadable["one.avi"]
    assert str(videos / "one.avi") in reason and "re-encode or remove it, then rerun" in reason
    assert "3 of its 5 sampled frames" in reason  # of 0, 7, 14, 22, 29 only 0, 7, 14 exist
    assert not (tmp_path / "out/one").exists()  # nothing half-written left


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
    names = ["0000.png", "0005.png", "0010.png", "0014.png", "0019.png"]
    assert _pngs(tmp_path / "out/one") == names
    run(videos, tmp_path / "serial", workers=1)
    for name in names:  # pixel for pixel what one process writes
        a, b = (cv2.imread(str(tmp_path / out / "one" / name)) for out in ("out", "serial"))
        assert a is not None and np.array_equal(a, b), name


# ---------------------------------------------------------------- misses and settings


def _photo_frames() -> list[np.ndarray]:
    """BGR 320x240 frames: the astronaut, then four of skimage's photos without a face."""
    astronaut = skimage.data.astronaut()[0:300, 100:500]  # face at x 80..160, y 62..172
    images = [astronaut] + [getattr(skimage.data, n)() for n in ("coffee", "chelsea", "rocket")]
    images.append(np.stack([skimage.data.brick()] * 3, axis=-1))
    return [cv2.resize(im[..., ::-1], (320, 240), interpolation=cv2.INTER_AREA) for im in images]


def test_non_face_frames_are_misses_never_crops(tmp_path):
    videos = tmp_path / "v"
    _write_video(videos / "photos.avi", _photo_frames())
    summary = run(videos, tmp_path / "out", frames=0)
    marker = prep.read_marker(tmp_path / "out/photos")
    assert marker["written"] == [0] and marker["no_face"] == [1, 2, 3, 4]
    assert _pngs(tmp_path / "out/photos") == ["0000.png"]
    assert (summary.frames_written, summary.frames_no_face) == (1, 4)
    assert "4 sampled frames without a face" in "\n".join(summary.format())


def test_settings_preset_and_detector_reach_prepared_json(clips, tmp_path):
    videos = _tree(tmp_path / "v", {"one.avi": clips["face"]})
    run(videos, tmp_path / "out", preset="diffusionfake", frames=5, smooth=1)
    marker = prep.read_marker(tmp_path / "out/one")
    assert marker["settings"] == {
        "frames": 5, "size": 64, "scale": 1.3, "align": "none", "detector": "mtcnn",
        "min_face_score": 0.9, "smooth": 1, "match_crops": True,
    }  # the preset's align/scale/detector; frames, size and smooth as given
    assert marker["preset"] == "diffusionfake"
    assert marker["detector_version"] == "facenet-pytorch 2.6.0"
    assert sorted(int(k) for k in marker["faces"]) == marker["written"] == [0, 5, 10, 14, 19]
    face = marker["faces"]["0"]
    assert face["score"] >= 0.9 and len(face["landmarks"]) == 5
    # box crop: the crop is the box side x 1.3, so the face box spans ~1/1.3 of it
    x1, y1, x2, y2 = face["box"]
    assert 64 / 1.3 * 0.8 < (x2 - x1) / (max(x2 - x1, y2 - y1) * 1.3) * 64 * 1.3 <= 64

    with pytest.raises(AblateError, match=r"other settings.*align 'none' -> 'similarity'") as e:
        run(videos, tmp_path / "out", preset="deepfakebench", frames=5, smooth=1)
    assert "\n" not in str(e.value)
    assert prep.read_marker(tmp_path / "out/one") == marker  # nothing lost


def test_defaults_are_deepfakebenchs_convention():
    assert prep.resolve_settings() == prep.resolve_settings("deepfakebench")
    assert prep.resolve_settings() == prep.Settings(
        frames=32, size=256, scale=1.3, align="similarity", detector="mtcnn",
        min_face_score=0.9, smooth=3, match_crops=True,
    )


def test_cascade_without_landmarks_cannot_align(clips, tmp_path):
    videos = _tree(tmp_path / "v", {"one.avi": clips["face"]})
    with pytest.raises(AblateError, match="--align similarity needs landmarks.*--align none"):
        run(videos, tmp_path / "out", detector="lbp")
    assert not (tmp_path / "out").exists()
    assert run(videos, tmp_path / "out", detector="lbp", align="none").frames_written == 5


# ---------------------------------------------------------------- matching crops


def _moving_face_frames(n: int = 8, miss: int = 3) -> list[np.ndarray]:
    """BGR 180x240 frames: the astronaut's face moving right; frame `miss` has none."""
    face = cv2.resize(skimage.data.astronaut()[40:220, 140:310, ::-1], (80, 85))
    frames = []
    for i in range(n):
        canvas = np.full((180, 240, 3), 128, dtype=np.uint8)
        if i != miss:
            x, y = 10 + 18 * i, 40 + 6 * (i % 3)
            canvas[y : y + 85, x : x + 80] = face
        frames.append(canvas)
    return frames


@pytest.fixture(scope="module")
def ffpp(tmp_path_factory) -> Path:
    """FF++ as downloaded: originals 000 and 003, fakes 000_003 (000's frames, colours
    swapped) and 000_005 (noise: no face of its own)."""
    root = tmp_path_factory.mktemp("ffpp")
    base = _moving_face_frames()
    videos = {
        "original_sequences/youtube/c23/videos/000.avi": base,
        "original_sequences/youtube/c23/videos/003.avi": _face_frames()[:8],
        "manipulated_sequences/Deepfakes/c23/videos/000_003.avi": [f[..., ::-1] for f in base],
        "manipulated_sequences/Deepfakes/c23/videos/000_005.avi": _noise_frames(180)[:8],
    }
    for rel, frames in videos.items():
        _write_video(root / rel, [np.ascontiguousarray(f) for f in frames])
    return root


ORIGINAL = "original_sequences/youtube/c23/frames/000"
FAKE = "manipulated_sequences/Deepfakes/c23/frames/000_003"
NOISE_FAKE = "manipulated_sequences/Deepfakes/c23/frames/000_005"
ALL = "*_sequences/*/c23/videos/*.avi"


def test_fakes_are_cut_with_their_target_originals_faces(ffpp, tmp_path):
    out = tmp_path / "out"
    summary = run(f"{ffpp}/{ALL}", out, frames=0, frames_dir="frames")
    assert summary.matched == 2 and summary.videos == 4
    original, fake = prep.read_marker(out / ORIGINAL), prep.read_marker(out / FAKE)
    assert original["written"] == [0, 1, 2, 4, 5, 6, 7] and original["no_face"] == [3]
    boxes = [original["faces"][str(i)]["box"][0] for i in original["written"]]
    assert boxes == sorted(boxes) and boxes[-1] - boxes[0] > 80  # the face moves: boxes differ
    assert fake["matched_to"] == str(out / ORIGINAL)
    assert fake["written"] == original["written"] and fake["no_face"] == [3]  # its miss too
    assert fake["faces"] == original["faces"]  # frame i cut with the original's face i
    for i in original["written"]:
        want = cv2.imread(str(out / ORIGINAL / f"{i:04d}.png"))[..., ::-1].astype(int)
        got = cv2.imread(str(out / FAKE / f"{i:04d}.png")).astype(int)
        assert np.abs(got - want).mean() < 4, i  # same pixels, colours swapped (own box: 6-12)
    # a fake whose own frames hold no face still gets its original's crops
    assert prep.read_marker(out / NOISE_FAKE)["written"] == original["written"]

    alone = run(f"{ffpp}/{ALL}", tmp_path / "alone", frames=0, frames_dir="frames",
                match_crops=False)
    assert alone.matched == 0 and alone.no_face == [
        "manipulated_sequences/Deepfakes/c23/videos/000_005.avi"
    ]

    # an original redone (its marker gone) takes its fakes with it; the rest is kept
    (out / ORIGINAL / prep.MARKER).unlink()
    again = run(f"{ffpp}/{ALL}", out, frames=0, frames_dir="frames")
    assert (again.prepared, again.already_done) == (3, 1)
    # so does an original whose faces changed since its fakes were cut (e.g. redone alone)
    marker = json.loads((out / ORIGINAL / prep.MARKER).read_text())
    marker["faces"]["0"]["box"][0] += 5
    (out / ORIGINAL / prep.MARKER).write_text(json.dumps(marker))
    third = run(f"{ffpp}/{ALL}", out, frames=0, frames_dir="frames")
    assert (third.prepared, third.already_done) == (2, 2)
    assert prep.read_marker(out / FAKE)["faces"]["0"] == marker["faces"]["0"]


def test_fakes_without_prepared_originals_say_so_in_one_line(ffpp, tmp_path):
    fakes = f"{ffpp}/manipulated_*/*/c23/videos/*.avi"
    with pytest.raises(AblateError, match=r"2 FF\+\+ fake\(s\) need.*not prepared.*"
                       r"--no-match-crops") as e:
        run(fakes, tmp_path / "out", frames=0, frames_dir="frames")
    assert "\n" not in str(e.value) and "000/prepared.json" in str(e.value)
    assert not (tmp_path / "out").exists()

    # --videos below manipulated_sequences: the crops could not mirror FF++
    below = f"{ffpp}/manipulated_sequences/Deepfakes/c23/videos"
    with pytest.raises(AblateError, match="starts below its manipulated_sequences.*--no-match"):
        run(below, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert run(below, tmp_path / "out", match_crops=False).videos == 2


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

    code, _, err = _cli(monkeypatch, capsys, "data", "prepare", "--videos", str(tmp_path),
                        "--out", str(tmp_path / "out"), "--margin", "0.3")
    assert code == 2 and "--margin was replaced by --scale" in err and "--scale 1.3" in err
    assert err.count("\n") == 1


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
