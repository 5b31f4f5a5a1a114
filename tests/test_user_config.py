"""A user's configuration wins (issue 25): a config folder given by `--config-path` or
`$ABLATE_CONFIG_PATH` is searched before the built-in one, so a wheel user points `ffpp`
at their frames without editing site-packages; `data.roots.NAME=DIR` does the same without
any YAML and beats the dataset config's `root:`; a root that does not exist is one line."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ablate import locations
from ablate.core.errors import AblateError
from ablate.data import sources
from ablate.recipe import compose

ABLATE = Path(sys.executable).parent / "ablate"
BUILTIN_FFPP = Path(__file__).resolve().parents[1] / "configs" / "data" / "ffpp.yaml"


def _ffpp_tree(root: Path, value: int) -> Path:
    """A one-method FF++ tree (frames of one grey `value`, so two trees differ in pixels)."""
    for video, shade in (("000", 0), ("001", 0), ("002", 0), ("003", 0), ("004", 0),
                         ("005", 0), ("000_001", 50), ("002_003", 50), ("004_005", 50)):
        kind = ("manipulated_sequences/Deepfakes" if "_" in video
                else "original_sequences/youtube")
        folder = root / kind / "c23" / "frames" / video
        folder.mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((8, 8, 3), value + shade + i, dtype=np.uint8)).save(
                folder / f"{i:04d}.png")
    (root / "splits").mkdir()
    for split, pair in (("train", ["000", "001"]), ("val", ["002", "003"]),
                        ("test", ["004", "005"])):
        (root / "splits" / f"{split}.json").write_text(json.dumps([pair]))
    return root


@pytest.fixture
def user_conf(tmp_path, monkeypatch):
    """The user's folder on $ABLATE_CONFIG_PATH with their own `data/ffpp.yaml` (root: their
    tree `mine`) and `filter/paper.yaml` (heads: 2, the built-in says 8); manifests in tmp."""
    conf = tmp_path / "conf"
    (conf / "data").mkdir(parents=True)
    (conf / "filter").mkdir()
    mine = _ffpp_tree(tmp_path / "mine", 10)
    (conf / "data" / "ffpp.yaml").write_text(json.dumps({  # JSON is YAML
        "name": "ffpp", "root": str(mine), "manifest": None, "compression": "c23",
        "methods": ["Deepfakes"], "source_is": "B", "frames_per_video": None,
        "frames_per_video_eval": None}))
    (conf / "filter" / "paper.yaml").write_text("name: paper\nwidth: null\nheads: 2\n")
    monkeypatch.setenv("ABLATE_CONFIG_PATH", str(conf))
    monkeypatch.setattr(sources, "MANIFEST_DIR", tmp_path / "manifests")
    return conf


def test_a_users_dataset_config_beats_the_built_in_one(user_conf, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="ablate.locations"):
        assert locations.find("configs", "data/ffpp.yaml") == user_conf / "data" / "ffpp.yaml"
        source = sources.locate("ffpp")  # the manifest built from the user's root
    assert source.settings["root"] == str(tmp_path / "mine")
    table = sources.resolve_dataset("ffpp")
    assert table["path"].str.startswith(str(tmp_path / "mine")).all()
    notes = [r.getMessage() for r in caplog.records if "shadows" in r.getMessage()]
    assert notes == [f"data/ffpp.yaml from {user_conf} shadows the built-in one "
                     f"({BUILTIN_FFPP}); the first folder on the configs search path wins: "
                     "rename one to use both"]


def test_a_users_group_file_wins_in_the_composed_recipe_too(user_conf):
    # Hydra appends hydra.searchpath after its primary folder: the built-in file used to win
    assert compose([]).filter.heads == 2
    assert compose(["filter.heads=4"]).filter.heads == 4  # the command line still wins


def test_the_search_order_user_then_built_in_then_plugins(tmp_path, monkeypatch):
    first, second, env = (tmp_path / n for n in ("first", "second", "env"))
    for folder in (first, second, env):
        (folder / "data").mkdir(parents=True)
        (folder / "data" / "ffpp.yaml").write_text(f"name: ffpp\nroot: {folder}\n")
    monkeypatch.setenv("ABLATE_CONFIG_PATH", str(env))
    for folder in reversed([first, second]):  # what `--config-path first --config-path second` does
        locations.add_config_path(str(folder))
    path = locations.search_path("configs")
    builtin = BUILTIN_FFPP.parent.parent
    assert path[:4] == [first, second, env, builtin]
    assert locations.find("configs", "data/ffpp.yaml") == first / "data" / "ffpp.yaml"


def test_data_roots_beats_the_dataset_configs_root(user_conf, tmp_path):
    other = _ffpp_tree(tmp_path / "other", 100)
    cfg = compose(["data.train=ffpp", "data.tests=[ffpp]", f"data.roots.ffpp={other}"])
    assert sources.recipe_overrides(cfg)["root"] == str(other)  # the train set
    assert sources.dataset_overrides(cfg, "ffpp") == {"root": str(other)}  # a test set
    train = sources.resolve_dataset("ffpp", sources.recipe_overrides(cfg))
    assert train["path"].str.startswith(str(other)).all()
    own = sources.resolve_dataset("ffpp")  # without the recipe: the config's root
    assert own["path"].str.startswith(str(tmp_path / "mine")).all()
    baseline = compose(["guide=none", "data.train=ffpp", f"data.roots.ffpp={other}"])
    assert sources.recipe_overrides(baseline) == {"root": str(other)}  # no source, a root


def test_data_roots_needs_no_yaml_and_a_typo_or_a_missing_folder_is_one_line(tmp_path):
    cfg = compose([f"data.roots.celebdf={tmp_path}"])  # the built-in config says root: null
    assert sources.dataset_settings("celebdf", sources.dataset_overrides(cfg, "celebdf"))[
        "root"] == str(tmp_path)
    with pytest.raises(AblateError, match=r"^data.roots.ffpp=/nope: no such folder; give the "
                                          r"folder of ffpp's extracted face frames"):
        compose(["data.roots.ffpp=/nope"])
    with pytest.raises(AblateError, match=r"^data.roots.fpp: no dataset config 'fpp'"):
        compose([f"data.roots.fpp={tmp_path}"])


def test_a_missing_root_on_the_command_line_is_one_error_line(tmp_path):
    env = {**os.environ, "ABLATE_CACHE": str(Path("results").resolve())}
    proc = subprocess.run([str(ABLATE), "train", "--dry-run", "data.roots.ffpp=/nope"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("WARNING")]
    assert len(lines) == 1 and lines[0].startswith(
        "error: data.roots.ffpp=/nope: no such folder; give the folder of ffpp's extracted "
        "face frames (docs/data.md), or drop data.roots.ffpp"), proc.stderr


def test_a_test_set_found_through_data_roots_is_evaluated_and_described_there(tmp_path,
                                                                              monkeypatch):
    """The built-in ffpp config has no root: data.roots alone must lead evaluation to the
    frames, and the protocol stored with each number must describe those same rows."""
    from ablate.evaluate import evaluate_classifier
    from ablate.model.build import build_detector

    monkeypatch.setattr(sources, "MANIFEST_DIR", tmp_path / "manifests")
    tree = _ffpp_tree(tmp_path / "frames", 10)
    fakes = tree / "manipulated_sequences"
    for method in ("Face2Face", "FaceSwap", "NeuralTextures"):  # the built-in config's four
        shutil.copytree(fakes / "Deepfakes", fakes / method)
    cfg = compose(["guide=none", "backbone=tiny", "image_size=32", "data.tests=[ffpp]",
                   f"data.roots.ffpp={tree}"])
    classifier = build_detector(cfg).classifier.eval()
    metrics = evaluate_classifier(classifier, cfg, ["ffpp"], threshold=0.5, n_boot=10,
                                  progress=False)
    assert metrics["protocol"].notna().all()
    for text in metrics["protocol"]:
        p = json.loads(text)
        # the test split by hand: originals 004 and 005, fake 004_005 of each of 4 methods,
        # 2 frames each
        assert (p["adapter"], p["videos_real"], p["videos_fake"], p["frames"]) == \
            ("ffpp", 2, 4, 12)
