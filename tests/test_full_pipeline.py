"""The released recipe at full size, end to end, as a user runs it: DeepfakeBench trees ->
`ablate data import deepfakebench` -> `ablate sweep` (a 2-cell design: EfficientNet-B4 + SD 1.5
guided, and the same encoder without guidance) -> `ablate report`.

The models are full size at random init (`recipe=official_code` at 256 px: 725 M trainable
parameters guided), trained for 2 steps of batch 2 on 256 px face-like frames, with the memory
levers on (bf16 teacher where the CPU computes bf16 natively, 8-bit AdamW, gradient
checkpointing, branch-by-branch backward), one trial at a time. What is checked, each against
a computation made here: the checkpoint of each trial was selected on the FF++ val split (its
AUC recomputed from the shipped encoder on the val rows listed in our own tree, the frame count
that of those rows and of no test split), the Celeb-DF test rows were scored with their
provenance (frame and video counts of our tree, the val-chosen threshold), each trial's
trainable parameter count equals the count of the model built on the meta device (and its
encoder and ControlNet parts the counts of timm's and diffusers' own models), and the report
names the test set and both recipes.

Measured on the 2-core, 24 GB development machine (CPU with AVX512-BF16): about 8 min wall
(the guided trial ~5.5 min, ~150 s per step, a third of it the 8-bit AdamW update); the guided
trial's process peaks at ~12.9 GB resident, the whole process tree (pytest, the sweep driver,
Ray) at ~15.4 GB RSS summed. The peak is static memory, not activations: fp32 weights and
gradients of the 725 M trained parameters (2.9 GB each), the CPU copy of the selected state
(2.9 GB), the 8-bit AdamW moments (1.5 GB) and the bf16 teacher (1.9 GB). On a CPU without
native bf16 the teacher stays fp32 (+1.9 GB). `one_heavy_test_at_a_time` keeps any other
multi-GB test from running beside it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter
from test_deepfakebench import INDICES, ff_fake, ff_real, listed

from ablate.data.manifest import load_manifest
from ablate.recipe import compose
from ablate.results import ResultsDB

BIN = Path(sys.executable).parent
SIZE = 256

# FF++ c23 as DeepfakeBench's FF-DF.json splits it: originals by id, Deepfakes fakes A_B (A's
# video with B's face). Every video has the frames INDICES (3 each).
FF_REALS = {"000": "train", "001": "train", "002": "train", "003": "train",
            "004": "val", "005": "val", "006": "test", "007": "test"}
FF_FAKES = {"000_001": "train", "002_003": "train", "004_005": "val", "005_004": "val",
            "006_007": "test"}
# Celeb-DF-v2 (the cross-dataset test set): DeepfakeBench lists its test videos under val too
CELEB_REALS = {"Celeb-real": ["id0_0000", "id1_0000"], "YouTube-real": ["00000"]}
CELEB_FAKES = ["id0_id1_0000", "id1_id0_0000"]


def face(identity: int, frame: int) -> Image.Image:
    """A 256 px face-like frame: skin-toned head, eyes, brows, nose and mouth whose colours
    and proportions depend on `identity`, moving a little with `frame`."""
    rng = np.random.default_rng(1000 + identity)
    light, dark = np.array([250, 218, 190]), np.array([105, 68, 48])  # the range of skin tones
    tone = light + rng.uniform() * (dark - light) + rng.integers(-8, 9, 3)
    skin = tuple(int(v) for v in np.clip(tone, 0, 255))
    shade = tuple(int(v * 0.7) for v in skin)
    image = Image.new("RGB", (SIZE, SIZE), tuple(int(v) for v in rng.integers(10, 90, 3)))
    draw = ImageDraw.Draw(image)
    cx, cy = 128 + (frame % 7) - 3, 134 + (frame % 5) - 2
    w, h = int(rng.integers(66, 82)), int(rng.integers(90, 104))
    draw.ellipse([cx - w, cy - h, cx + w, cy + h], fill=skin)
    sep, eye_y = int(rng.integers(26, 36)), cy - int(rng.integers(18, 30))
    iris = tuple(int(v) for v in rng.integers(20, 120, 3))
    for side in (-1, 1):
        ex = cx + side * sep
        draw.ellipse([ex - 13, eye_y - 7, ex + 13, eye_y + 7], fill=(235, 235, 230))
        draw.ellipse([ex - 5, eye_y - 5, ex + 5, eye_y + 5], fill=iris)
        draw.line([ex - 14, eye_y - 16, ex + 12, eye_y - 18 + side], fill=shade, width=4)
    draw.line([cx, eye_y + 8, cx - 6, cy + 18, cx + 4, cy + 20], fill=shade, width=3)
    mouth_w = int(rng.integers(18, 30))
    draw.chord([cx - mouth_w, cy + 30, cx + mouth_w, cy + 30 + int(rng.integers(10, 22))],
               0, 180, fill=(150, 45, 55))
    return image


def swapped(target: int, source: int, frame: int) -> Image.Image:
    """A face-swap-like fake: the target's frame with the source's inner face blended in."""
    mask = Image.new("L", (SIZE, SIZE), 0)
    ImageDraw.Draw(mask).ellipse([68, 70, 188, 200], fill=255)
    return Image.composite(face(source, frame), face(target, frame),
                           mask.filter(ImageFilter.GaussianBlur(6)))


def write_video(folder: Path, draw) -> list[Path]:  # noqa: ANN001
    """NNN.png frames (DeepfakeBench's naming) of one video."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in INDICES:
        path = folder / f"{i:03d}.png"
        draw(i).save(path, optimize=True)
        paths.append(path)
    return paths


def build_trees(rgb: Path, jsons: Path) -> tuple[Path, Path]:
    """FF++ c23 (originals + Deepfakes) and Celeb-DF-v2 under DeepfakeBench's rgb dir, and
    FF-DF.json / Celeb-DF-v2.json as its rearrange.py writes them."""
    jsons.mkdir(parents=True)
    splits = ("train", "val", "test")
    reals: dict = {s: {"c23": {}} for s in splits}
    for vid, split in FF_REALS.items():
        paths = write_video(ff_real(rgb, vid), lambda i, v=vid: face(int(v), i))
        reals[split]["c23"][vid] = {"label": "FF-real", "frames": listed(paths, rgb)}
    fakes: dict = {s: {"c23": {}} for s in splits}
    for vid, split in FF_FAKES.items():
        a, b = (int(x) for x in vid.split("_"))
        paths = write_video(ff_fake(rgb, "Deepfakes", vid), lambda i, a=a, b=b: swapped(a, b, i))
        fakes[split]["c23"][vid] = {"label": "FF-DF", "frames": listed(paths, rgb), "masks": []}
    ffpp = jsons / "FF-DF.json"
    ffpp.write_text(json.dumps({"FF-DF": {"FF-real": reals, "FF-DF": fakes}}))

    celeb = rgb / "Celeb-DF-v2"
    real_videos, fake_videos = {}, {}
    for n, (sub, vid) in enumerate((s, v) for s, vs in CELEB_REALS.items() for v in vs):
        paths = write_video(celeb / sub / "frames" / vid, lambda i, n=n: face(50 + n, i))
        real_videos[vid] = {"label": "CelebDFv2_real", "frames": listed(paths, rgb)}
    for vid in CELEB_FAKES:
        t, s = (int(x[2:]) for x in vid.split("_")[:2])
        paths = write_video(celeb / "Celeb-synthesis" / "frames" / vid,
                            lambda i, t=t, s=s: swapped(50 + t, 50 + s, i))
        fake_videos[vid] = {"label": "CelebDFv2_fake", "frames": listed(paths, rgb)}
    celeb_json = jsons / "Celeb-DF-v2.json"
    celeb_json.write_text(json.dumps({"Celeb-DF-v2": {
        "CelebDFv2_real": {"train": {}, "val": real_videos, "test": real_videos},
        "CelebDFv2_fake": {"train": {}, "val": fake_videos, "test": fake_videos},
    }}))
    return ffpp, celeb_json


def ablate(*args: str, cwd: Path, timeout: int) -> str:
    """`ablate ARGS` in a child process, as a user types it; its output (failing on exit != 0)."""
    proc = subprocess.run([str(BIN / "ablate"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "ABLATE_CACHE": str(cwd / "cache")})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"ablate {' '.join(args)} exited {proc.returncode}:\n{out[-6000:]}"
    return out


def memory_levers() -> list[str]:
    """What keeps a 725 M-parameter trial in the fewest GB this machine allows."""
    from ablate.device import supports_dtype

    bf16 = supports_dtype(torch.device("cpu"), torch.bfloat16)  # else a one-line error
    return [f"teacher.dtype: {'bfloat16' if bf16 else 'float32'}",
            "train.optimizer: adamw8bit", "train.grad_checkpointing: true",
            "train.branch_backward: true"]


SPACE = """description: "test: the released recipe at full size (random init), guided vs baseline"
fixed:
  recipe: official_code
  teacher.random_init: true
  backbone.random_init: true
  image_size: {size}
  data.train: "{train}"
  train.epochs: null
  train.steps: 2
  train.batch_size: 2
  train.eval_every: epoch
  train.log_every: 1
{levers}
design: one-at-a-time
reference: {{guide: controlnet}}
factors:
  guide: [controlnet, none]
seeds: 1
budget: {{max_concurrent: 1}}
resources: {{cpu: 2, gpu: 0}}
tests: ["{test}"]
"""


def meta_trainable(cfg) -> tuple[int, dict[str, int]]:  # noqa: ANN001
    """Trainable parameters of `cfg`'s detector built on the meta device (shapes only, no
    memory): the total and the count per top-level module."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from ablate.model.build import build_detector
    from ablate.model.teachers import unet_families as arch
    from ablate.model.teachers.unet import UNetTeacher

    with torch.device("meta"):
        unet = UNet2DConditionModel(**arch._UNET["sd15"])
        vae = AutoencoderKL(**arch._VAE["sd15"])
    context, pooled = arch.random_context("sd15", 0)
    teacher = UNetTeacher("sd15", "sd15", unet, vae, arch.scheduler(arch.PREDICTION["sd15"]),
                          context, pooled)
    with torch.device("meta"):
        detector = build_detector(cfg, teacher=teacher)
    parts = {name: sum(p.numel() for p in module.parameters() if p.requires_grad)
             for name, module in detector.named_children()}
    return sum(p.numel() for p in detector.parameters() if p.requires_grad), parts


def library_counts() -> tuple[int, int]:
    """(EfficientNet-B4 + a 1-logit head, SD 1.5's ControlNet without its pixel-space
    conditioning embedding), counted on timm's and diffusers' own models."""
    import timm
    from diffusers import ControlNetModel, UNet2DConditionModel

    from ablate.model.teachers import unet_families as arch

    with torch.device("meta"):
        encoder = timm.create_model("tf_efficientnet_b4", pretrained=False, num_classes=0)
        controlnet = ControlNetModel.from_unet(UNet2DConditionModel(**arch._UNET["sd15"]),
                                               load_weights_from_unet=False)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    classifier = count(encoder) + encoder.num_features + 1
    return classifier, count(controlnet) - count(controlnet.controlnet_cond_embedding)


def frame_auc(labels, scores) -> float:  # noqa: ANN001
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.asarray(labels), np.asarray(scores)))


def classifier_scores(run_dir: Path, rows: pd.DataFrame) -> np.ndarray:
    """Fake probabilities of the shipped encoder + head of a run folder on `rows` (chosen
    here), computed as training and evaluation compute them: the same frames in the same
    batch, the same 2 threads. A random-init encoder after 2 steps of lr 1e-5 scores every
    frame ~0.5036, the frames differing in the 7th digit, so an AUC recomputed here equals
    the run's only if the same rows were scored, bit for bit."""
    from ablate.checkpoint import load_classifier
    from ablate.data.dataset import ManifestDataset
    from ablate.scoring import score

    classifier, _ = load_classifier(run_dir)
    with torch.no_grad():
        return score(classifier, ManifestDataset(rows.reset_index(drop=True), SIZE),
                     progress=False)["score"].to_numpy()


@pytest.mark.slow
@pytest.mark.ray  # the sweep's child process starts a local Ray
def test_official_code_full_size_sweep_selects_on_val_evaluates_cross_dataset_and_reports(
        one_heavy_test_at_a_time, tmp_path):
    pytest.importorskip("bitsandbytes")  # ablate[8bit], a dev extra: 2 bytes of AdamW state
    rgb = tmp_path / "rgb"
    ffpp_json, celeb_json = build_trees(rgb, tmp_path / "dataset_json")
    ffpp, celeb = tmp_path / "ffpp.csv", tmp_path / "celebdf.csv"
    out = ablate("data", "import", "deepfakebench", str(ffpp_json), "--root", str(rgb),
                 "--out", str(ffpp), "--source-is", "A", cwd=tmp_path, timeout=300)
    n_ff = (len(FF_REALS) + len(FF_FAKES)) * len(INDICES)
    assert f"wrote {n_ff} frames to {ffpp}" in out
    out = ablate("data", "import", "deepfakebench", str(celeb_json), "--root", str(rgb),
                 "--out", str(celeb), cwd=tmp_path, timeout=300)
    n_celeb = 2 * (3 + len(CELEB_FAKES)) * len(INDICES)  # its test videos listed under val too
    assert f"wrote {n_celeb} frames to {celeb}" in out

    space = tmp_path / "full.yaml"
    space.write_text(SPACE.format(size=SIZE, train=ffpp, test=celeb, levers="\n".join(
        f"  {lever}" for lever in memory_levers())))
    url = f"sqlite:///{tmp_path / 'r.db'}"
    try:
        ablate("sweep", "--space", str(space), "--db", url, "--name", "full", "--concurrency",
               "1", "--bootstrap", "50", cwd=tmp_path, timeout=2400)
        check_sweep(ResultsDB(url), url, ffpp, celeb, tmp_path)
    finally:  # a failed test's folder is kept: without the 2.9 GB weights and trial states
        for big in (tmp_path / "results").rglob("*"):
            if big.is_file() and big.stat().st_size > 100 * 2**20:
                big.unlink()


def check_sweep(db: ResultsDB, url: str, ffpp: Path, celeb: Path, tmp_path: Path) -> None:
    trials = db.trials("full")
    assert list(trials["status"]) == ["finished", "finished"], trials.get("error")
    recipes = {json.loads(r)["guide"]["name"]: (t, json.loads(r))
               for t, r in zip(trials.itertuples(), trials["recipe_json"], strict=True)}
    assert set(recipes) == {"controlnet", "none"}
    first, second = sorted(trials.itertuples(), key=lambda t: pd.Timestamp(t.started))
    assert pd.Timestamp(first.ended) <= pd.Timestamp(second.started)  # one trial at a time
    metrics = db.metrics("full")
    manifest = load_manifest(ffpp)  # frame paths resolved as the runs resolve them
    val_rows = manifest[manifest["split"] == "val"]
    n_val = (2 + 2) * len(INDICES)  # FF_REALS / FF_FAKES in val
    assert len(val_rows) == n_val
    celeb_rows = load_manifest(celeb)
    celeb_test = celeb_rows[celeb_rows["split"] == "test"]
    n_test, n_test_videos = (3 + len(CELEB_FAKES)) * len(INDICES), 3 + len(CELEB_FAKES)
    assert len(celeb_test) == n_test

    guided_total, parts = meta_trainable(compose(
        ["recipe=official_code", "teacher.random_init=true", "backbone.random_init=true"]))
    classifier_count, controlnet_count = library_counts()
    assert parts["classifier"] == classifier_count and parts["guide"] == controlnet_count
    # the released code's 725 M: EN-B4 17.6 M, 2 filters 302.6 M, 2 weight modules 44.9 M,
    # the shared ControlNet copy 360.2 M
    assert guided_total == pytest.approx(725.2e6, rel=1e-3)
    expected_params = {"controlnet": guided_total, "none": classifier_count}

    for guide, (trial, recipe) in recipes.items():
        assert (recipe["backbone"]["name"], recipe["image_size"]) == ("efficientnet_b4", SIZE)
        if guide == "controlnet":
            assert recipe["teacher"]["name"] == "sd15" and recipe["teacher"]["random_init"]
        print(f"{guide}: wall {trial.wall_s:.0f} s, step {trial.step_time_s:.1f} s, trial "
              f"process peak {trial.peak_mem_mb / 1024:.1f} GB")
        assert trial.train_steps == 2  # train.epochs=null: the steps, not the preset's 20 epochs
        assert int(trial.params_trainable) == expected_params[guide], guide
        run = Path(trial.run_dir)
        info = json.loads((run / "run.json").read_text())
        assert info["steps"] == 2 and info["params_trainable"] == expected_params[guide]

        # selection: on the FF++ val split, as recomputed here from the shipped encoder
        selection = info["selection"]
        assert (selection["split"], selection["metric"]) == ("val", "val_auc")
        assert selection["dataset"] == str(ffpp) and selection["n_frames"] == n_val
        assert info["checkpoint_step"] == selection["step"] == 2  # eval_every=epoch: at the end
        val_auc = frame_auc(val_rows["label"], classifier_scores(run, val_rows))
        assert selection["val_auc"] == pytest.approx(val_auc, abs=1e-6)
        mine = metrics[metrics["trial_id"] == trial.id]
        val = mine[mine["split"] == "val"]
        assert list(zip(val["dataset"], val["metric"], val["n"], strict=True)) == \
            [(str(ffpp), "auc", n_val)]
        assert val["value"].iloc[0] == pytest.approx(val_auc, abs=1e-6)
        curves = db.curves("full")
        steps = curves[(curves["trial_id"] == trial.id) & (curves["name"] == "loss/total")]
        assert sorted(steps["step"]) == [1, 2] and np.isfinite(steps["value"]).all()

        # evaluation: Celeb-DF's test rows only, with their provenance
        test = mine[mine["split"] == "test"]
        assert set(test["dataset"]) == {str(celeb)}
        assert set(test["level"]) == {"frame", "video"}
        assert set(test.loc[test["level"] == "frame", "n"]) == {n_test}
        assert set(test.loc[test["level"] == "video", "n"]) == {n_test_videos}
        thresholded = test[test["metric"] == "acc_thr"]
        assert len(thresholded) and set(thresholded["threshold_from"]) == {"source val EER point"}
        assert thresholded["threshold"].to_numpy() == pytest.approx(selection["threshold"])
        scored = pd.read_csv(run / "scores.csv")  # the per-frame scores the rows came from
        assert sorted(scored["path"]) == sorted(celeb_test["path"])
        auc = test[(test["level"] == "frame") & (test["metric"] == "auc")]["value"].iloc[0]
        assert auc == pytest.approx(
            frame_auc(celeb_test["label"], classifier_scores(run, celeb_test)), abs=1e-6)

    report_dir = tmp_path / "report"
    ablate("report", "--sweep", "full", "--db", url, "--format", "md,csv", "--out",
           str(report_dir), cwd=tmp_path, timeout=600)
    main = pd.read_csv(report_dir / "main.csv")
    auc = main[(main["level"] == "frame") & (main["metric"] == "auc")]
    assert set(auc["dataset"]) == {str(celeb), "avg"}  # the mean over test sets: one here
    assert sorted(auc["label"]) == ["guide=controlnet", "guide=controlnet", "guide=none",
                                    "guide=none"]
    for row in auc.itertuples():  # the report's numbers are the DB's
        trial = recipes[row.label.removeprefix("guide=")][0]
        stored = metrics[(metrics["trial_id"] == trial.id) & (metrics["split"] == "test")
                         & (metrics["level"] == "frame") & (metrics["metric"] == "auc")]
        assert row.mean == pytest.approx(stored["value"].iloc[0], abs=1e-12)
    text = (report_dir / "report.md").read_text()
    for named in (str(celeb), "guide=controlnet (ref)", "guide=none", "Baseline vs + guidance"):
        assert named in text, (named, text[:3000])

