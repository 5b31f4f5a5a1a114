"""The embedded benchmark: schema, pairing, splits, family signatures, learnability, cache."""

from __future__ import annotations

import filecmp
import socket
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from ablate.core.errors import AblateError
from ablate.data import synthetic as S
from ablate.data.synthetic import cache, photo, scene

SMALL = {"n_identities": 8, "videos_per_identity": 2, "frames_per_video": 4}
TINY = {"n_identities": 6, "videos_per_identity": 1, "frames_per_video": 2}


@pytest.fixture(scope="session")
def small(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """All four families at a size that builds in a few seconds."""
    manifest = S.build_benchmark(
        tmp_path_factory.mktemp("bench"), **SMALL, methods=S.METHODS, progress=False
    )
    return manifest, pd.read_csv(manifest, keep_default_na=False)


def _load(manifest: Path, rel: str) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(manifest.parent / rel)), cv2.COLOR_BGR2RGB).astype(float)


def _identity(video_id: str) -> str:
    """'synth-x/real/id003_v1' -> 'id003'; fakes are named by their target identity."""
    return video_id.split("/")[2].split("_")[0]


def _source_identity(video_id: str) -> str:
    return video_id.split("_from_")[1].split("_")[0]


# ---------------------------------------------------------------- manifest


def test_manifest_schema_and_counts(small):
    manifest, df = small
    assert list(df.columns) == S.COLUMNS
    assert set(df["dataset"]) == {S.dataset_name(m) for m in S.METHODS}
    assert set(df["split"]) == set(S.SPLITS)
    assert set(df["label"]) == {0, 1}
    per_dataset = 2 * (SMALL["n_identities"] + 1) * SMALL["videos_per_identity"]
    for name, d in df.groupby("dataset"):
        method = name.removeprefix("synth-")
        assert set(d["method"]) == {"real", method}
        assert (d["method"] == "real").eq(d["label"] == 0).all()
        assert d["video_id"].nunique() == per_dataset
        assert len(d) == per_dataset * SMALL["frames_per_video"]
        assert (d["label"] == 1).sum() == (d["label"] == 0).sum()  # one fake per real video
    assert sorted(df["frame"].unique()) == list(range(SMALL["frames_per_video"]))
    assert not df["path"].duplicated().any()
    assert all((manifest.parent / p).is_file() for p in df["path"])


def test_manifest_passes_project_checks(small):
    from ablate.data import manifest as project_manifest

    manifest, _ = small
    assert S.COLUMNS == project_manifest.COLUMNS
    report = project_manifest.check_manifest(manifest, guided=True)
    assert report.ok, report.format()
    table = project_manifest.load_manifest(manifest)
    assert Path(table["path"].iloc[0]).is_absolute()


def test_reals_are_their_own_source_and_target(small):
    _, df = small
    reals = df[df["label"] == 0]
    assert (reals["source_path"] == reals["path"]).all()
    assert (reals["target_path"] == reals["path"]).all()


def test_fakes_pair_with_real_frames_of_the_same_split(small):
    manifest, df = small
    real = df[df["label"] == 0].set_index("path")
    fakes = df[df["label"] == 1]
    for row in fakes.itertuples():
        for partner in (row.source_path, row.target_path):
            assert (manifest.parent / partner).is_file()
            p = real.loc[partner]
            assert (p["dataset"], p["split"], p["frame"]) == (row.dataset, row.split, row.frame)
        target_id = _identity(real.loc[row.target_path, "video_id"])
        source_id = _identity(real.loc[row.source_path, "video_id"])
        assert target_id == _identity(row.video_id) != source_id == _source_identity(row.video_id)


def test_splits_do_not_share_identities(small):
    _, df = small
    df = df.assign(identity=[_identity(v) for v in df["video_id"]])
    splits_per_identity = df.groupby(["dataset", "identity"])["split"].nunique()
    assert (splits_per_identity == 1).all()
    for name, d in df.groupby("dataset"):
        sizes = d.groupby("split")["identity"].nunique()
        assert sizes["val"] >= 2 and sizes["test"] >= 2, name
        assert S.PHOTO in set(d.loc[d["split"] == "train", "identity"])


def test_families_have_their_own_identities(small):
    # Same identity name in two families is a different person (separately seeded).
    manifest, df = small
    first = df[(df["frame"] == 0) & (df["label"] == 0) & df["video_id"].str.endswith("id000_v0")]
    images = [_load(manifest, p) for p in first["path"]]
    assert len(images) == len(S.METHODS)
    assert all(np.abs(images[0] - im).mean() > 5 for im in images[1:])


