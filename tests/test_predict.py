"""`ablate predict`: scores equal the detector's on frames prepared as its training frames,
bad files are rows (exit 1), outputs parse, and bad input is one line.

The equality facts are computed apart from predict's own code: the classifier from
`load_classifier`, its inputs from `ManifestDataset` (the training loader's own decode,
resize and [-1, 1] conversion) over crops `ablate data prepare` wrote, or over the embedded
benchmark's PNG frames. Two runs: the session's tiny run on the embedded benchmark (no face
detection: the frames are used whole), and a copy of it whose recipe says it trained on
crops `ablate data prepare` cut with MTCNN (the recipe's data.train points at a manifest of
those crops, whose folder holds prepare's marker).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pandas as pd
import pytest
import skimage.data
import torch
from conftest import run_cli
from omegaconf import OmegaConf
from PIL import Image

from ablate.checkpoint import load_classifier
from ablate.data import prepare as prep
from ablate.data.dataset import ManifestDataset
from ablate.data.manifest import load_manifest
from ablate.data.synthetic import ensure_benchmark
from ablate.predict.inputs import expand
from ablate.predict.preparation import fallback_note, preparation_of
from ablate.predict.rows import to_rows
from ablate.predict.run import predict_files
from ablate.predict.scorer import load_scorer

SIDE = 160


# ---------------------------------------------------------------- helpers


def _write_video(path: Path, frames: list[np.ndarray]) -> Path:
    """RGB frames -> a lossless FFV1 .mkv (decoding gives the frames back bit for bit)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "bgr0"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def _face_frames(n: int = 20) -> list[np.ndarray]:
    """The astronaut's face (~65 px) in a 160x160 RGB frame, moving a little per frame."""
    image = skimage.data.astronaut()[20:240, 110:330]
    return [np.asarray(Image.fromarray(np.roll(image, i % 5, axis=1)).resize((SIDE, SIDE)))
            for i in range(n)]


