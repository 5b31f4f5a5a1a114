"""Protocol lines (issue 25): what a test set was measured on, counted from what was scored,
stored with every metric row, said under every table, checked with --strict-protocol, and
the identity check that lets `ablate report --sweep A --sweep B` pool runs.

Expected values are hand-counted from the hand-built manifests and DB rows below, or
recomputed with numpy from the numbers written to the DB, never read back from the code
under test.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

from ablate.core.errors import AblateError
from ablate.data.manifest import load_manifest, save_manifest
from ablate.data.protocol import check_presets, dataset_protocol
from ablate.report import build_report
from ablate.results import ResultsDB

T0 = datetime(2025, 4, 1, 12, 0, 0)
TESTS = ["celebdf", "dfd"]
SHOWN = {"celebdf": "Celeb-DF v2", "dfd": "DFD"}
# hand-built manifest: video -> (label, frames); counted by hand below
VIDEOS = {"r1": (0, 4), "r2": (0, 4), "r3": (0, 2), "f1": (1, 5), "f2": (1, 1)}
MARKER = {"written": [], "no_face": [], "preset": "diffusionfake",
          "detector_version": "facenet-pytorch 2.6.0",
          "settings": {"frames": 270, "size": 256, "scale": 1.3, "align": "none",
                       "detector": "mtcnn", "min_face_score": 0.9, "smooth": 3,
                       "match_crops": True}}
RECORD = {"adapter": "celebdf", "layout": "frames_first", "preset": "paper",
          "frames_per_video": 270, "frames_per_video_eval": 100, "frames_per_real_video": None,
          "frames_per_fake_video": None, "fake_real_ratio": None, "seed": 0,
          "settings": {"test_list": "List_of_testing_videos.txt", "preset": "paper"}}


def hand_manifest(root: Path, images: list[Path] | None = None) -> Path:
    """VIDEOS as frame folders under root (markers in each), all split=test, with the
    sidecar record an adapter would write. `images`: real frames to copy (else empty files)."""
    rows, k = [], 0
    for video, (label, n) in VIDEOS.items():
        folder = root / video
        folder.mkdir(parents=True)
        for i in range(n):
            path = folder / f"{i:04d}.png"
            if images:
                shutil.copy(images[k % len(images)], path)
                k += 1
            else:
                path.write_bytes(b"")
            rows.append({"path": str(path), "label": label, "video_id": video,
                         "dataset": "handmade", "split": "test",
                         "method": "fake" if label else "real", "frame": i,
                         "source_path": "", "target_path": ""})
        (folder / "prepared.json").write_text(json.dumps(MARKER))
    return save_manifest(pd.DataFrame(rows), root / "m.csv", protocol=RECORD)


# ---------------------------------------------------------------- the protocol dict


def test_protocol_of_a_hand_built_manifest_is_its_hand_counts(tmp_path):
    path = hand_manifest(tmp_path / "frames")
    rows = load_manifest(path)
    p = dataset_protocol(str(path), rows)
    # frames per video 4, 4, 2, 5, 1: median 4, max 5; 3 real and 2 fake videos, 16 frames
    assert p["frames_per_video"] == {"median": 4, "max": 5, "asked": 100}
    assert (p["videos_real"], p["videos_fake"], p["frames"]) == (3, 2, 16)
    assert p["preset"] == "paper" and p["adapter"] == "celebdf" and p["split"] == "test"
    assert p["compression"] is None  # Celeb-DF has none: unknown, not guessed
    assert p["crop"] == {"preset": "diffusionfake", "detector": "mtcnn",
                         "detector_version": "facenet-pytorch 2.6.0", "align": "none",
                         "scale": 1.3, "size": 256}
    # the list's name is recorded; its root is unknown for a manifest passed by path
    assert p["official_list"] == {"file": "List_of_testing_videos.txt", "sha256": None}
    assert p["display_name"] is None and p["level"] is None
    # one video cropped elsewhere: the crop is unknown, never the others' guessed for it
    (tmp_path / "frames" / "f2" / "prepared.json").unlink()
    assert dataset_protocol(str(path), rows)["crop"] is None


def test_a_data_config_names_its_set_and_its_list_is_hashed(tmp_path, monkeypatch):
    path = hand_manifest(tmp_path / "frames")
    listing = b"1 Celeb-real/id0_0000.mp4\n0 Celeb-synthesis/id0_id1_0000.mp4\n"
    (tmp_path / "frames" / "List_of_testing_videos.txt").write_bytes(listing)
    data = tmp_path / "configs" / "data"
    data.mkdir(parents=True)
    (data / "tinycdf.yaml").write_text(
        f"name: celebdf\ndisplay_name: Tiny CDF\nroot: {tmp_path / 'frames'}\n"
        f"manifest: {path}\ntest_list: List_of_testing_videos.txt\npreset: paper\n"
        "crop: {preset: deepfakebench, detector: dlib, scale: 1.3}\n")
    monkeypatch.setenv("ABLATE_CONFIG_PATH", str(tmp_path / "configs"))
    rows = load_manifest(path)
    p = dataset_protocol("tinycdf", rows)
    assert p["display_name"] == "Tiny CDF" and p["test_set"] == "tinycdf"
    assert p["official_list"] == {"file": "List_of_testing_videos.txt",
                                  "sha256": hashlib.sha256(listing).hexdigest()[:16]}
    assert p["crop"]["detector"] == "mtcnn"  # the prepare markers are facts: they win
    for video in VIDEOS:
        (tmp_path / "frames" / video / "prepared.json").unlink()
    stated = dataset_protocol("tinycdf", rows)["crop"]  # no marker: what the config states
    assert stated == {"preset": "deepfakebench", "detector": "dlib", "detector_version": None,
                      "align": None, "scale": 1.3, "size": None}


def test_evaluation_stores_the_protocol_on_every_test_row(tiny_run, tmp_path):
    """End to end: `ablate eval` on a hand-built manifest of real frames; each metric row's
    protocol carries the hand counts and its own level; stored, the report says them."""
    from ablate.data.synthetic import ensure_benchmark
    from ablate.evaluate import evaluate_run

    bench = load_manifest(ensure_benchmark())
    images = [Path(p) for p in bench.loc[bench["dataset"] == "synth-colour", "path"][:16]]
    path = hand_manifest(tmp_path / "frames", images)
    metrics, _ = evaluate_run(tiny_run, tests=[str(path)], n_boot=10, progress=False)
    assert metrics["protocol"].notna().all()
    for row in metrics.itertuples():
        p = json.loads(row.protocol)
        assert p["level"] == row.level and p["test_set"] == str(path)
        assert p["frames_per_video"] == {"median": 4, "max": 5, "asked": 100}
        assert (p["videos_real"], p["videos_fake"], p["frames"]) == (3, 2, 16)
    url = f"sqlite:///{tmp_path / 'e.db'}"
    with ResultsDB(url) as db:
        sid = db.start_sweep("e", "quick", {}, "v1")
        db.record_trial(sid, "t:0", recipe_hash="h", recipe={"data": {"tests": [str(path)]},
                                                             "seed": 0},
                        seed=0, status="finished", started=T0, ended=T0,
                        metrics=metrics.to_dict("records"))
    report = build_report("e", url, tmp_path / "rep", formats="md,csv",
                          names={str(path): "Hand-made"})
    text = (report.folder / "report.md").read_text()
    assert "| Hand-made AUC |" in text
    assert ("Hand-made (frame and video level): frames/video asked 100 (scored: median 4, "
            "max 5), 3 real / 2 fake videos") in text


def test_presets_mixed_where_a_published_protocol_fixes_them_are_refused_before_training():
    check_presets("ffpp", ["celebdf", "dfd"])  # paper throughout
    with pytest.raises(AblateError, match="preset paper .* test df40 deepfakebench") as err:
        check_presets("ffpp", ["celebdf", "df40"])
    assert "\n" not in str(err.value)
    with pytest.raises(AblateError, match="official_code"):
        check_presets("ffpp_official_code", ["celebdf"])


# ---------------------------------------------------------------- a DB with protocols


def proto(test: str, level: str = "frame", asked=100, preset: str = "paper",
          split: str = "test", real: int = 10, fake: int = 20,
          compression: str | None = None) -> str:
    return json.dumps({"version": 1, "test_set": test, "display_name": SHOWN.get(test),
                       "split": split, "level": level, "adapter": test, "preset": preset,
                       "frames_per_video": {"median": asked, "max": asked, "asked": asked},
                       "frames": (real + fake) * asked, "videos_real": real,
                       "videos_fake": fake, "compression": compression, "crop": None,
                       "official_list": None})


AUC = {"paper": {"celebdf": [0.80, 0.82, 0.84], "dfd": [0.90, 0.91, 0.95]},
       "no_mhsa": {"celebdf": [0.78, 0.79, 0.83], "dfd": [0.88, 0.90, 0.92]}}


def recipe(filt: str, seed: int, select: str | None = None) -> dict:
    train = {"lr": 1e-4, **({"select": select} if select else {})}
    return {"backbone": {"name": "tiny"}, "filter": {"name": filt}, "weight": {"name": "paper"},
            "guide": {"name": "controlnet"}, "teacher": {"name": "tiny-sd15"}, "train": train,
            "data": {"train": "ffpp", "tests": TESTS}, "image_size": 64, "seed": seed}


def rows_of(filt: str, seed: int, asked=100, preset: str = "paper", train_preset="paper",
            sha: str = "m1", with_protocol: bool = True) -> list[dict]:
    def p(text: str) -> str | None:
        return text if with_protocol else None

    out = [{"dataset": "ffpp", "split": "val", "level": "frame", "metric": "auc",
            "value": 0.95, "protocol": p(proto(
                "ffpp", asked=270 if train_preset == "paper" else 32, preset=train_preset,
                split="train", compression="c23"))}]
    for test in TESTS:
        auc = AUC[filt][test][seed]
        out += [{"dataset": test, "split": "test", "level": "frame", "metric": "auc",
                 "value": auc, "manifest_sha": sha,
                 "protocol": p(proto(test, asked=asked, preset=preset))},
                {"dataset": test, "split": "test", "level": "frame", "metric": "eer",
                 "value": 1 - auc, "manifest_sha": sha,
                 "protocol": p(proto(test, asked=asked, preset=preset))}]
    return out


def write_sweep(db: ResultsDB, name: str, seeds: list[int], filters=("paper", "no_mhsa"),
                data_sha: str = "d1", select: str | None = None, **kw) -> None:
    sid = db.start_sweep(name, "modules", {"objectives": [{"metric": "val_auc",
                                                           "mode": "max"}]}, "v1")
    for filt in filters:
        for seed in seeds:
            db.record_trial(sid, f"{filt}:{seed}", recipe_hash=f"{filt}-{seed}",
                            recipe=recipe(filt, seed, select), seed=seed, status="finished",
                            started=T0, ended=T0 + timedelta(minutes=1),
                            metrics=rows_of(filt, seed, **kw), data_sha=data_sha,
                            teacher_sha="t1")


def test_the_report_says_each_columns_protocol_and_names_it(tmp_path):
    url = f"sqlite:///{tmp_path / 'p.db'}"
    with ResultsDB(url) as db:
        write_sweep(db, "p", [0, 1, 2])
    report = build_report("p", url, tmp_path / "rep", formats="md,tex,csv,html")
    text = (report.folder / "report.md").read_text()
    assert "| Recipe | Celeb-DF v2 AUC | Celeb-DF v2 EER | DFD AUC |" in text
    line = ("Protocol: Celeb-DF v2 (frame level): frames/video asked 100 (scored: median 100, "
            "max 100), 10 real / 20 fake videos, compression unknown, crop unknown, official "
            "list none recorded, data preset paper; DFD (frame level):")
    assert line in text and "checkpoints: best_val (best source-val AUC), every trial." in text
    assert "Protocol: Celeb-DF v2 (frame level)" in (report.folder / "main.tex").read_text()
    assert "- **checkpoints**: best_val (best source-val AUC), every trial" in text
    columns = pd.read_csv(report.folder / "protocols.csv").set_index("dataset")
    assert columns.loc["celebdf", "display_name"] == "Celeb-DF v2"
    assert bool(columns.loc["celebdf", "agree"]) and columns.loc["celebdf", "trials"] == 6
    assert json.loads(columns.loc["celebdf", "frames_per_video"])["asked"] == 100


def test_trials_that_disagree_on_a_columns_protocol_are_said_not_picked(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    with ResultsDB(url) as db:
        write_sweep(db, "m", [0, 1])
        sid = db.sweep_id("m")
        db.record_trial(sid, "paper:2", recipe_hash="paper-2", recipe=recipe("paper", 2),
                        seed=2, status="finished", started=T0, ended=T0,
                        metrics=rows_of("paper", 2, asked=32))
    report = build_report("m", url, tmp_path / "rep", formats="md,csv")
    text = (report.folder / "report.md").read_text()
    assert ("Celeb-DF v2: mixed over 5 trials, differing in frames, frames_per_video: "
            "not comparable") in text
    columns = pd.read_csv(report.folder / "protocols.csv").set_index("dataset")
    assert not bool(columns.loc["dfd", "agree"])


def test_the_checkpoint_rule_of_every_trial_is_listed(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    with ResultsDB(url) as db:
        write_sweep(db, "s", [0, 1, 2], filters=("paper",))
        write_sweep(db, "s2", [0, 1, 2], filters=("no_mhsa",), select="last")
    one = build_report("s2", url, tmp_path / "r1", formats="md")
    assert "checkpoints: last (the last step), every trial" in (one.folder / "report.md"
                                                                ).read_text()
    both = build_report(["s", "s2"], url, tmp_path / "r2", formats="md")
    assert "- **checkpoints**: mixed: best_val (3 trials), last (3 trials): not comparable" in (
        both.folder / "report.md").read_text()


# ---------------------------------------------------------------- --strict-protocol


def test_strict_protocol_passes_one_preset_and_refuses_a_mixed_or_unknown_one(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    with ResultsDB(url) as db:
        write_sweep(db, "same", [0, 1])
        write_sweep(db, "mixed", [0, 1], preset="deepfakebench", asked=32)
        write_sweep(db, "old", [0, 1], with_protocol=False)
    build_report("same", url, tmp_path / "a", formats="csv", strict_protocol=True)
    build_report("mixed", url, tmp_path / "b", formats="csv")  # not strict: reported
    with pytest.raises(AblateError) as err:
        build_report("mixed", url, tmp_path / "c", formats="csv", strict_protocol=True)
    message = str(err.value)
    assert message.startswith("--strict-protocol: trial paper:0") and "\n" not in message
    assert "training paper" not in message and "test celebdf deepfakebench" in message
    with pytest.raises(AblateError, match="no recorded protocol for training data, test set"):
        build_report("old", url, tmp_path / "d", formats="csv", strict_protocol=True)
    code, _, stderr = run_cli("report", "--sweep", "mixed", "--db", url, "--out",
                              str(tmp_path / "e"), "--strict-protocol", cwd=tmp_path)
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and "--strict-protocol" in stderr


def test_strict_protocol_holds_measured_columns_to_a_published_rows_protocol(tmp_path):
    url = f"sqlite:///{tmp_path / 'y.db'}"
    with ResultsDB(url) as db:  # one preset throughout (deepfakebench), but 32 test frames
        write_sweep(db, "dfb", [0, 1], preset="deepfakebench", train_preset="deepfakebench",
                    asked=32)
        write_sweep(db, "paper", [0, 1])
    build_report("dfb", url, tmp_path / "a", formats="csv", strict_protocol=True)
    with pytest.raises(AblateError, match=r"EN-B4 \+ DiffusionFake .* fixes frames_per_video "
                                          r"270 for its training data, but this report's "
                                          "training data has 32"):
        build_report("dfb", url, tmp_path / "b", formats="csv", strict_protocol=True,
                     external=["diffusionfake"])
    # the paper's protocol (270 train / 100 test frames per video): strict and published agree
    build_report("paper", url, tmp_path / "c", formats="csv", strict_protocol=True,
                 external=["diffusionfake"])
    with ResultsDB(url) as db:  # the paper's preset named, but 32 test frames per video
        write_sweep(db, "paper32", [0, 1], asked=32)
    with pytest.raises(AblateError, match="fixes frames_per_video 100 for its test data, but "
                                          "this report's test set celebdf has 32"):
        build_report("paper32", url, tmp_path / "d", formats="csv", strict_protocol=True,
                     external=["diffusionfake"])


# ---------------------------------------------------------------- --sweep A --sweep B


def t_mean(values: list[float]) -> float:
    return float(np.mean(values))


def test_two_sweeps_of_one_setup_pool_their_seeds_and_pair_them(tmp_path):
    url = f"sqlite:///{tmp_path / 'ab.db'}"
    with ResultsDB(url) as db:
        write_sweep(db, "A", [0, 1])
        write_sweep(db, "B", [1, 2])  # seed 1 again: the same recipe + seed counts once
    report = build_report(["A", "B"], url, tmp_path / "rep", formats="md,csv")
    main = pd.read_csv(report.folder / "main.csv")
    frame = main[(main["level"] == "frame") & (main["metric"] == "auc")]
    for filt, per in AUC.items():
        for test in TESTS:
            row = frame[(frame["label"] == f"filter={filt}") & (frame["dataset"] == test)].iloc[0]
            assert row["n_seeds"] == 3 and row["mean"] == pytest.approx(t_mean(per[test]))
    ablation = pd.read_csv(report.folder / "ablation.csv")
    row = ablation[(ablation["variant"] == "no_mhsa") & (ablation["metric"] == "auc")].iloc[0]
    diffs = [np.mean([AUC["no_mhsa"][t][s] - AUC["paper"][t][s] for t in TESTS])
             for s in (0, 1, 2)]
    assert row["matching"] == "paired" and row["n_seeds"] == 3
    assert row["mean"] == pytest.approx(t_mean(diffs))
    assert report.sweep == "A + B"
    code, out, _ = run_cli("report", "--sweep", "A", "--sweep", "B", "--db", url, "--out",
                           str(tmp_path / "cli"), "--format", "csv", cwd=tmp_path)
    assert code == 0 and "report of sweep A + B" in out


@pytest.mark.parametrize(("b_rows", "says"), [
    ({"data_sha": "d2"}, "has data_sha d1 in A but recipe paper-1 seed 1 has d2 in B "
                         "(other training or test data)"),
    ({"sha": "m2"}, "test set celebdf (frame level) in B scored other test rows than in A "
                    "(manifest_sha differs)"),
    ({"asked": 32}, "test set celebdf (frame level) in B has another protocol than in A "
                    "(protocol differs)"),
])
def test_two_sweeps_whose_runs_are_not_one_experiment_are_refused(tmp_path, b_rows, says):
    url = f"sqlite:///{tmp_path / 'bad.db'}"
    with ResultsDB(url) as db:
        write_sweep(db, "A", [0, 1])
        write_sweep(db, "B", [1, 2], **b_rows)
    build_report("B", url, tmp_path / "alone", formats="csv")  # each alone is fine
    with pytest.raises(AblateError) as err:
        build_report(["A", "B"], url, tmp_path / "rep", formats="csv")
    message = str(err.value)
    assert "cannot report sweeps A and B together" in message and "\n" not in message
    assert says in message, message
    assert "report the sweeps apart" in message


def test_two_sweeps_with_no_recipe_in_common_must_share_their_data(tmp_path):
    url = f"sqlite:///{tmp_path / 'data.db'}"
    with ResultsDB(url) as db:
        write_sweep(db, "A", [0, 1], filters=("paper",))
        write_sweep(db, "B", [0, 1], filters=("no_mhsa",), data_sha="d2")
        write_sweep(db, "C", [0, 1], filters=("no_mhsa",))
    with pytest.raises(AblateError) as err:
        build_report(["A", "B"], url, tmp_path / "rep", formats="csv")
    message = str(err.value)
    assert "cannot report sweeps A and B together" in message and "\n" not in message
    assert "no run of A trained on the data of another sweep (data_sha d1 against d2" \
        in message, message
    report = build_report(["A", "C"], url, tmp_path / "ok", formats="csv")  # same data: pairs
    ablation = pd.read_csv(report.folder / "ablation.csv")
    assert (ablation["variant"] == "no_mhsa").any()


def test_train_strict_protocol_refuses_mixed_presets_before_anything_runs(tmp_path):
    mixed = ["data.train=ffpp_official_code", "data.tests=[celebdf]", "--strict-protocol",
             "--dry-run"]
    code, _, err = run_cli("train", *mixed, cwd=tmp_path)
    assert code == 2 and "strict protocol: preset official_code" in err, err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run_cli("train", "data.train=ffpp", "data.tests=[celebdf]",
                           "--strict-protocol", "--dry-run", cwd=tmp_path)
    assert "strict protocol" not in err  # one preset: it goes on (to the missing root)