# ---------------------------------------------------------------- families


def _fake_stats(manifest: Path, df: pd.DataFrame) -> pd.DataFrame:
    """Per fake: change outside/inside the face, mask-edge sharpness, blur, GAN stripes."""
    rows = []
    for r in df[df["label"] == 1].itertuples():
        fake, target = _load(manifest, r.path), _load(manifest, r.target_path)
        diff = np.abs(fake - target).max(axis=2)
        h = diff.shape[0]
        c = slice(h // 4, 3 * h // 4)
        rows.append(
            {
                "method": r.method,
                "border": max(
                    diff[:4].max(), diff[-4:].max(), diff[:, :4].max(), diff[:, -4:].max()
                ),
                "centre": np.abs(fake - target)[c, c].mean(),
                "edge": _edge_sharpness(diff),
                "sharpness": _laplacian(fake[c, c]) / _laplacian(target[c, c]),
                "stripes": _nyquist(fake[c, c] - target[c, c]),
            }
        )
    return pd.DataFrame(rows)


def _edge_sharpness(diff: np.ndarray) -> float:
    """Change on the outermost ring of the changed region relative to its inside."""
    changed = (diff > 0).astype(np.uint8)
    ring = (changed == 1) & (cv2.erode(changed, np.ones((3, 3), np.uint8)) == 0)
    deep = cv2.erode(changed, np.ones((9, 9), np.uint8)) == 1
    return float(diff[ring].mean() / (diff[deep].mean() + 1e-6))


def _laplacian(img: np.ndarray) -> float:
    return float(np.abs(cv2.Laplacian(img.mean(axis=2), cv2.CV_64F)).mean())


def _nyquist(img: np.ndarray) -> float:
    """Energy at the highest frequencies (period-2 stripes/checkers): upsampling artefacts."""
    g = img.mean(axis=2)
    s = (-1.0) ** np.arange(g.shape[0])
    return float(
        abs((g * s[:, None]).mean())
        + abs((g * s[None, :]).mean())
        + abs((g * np.outer(s, s)).mean())
    )


@pytest.fixture(scope="session")
def stats(small) -> pd.DataFrame:
    return _fake_stats(*small)


def test_fakes_change_the_face_and_nothing_outside_the_mask(stats):
    assert (stats["border"] == 0).all()  # frame borders (outside every mask) are untouched
    assert (stats["centre"] > 2.0).all()  # every fake changes the face region


def test_families_leave_different_fingerprints(stats):
    med = stats.groupby("method").median()
    # warp: GAN checkerboard -> far more period-2 energy in (fake - target)
    assert med.loc["warp", "stripes"] > 3 * med.drop("warp")["stripes"].max()
    # colour: hard mask edge -> the change is as large on the rim as inside
    assert med.loc["colour", "edge"] > med.drop("colour")["edge"].max()
    # blend: Poisson + wide feather -> the smoothest rim of all
    assert med.loc["blend", "edge"] < med.drop("blend")["edge"].min()
    # lowres: down-up sampling + JPEG -> the blurriest face
    assert med.loc["lowres", "sharpness"] < med.drop("lowres")["sharpness"].min()


def _simple_features(manifest: Path, rel: str) -> list[float]:
    """Hand-made statistics of the central region: gradients, Laplacian, period-2 energy."""
    lab = cv2.cvtColor(cv2.imread(str(manifest.parent / rel)), cv2.COLOR_BGR2LAB).astype(np.float32)
    h = lab.shape[0]
    c = slice(h // 4, 3 * h // 4)
    feats = []
    for ch in range(3):
        g = lab[..., ch]
        lap = np.abs(cv2.Laplacian(g, cv2.CV_32F))[c, c]
        mag = np.hypot(cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1))[c, c]
        feats += [np.log1p(lap.mean()), np.log1p(np.median(lap)), np.log1p(mag.mean())]
        feats += [np.log1p(np.percentile(mag, 95))]
    feats.append(np.log(_nyquist(lab[c, c, :1]) + 1e-3))
    return feats


def test_each_family_is_learnable_from_simple_statistics(small):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    manifest, df = small
    for name, d in df.groupby("dataset"):
        x = np.array([_simple_features(manifest, p) for p in d["path"]])
        groups = [_identity(v) for v in d["video_id"]]  # no identity in train and test fold
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        p = cross_val_predict(
            model, x, d["label"], groups=groups, cv=GroupKFold(4), method="predict_proba"
        )
        assert roc_auc_score(d["label"], p[:, 1]) > 0.6, name


# ---------------------------------------------------------------- determinism


def _same_tree(a: Path, b: Path, sub: str = "") -> bool:
    files = sorted(p.relative_to(a / sub) for p in (a / sub).rglob("*.png"))
    other = sorted(p.relative_to(b / sub) for p in (b / sub).rglob("*.png"))
    _, mismatch, errors = filecmp.cmpfiles(a / sub, b / sub, [str(f) for f in files], shallow=False)
    return files == other and not mismatch and not errors


def test_same_seed_gives_identical_bytes(tmp_path):
    a = S.build_benchmark(tmp_path / "a", **TINY, methods=("blend", "colour"), progress=False)
    b = S.build_benchmark(tmp_path / "b", **TINY, methods=("blend", "colour"), progress=False)
    assert a.read_bytes() == b.read_bytes()
    assert _same_tree(a.parent, b.parent)
    # a family does not depend on which other families are built alongside it
    c = S.build_benchmark(tmp_path / "c", **TINY, methods=("colour",), progress=False)
    assert _same_tree(a.parent, c.parent, "synth-colour")
    # another seed gives other images
    d = S.build_benchmark(tmp_path / "d", **TINY, methods=("colour",), seed=1, progress=False)
    first = pd.read_csv(c)["path"].iloc[0]
    assert (c.parent / first).read_bytes() != (d.parent / first).read_bytes()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_identities": 3}, "too small"),
        ({"methods": ("blend", "faceswap")}, "invalid"),
        ({"methods": ()}, "invalid"),
        ({"frames_per_video": 0}, "at least 1"),
        ({"image_size": 16}, "too small"),
    ],
)
def test_bad_parameters_raise(tmp_path, kwargs, match):
    with pytest.raises(AblateError, match=match):
        S.build_benchmark(tmp_path, **{**TINY, **kwargs}, progress=False)


