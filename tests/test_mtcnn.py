"""The vendored MTCNN (ablate.data.mtcnn) against facenet-pytorch's, its weights and licence.

Why against facenet-pytorch itself: crops prepared before the detector was vendored were
cut with facenet-pytorch 2.6.0's MTCNN and record it as their detector; they stay valid
only while the vendored copy finds the same faces. facenet-pytorch is installed in dev
(`make install`, --no-deps) as that reference only; the product never imports it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.util
import re
import sys
import tomllib
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from safetensors.torch import load_file

import ablate.data
from ablate.core.errors import AblateError
from ablate.data import faces
from ablate.data import mtcnn as vendored

ROOT = Path(__file__).resolve().parents[1]
NETS = ("pnet", "rnet", "onet")


def _images() -> dict[str, tuple[np.ndarray, int]]:
    """Real images and how many faces each holds (so no comparison passes on two empties)."""
    astronaut = skimage.data.astronaut()  # (512, 512, 3), one face

    def resized(width: int, height: int) -> np.ndarray:
        return cv2.resize(astronaut, (width, height), interpolation=cv2.INTER_AREA
                          if width < 512 else cv2.INTER_CUBIC)

    return {
        "astronaut": (astronaut, 1),
        "half": (resized(256, 256), 1),
        "three-quarters": (resized(384, 384), 1),
        "one-and-a-half": (resized(768, 768), 1),
        "squashed": (resized(640, 360), 1),
        "two-astronauts": (np.concatenate([astronaut, astronaut[:, ::-1]], axis=1), 2),
        "mirror": (astronaut[:, ::-1], 1),
        "coffee": (skimage.data.coffee(), 0),
        "flat": (np.full((300, 400, 3), 128, np.uint8), 0),
    }


IMAGES = _images()


@pytest.fixture(scope="module")
def mtcnn():  # a SLOW_FIXTURES name: each detection takes up to a second on the CPU
    return vendored.MTCNN(min_face=faces.MIN_FACE)


@pytest.fixture(scope="module")
def facenet():
    """facenet-pytorch's own MTCNN, as ablate ran it before vendoring (the reference):
    image -> boxes (N, 4), probs (N,), points (N, 5, 2) as floats, or None for no face."""
    reference = pytest.importorskip("facenet_pytorch")
    model = reference.MTCNN(keep_all=True, device="cpu", min_face_size=faces.MIN_FACE)

    def detect(image: np.ndarray) -> tuple[np.ndarray, ...] | None:
        boxes, probs, points = model.detect(image, landmarks=True)  # object arrays
        if boxes is None:
            return None
        return (np.asarray(boxes, dtype=float), np.asarray(probs, dtype=float),
                np.asarray(points, dtype=float))

    return detect


# ---------------------------------------------------------------- same faces as facenet-pytorch


@pytest.mark.parametrize("name", list(IMAGES))
def test_same_boxes_scores_and_landmarks_as_facenet_pytorch(mtcnn, facenet, name):
    image, count = IMAGES[name]
    expected, found = facenet(image), mtcnn(image)
    assert len(found.boxes) == count
    if count == 0:
        assert expected is None  # facenet-pytorch's "no face"
        assert found.probs.shape == (0,) and found.points.shape == (0, 5, 2)
        return
    boxes, probs, points = expected
    np.testing.assert_allclose(found.boxes, boxes, rtol=0, atol=1e-3)
    np.testing.assert_allclose(found.probs, probs, rtol=0, atol=1e-5)
    np.testing.assert_allclose(found.points, points, rtol=0, atol=1e-3)


@pytest.mark.slow  # detects on a 512 x 1024 image twice
def test_faces_detector_gives_what_facenet_pytorch_gave_it(facenet):
    """faces.make_detector's Face list as the facenet-pytorch-based detector built it."""
    image = IMAGES["two-astronauts"][0]
    boxes, probs, points = facenet(image)
    got = faces.make_detector("mtcnn")(image)
    assert len(got) == len(boxes) == 2
    for face, box, prob, pts in zip(got, boxes, probs, points, strict=True):
        np.testing.assert_allclose(face.box, box, rtol=0, atol=1e-3)
        assert face.score == pytest.approx(prob, abs=1e-5)
        np.testing.assert_allclose(face.landmarks, pts, rtol=0, atol=1e-3)