def _probs(classifier, images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.sigmoid(classifier(images)).numpy()


def _frame_scores(results) -> dict[str, list[tuple[int, float]]]:
    return {r.file: [(f.index, f.score) for f in r.frames] for r in results}


def _recording(scorer) -> tuple[object, list[torch.Tensor]]:
    """The scorer, keeping every batch it is given: the inputs can then be compared bit for
    bit (the tiny run's scores move little with its input)."""
    fed: list[torch.Tensor] = []

    def logits(batch: torch.Tensor) -> torch.Tensor:
        fed.append(batch.clone())
        return scorer.logits(batch)

    return dataclasses.replace(scorer, logits=logits), fed


def _threshold(run: Path) -> float:
    """The run's threshold, read from run.json here (not by predict's code)."""
    return float(json.loads((Path(run) / "run.json").read_text())["selection"]["threshold"])


def _cli(*args: str, cwd: Path) -> tuple[int, str, str]:
    """`ablate predict ARGS` through the real entry point (`ablate.cli.main`: one-line
    errors, exit 2)."""
    return run_cli("predict", *args, cwd=cwd)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def benchmark() -> pd.DataFrame:
    """The embedded benchmark's rows (built once and cached, as training builds it)."""
    return load_manifest(ensure_benchmark())


@pytest.fixture(scope="module")
def classifier(tiny_run):
    model, _ = load_classifier(tiny_run, "cpu")
    return model


@pytest.fixture(scope="module")
def detection_run(tiny_run, tmp_path_factory) -> SimpleNamespace:
    """The tiny run, its recipe pointed at crops `ablate data prepare` cut with MTCNN from
    a face video (5 frames, aligned, 64 px: the input size 32 needs a resize)."""
    root = tmp_path_factory.mktemp("detection")
    video = _write_video(root / "videos/face.mkv", _face_frames())
    prep.prepare(str(root / "videos"), str(root / "crops"), preset="deepfakebench", frames=5,
                 size=64, progress=False)
    marker = prep.read_marker(root / "crops/face")
    rows = [{"path": str(root / f"crops/face/{i:04d}.png"), "label": 0, "video_id": "face",
             "dataset": "faces", "split": "train", "method": "real", "frame": i}
            for i in marker["written"]]
    table = pd.DataFrame(rows).assign(source_path=lambda d: d["path"],
                                      target_path=lambda d: d["path"])
    manifest = root / "faces.csv"
    table.to_csv(manifest, index=False)
    run = shutil.copytree(tiny_run, root / "run")
    recipe = OmegaConf.load(run / "recipe.yaml")
    recipe.data.train = str(manifest)
    (run / "recipe.yaml").write_text(OmegaConf.to_yaml(recipe))
    return SimpleNamespace(run=run, video=video, marker=marker, manifest=manifest, root=root)


# ---------------------------------------------------------------- equality facts


def test_a_benchmark_video_scores_as_its_frames_do_in_training(tiny_run, classifier, benchmark,
                                                               tmp_path):
    # a test video of another family, its frames written losslessly into one video file
    rows = benchmark[(benchmark["dataset"] == "synth-colour") & (benchmark["split"] == "test")
                     & (benchmark["label"] == 1)]
    one = rows[rows["video_id"] == rows["video_id"].iloc[0]].sort_values("frame")
    frames = [np.asarray(Image.open(p).convert("RGB")) for p in one["path"]]
    video = _write_video(tmp_path / "clip.mkv", frames)
    images = ManifestDataset(one, 32).images(list(range(len(one))))
    expected = _probs(classifier, images)

    scorer = load_scorer(str(tiny_run), "cpu")
    settings = scorer.preparation.settings
    assert (settings.detector, settings.size, settings.frames) == ("none", 64, 8)
    scorer, fed = _recording(scorer)
    (result,) = predict_files(scorer, expand([str(video)]).files, progress=False)
    assert torch.equal(torch.cat(fed), images)
    assert [f.index for f in result.frames] == list(range(8))  # the benchmark's 8 frames
    assert all(f.box is None for f in result.frames)
    np.testing.assert_allclose([f.score for f in result.frames], expected, rtol=0, atol=1e-6)
    # the video's score is the mean of its frames', as the video metrics aggregate
    assert result.score == pytest.approx(float(np.mean(expected)), abs=1e-6)
    threshold = _threshold(tiny_run)
    (row,) = to_rows([result], threshold)
    assert row["label"] == ("fake" if row["score"] >= threshold else "real")
    assert (row["frames"], row["status"]) == (8, "ok")


def test_a_detection_run_cuts_as_prepare_did_and_scores_prepares_crops(detection_run,
                                                                      classifier):
    marker = detection_run.marker
    scorer = load_scorer(str(detection_run.run), "cpu")
    assert scorer.preparation.known
    assert scorer.preparation.source == f"the prepare markers of {detection_run.manifest}'s " \
                                        "training frames"
    recorded = {k: v for k, v in marker["settings"].items() if k != "match_crops"}
    got = vars(scorer.preparation.settings)
    assert {k: got[k] for k in recorded} == recorded
    assert marker["written"] == [0, 5, 10, 14, 19]

    scorer, fed = _recording(scorer)
    (result,) = predict_files(scorer, expand([str(detection_run.video)]).files, progress=False)
    assert [f.index for f in result.frames] == marker["written"]
    assert [list(f.box) for f in result.frames] == [marker["faces"][str(i)]["box"]
                                                     for i in marker["written"]]
    crops = ManifestDataset(detection_run.manifest, 32, split="train")
    images = crops.images(list(range(len(crops))))
    assert torch.equal(torch.cat(fed), images)  # prepare's own crops, bit for bit
    expected = _probs(classifier, images)
    np.testing.assert_allclose([f.score for f in result.frames], expected, rtol=0, atol=1e-6)


def test_a_folder_of_benchmark_frames_csv_and_json(tiny_run, classifier, benchmark, tmp_path):
    rows = benchmark[(benchmark["dataset"] == "synth-warp") & (benchmark["split"] == "test")]
    videos = rows.drop_duplicates("label")["video_id"].tolist()  # one real, one fake video
    picked = rows[rows["video_id"].isin(videos)].sort_values("path")
    folder = tmp_path / "frames"
    for path in picked["path"]:
        target = folder / Path(path).relative_to(Path(path).parents[2])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    expected = dict(zip(picked["path"].map(lambda p: Path(p).relative_to(Path(p).parents[2])
                                           .as_posix()),
                        _probs(classifier, ManifestDataset(picked, 32).images(
                            list(range(len(picked))))), strict=True))
    threshold = _threshold(tiny_run)

    def check(table: pd.DataFrame) -> None:
        frames = table[table["level"] == "frame"]
        files = table[table["level"] == "file"]
        assert len(frames) == len(files) == len(picked)
        got = {Path(f).relative_to(folder).as_posix(): s
               for f, s in zip(frames["file"], frames["score"], strict=True)}
        assert got.keys() == expected.keys()
        np.testing.assert_allclose([got[k] for k in expected], list(expected.values()),
                                   rtol=0, atol=1e-6)
        want = np.where(table["score"] >= threshold, "fake", "real")
        assert table["label"].tolist() == want.tolist()
        assert (table["status"] == "ok").all() and (files["frames"] == 1).all()

    code, out, err = _cli(str(tiny_run), str(folder), "--level", "both",
                          "--out", str(tmp_path / "s.csv"), "--device", "cpu", cwd=tmp_path)
    assert code == 0, err
    assert f"wrote {2 * len(picked)} rows" in err and "0 unreadable" in err
    check(pd.read_csv(tmp_path / "s.csv"))

    code, _, err = _cli(str(tiny_run), str(folder), "--level", "both",
                        "--out", str(tmp_path / "s.json"), "--device", "cpu", cwd=tmp_path)
    assert code == 0, err
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["threshold"] == threshold and saved["preparation"]["detector"] == "none"
    check(pd.DataFrame(saved["rows"], columns=saved["columns"]))

    code, out, err = _cli(str(tiny_run), str(folder), cwd=tmp_path)
    assert code == 0, err
    assert out.splitlines()[0].split() == ["file", "level", "frames", "P(fake)", "label",
                                           "status"]
    assert len(out.splitlines()) == 1 + len(picked)


def test_a_bad_file_and_a_faceless_video_are_rows_and_exit_1(detection_run, tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(skimage.data.astronaut()).save(folder / "good.png")
    (folder / "sub/bad.jpg").write_bytes(np.random.default_rng(1).bytes(4096))
    _write_video(folder / "sub/flat.mkv", [np.full((96, 128, 3), 90, np.uint8)] * 10)
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "rows.json"
    done = subprocess.run(
        [sys.executable, "-c", "from ablate.predict.cli import predict; predict()",
         str(detection_run.run), str(folder), "--out", str(out), "--level", "both",
         "--device", "cpu"], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 1, done.stderr
    rows = {(Path(r["file"]).name, r["level"]): r for r in json.loads(out.read_text())["rows"]}
    good = rows[("good.png", "frame")]
    assert good["status"] == "ok" and 0 <= good["score"] <= 1
    assert good["x1"] < 203 < good["x2"] and good["y1"] < 102 < good["y2"]  # the left eye
    assert rows[("good.png", "file")]["label"] in ("fake", "real")
    assert rows[("bad.jpg", "file")]["status"].startswith("error: ")
    assert rows[("bad.jpg", "file")]["score"] is None
    assert rows[("flat.mkv", "file")]["status"] == "no face"
    assert rows[("flat.mkv", "file")]["label"] is None
    assert len(rows) == 4  # no frame row for the two without frames
    assert "1 file in the folders given is not an image or video" in done.stderr
    assert "3 files, 1 scored, 1 without a face, 1 unreadable" in done.stderr
    assert "Traceback" not in done.stderr


# ---------------------------------------------------------------- preparation, inputs


def test_preparation_of_the_benchmark_and_the_fallback():
    synth = preparation_of(OmegaConf.create({"data": {"train": "synth-blend"}}))
    assert synth.known and synth.settings.detector == "none"
    assert fallback_note("synth-blend", synth) is None
    unknown = preparation_of(OmegaConf.create({"data": {"train": "/nowhere/m.csv"}}))
    assert not unknown.known and unknown.settings == prep.resolve_settings("deepfakebench")
    note = fallback_note("/nowhere/m.csv", unknown)
    assert "deepfakebench preset" in note and "not on this machine" in note
    assert "\n" not in note


def test_inputs_walk_folders_sorted_and_count_the_rest(tmp_path):
    for name in ("b/2.PNG", "b/1.jpg", "a.mp4", "c/notes.txt", "c/x.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = expand([str(tmp_path), str(tmp_path / "a.mp4")])
    assert [(Path(f.path).relative_to(tmp_path).as_posix(), f.kind) for f in found.files] == [
        ("a.mp4", "video"), ("b/1.jpg", "image"), ("b/2.PNG", "image")]
    assert "2 files in the folders given are not an image or video" in found.skipped_note()


# ---------------------------------------------------------------- one-line errors


@pytest.mark.parametrize(("args", "says"), [
    (["RUN", "a.png"], "is not a run folder"),
    (["RUN", "notes.txt"], "notes.txt: not an image"),
    (["RUN", "a.png", "--out", "s.xlsx"], "give a .csv or .json file"),
    (["RUN", "missing.png"], "missing.png: no such file or folder"),
])
def test_bad_input_is_one_line(tmp_path, args, says):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "RUN").mkdir()
    code, out, err = _cli(*args, cwd=tmp_path)
    assert code == 2 and says in err, err
    assert len(err.strip().splitlines()) == 1 and not out


# ---------------------------------------------------------------- exported models


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_an_exported_model_scores_as_its_run(tiny_run, benchmark, tmp_path, fmt):
    from ablate import export

    suffix = {"torchscript": ".pt", "onnx": ".onnx"}[fmt]
    model = export.export_run(str(tiny_run), fmt, str(tmp_path / f"detector{suffix}")).path
    rows = benchmark[(benchmark["dataset"] == "synth-blend") & (benchmark["split"] == "test")]
    folder = tmp_path / "frames"
    folder.mkdir()
    for path in rows["path"].iloc[:6]:
        shutil.copy(path, folder / Path(path).name)
    files = expand([str(folder)]).files

    from_run = load_scorer(str(tiny_run), "cpu")
    from_file = load_scorer(str(model))
    assert (from_file.image_size, from_file.threshold, from_file.train_data) == (
        from_run.image_size, from_run.threshold, from_run.train_data)
    assert from_file.preparation == from_run.preparation
    by_run = _frame_scores(predict_files(from_run, files, progress=False))
    by_file = _frame_scores(predict_files(from_file, files, progress=False))
    assert by_file.keys() == by_run.keys() and len(by_run) == 6
    for name, frames in by_run.items():
        assert [i for i, _ in by_file[name]] == [i for i, _ in frames]
        np.testing.assert_allclose([p for _, p in by_file[name]], [p for _, p in frames],
                                   rtol=0, atol=1e-5)