def test_real_images_load_offline(monkeypatch):
    """The skimage images used ship with the package: loading them opens no socket."""

    def no_network(*args, **kwargs):
        raise AssertionError("network access while loading skimage data")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    photo._astronaut.cache_clear()
    scene._textures.cache_clear()
    assert S.photo_available()
    assert len(scene._textures()) == 3


def test_without_photo_identity(tmp_path):
    m = S.build_benchmark(tmp_path, **TINY, methods=("warp",), photo_identity=False, progress=False)
    ids = {_identity(v) for v in pd.read_csv(m)["video_id"]}
    assert S.PHOTO not in ids and len(ids) == TINY["n_identities"]


# ---------------------------------------------------------------- cache


def test_cache_builds_once_and_rebuilds_unfinished(tmp_path, monkeypatch):
    calls = []
    real_build = S.build_benchmark

    def counting_build(*args, **kwargs):
        calls.append(1)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(cache, "build_benchmark", counting_build)
    first = S.ensure_benchmark(tmp_path, **TINY, methods=("lowres",))
    marker = first.parent / S.MARKER
    stamp = marker.stat().st_mtime_ns
    assert S.ensure_benchmark(tmp_path, **TINY, methods=("lowres",)) == first
    assert len(calls) == 1 and marker.stat().st_mtime_ns == stamp
    assert first.parent.name.startswith("synthetic-")
    assert not list(tmp_path.glob(".*tmp*"))  # temporary build folder renamed away

    marker.unlink()  # as if the build had been interrupted before its last step
    assert S.ensure_benchmark(tmp_path, **TINY, methods=("lowres",)) == first
    assert len(calls) == 2 and marker.is_file()

    other = S.ensure_benchmark(tmp_path, **TINY, methods=("lowres",), seed=3)
    assert other != first and len(calls) == 3  # parameters are part of the cache key


def test_cache_root_default_and_env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ABLATE_CACHE", "")
    assert S.cache_root() == (tmp_path / "results" / "benchmark").resolve()
    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path / "cache"))
    assert S.cache_root() == (tmp_path / "cache" / "benchmark").resolve()
    assert S.cache_root(tmp_path / "x") == (tmp_path / "x").resolve()