def test_the_product_path_never_imports_facenet_pytorch(monkeypatch):
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)  # any import of it fails
    for name in [m for m in sys.modules if m.startswith("ablate.data.mtcnn")]:
        monkeypatch.delitem(sys.modules, name)  # imported afresh below, without facenet
    monkeypatch.delattr(ablate.data, "mtcnn", raising=False)
    monkeypatch.setattr(faces, "_BUILT", {})
    detector = faces.make_detector("mtcnn")
    small = cv2.resize(skimage.data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
    found = detector(small)
    assert len(found) == 1 and found[0].score > 0.99
    assert faces.detector_version("mtcnn") == "facenet-pytorch 2.6.0"


# ---------------------------------------------------------------- weights, licence, version


def _facenet_state(net: str) -> dict[str, torch.Tensor]:
    reference = pytest.importorskip("facenet_pytorch")
    path = Path(reference.__file__).parent / "data" / f"{net}.pt"
    return torch.load(path, map_location="cpu", weights_only=True)


def test_weights_file_holds_facenet_pytorchs_tensors_unchanged():
    shipped = load_file(str(vendored.WEIGHTS))
    expected = {f"{net}.{k}": v for net in NETS for k, v in _facenet_state(net).items()}
    assert set(shipped) == set(expected)
    for key, tensor in expected.items():
        assert shipped[key].dtype == tensor.dtype and torch.equal(shipped[key], tensor), key


def test_the_conversion_script_writes_the_shipped_file(tmp_path):
    pytest.importorskip("facenet_pytorch")
    spec = importlib.util.spec_from_file_location(
        "convert_mtcnn_weights", ROOT / "scripts" / "convert_mtcnn_weights.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    sha = script.convert(script.installed_weights(), tmp_path / "mtcnn.safetensors")
    assert (tmp_path / "mtcnn.safetensors").read_bytes() == vendored.WEIGHTS.read_bytes()
    assert sha == vendored.WEIGHTS_SHA256


def test_licence_ships_next_to_the_weights():
    text = vendored.LICENSE.read_text()
    assert vendored.LICENSE.parent == vendored.WEIGHTS.parent
    assert "mtcnn.safetensors" in text and "facenet-pytorch 2.6.0" in text
    assert "MIT License" in text and "Copyright (c) 2019 Timothy Esler" in text
    # the wheel takes both: pyproject's package-data patterns match their names
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = data["package-data"]["ablate.data.mtcnn"]
    for path in (vendored.WEIGHTS, vendored.LICENSE):
        assert any(fnmatch.fnmatch(path.name, p) for p in patterns), path.name


def test_detector_version_is_the_weights_origin_and_the_makefiles_reference(tmp_path):
    """prepared.json records `facenet-pytorch 2.6.0` for the shipped weights, as it did when
    facenet-pytorch ran MTCNN (so old and new crops compare); other weights by their sha."""
    assert hashlib.sha256(vendored.WEIGHTS.read_bytes()).hexdigest() == vendored.WEIGHTS_SHA256
    assert faces.detector_version("mtcnn") == vendored.version() == vendored.ORIGIN
    assert vendored.ORIGIN == "facenet-pytorch 2.6.0"
    makefile = (ROOT / "Makefile").read_text()
    pinned = re.search(r"facenet-pytorch==([\w.]+)", makefile).group(1)
    assert vendored.ORIGIN == f"facenet-pytorch {pinned}"  # the tests' reference is that version
    other = tmp_path / "other.safetensors"
    other.write_bytes(vendored.WEIGHTS.read_bytes() + b" ")
    sha = hashlib.sha256(other.read_bytes()).hexdigest()
    assert vendored.version(other) == f"mtcnn sha256:{sha[:16]}"


def test_missing_weights_say_to_reinstall_in_one_line(tmp_path):
    with pytest.raises(AblateError, match="reinstall") as err:
        vendored.MTCNN(weights=tmp_path / "mtcnn.safetensors")
    assert "\n" not in str(err.value)
