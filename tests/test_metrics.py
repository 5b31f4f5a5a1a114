"""Metrics against sklearn and against cases computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from ablate import metrics as M
from ablate.core.errors import AblateError


def _sklearn_eer(y, s) -> float:
    """Reference EER: sklearn's ROC, linear interpolation at the FNR = FPR crossing."""
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    d = (1 - tpr) - fpr
    i = int(np.argmax(d <= 0))
    t = d[i - 1] / (d[i - 1] - d[i])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def _videos(n_videos: int, frames: int, separation: float, seed: int):
    """Random videos: per-video score offset (correlated frames) plus frame noise."""
    rng = np.random.default_rng(seed)
    vy = np.arange(n_videos) % 2
    offset = rng.normal(separation * vy, 1.0)
    vid = np.repeat(np.arange(n_videos), frames)
    s = 1 / (1 + np.exp(-(offset[vid] + rng.normal(0, 0.5, vid.size))))
    return vid, vy[vid], s


# ---------------------------------------------------------------- vs sklearn


@pytest.mark.parametrize("seed", range(5))
def test_frame_metrics_match_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.random(300) * 0.6 + 0.3 * y, 1)  # coarse rounding: many ties
    got = M.frame_metrics(y, s, threshold=0.55)
    assert got["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert got["ap"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert got["eer"] == pytest.approx(_sklearn_eer(y, s), abs=1e-12)
    assert got["acc_05"] == pytest.approx(np.mean((s >= 0.5) == y))
    assert got["acc_thr"] == pytest.approx(np.mean((s >= 0.55) == y))


def test_threshold_none_omits_acc_thr():
    assert set(M.frame_metrics([0, 1], [0.2, 0.8])) == {"auc", "eer", "ap", "acc_05"}


# ---------------------------------------------------------------- hand-computed


def test_perfect_separation():
    m = M.frame_metrics([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert (m["auc"], m["eer"], m["ap"], m["acc_05"]) == (1.0, 0.0, 1.0, 1.0)


def test_all_equal_scores():
    # ROC is the single segment (0,0) -> (1,1); FNR = FPR halfway along it.
    m = M.frame_metrics([0, 1, 0, 1, 1], [0.3] * 5)
    assert m["auc"] == 0.5 and m["eer"] == 0.5


def test_inverted_scores():
    m = M.frame_metrics([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1])
    assert m["auc"] == 0.0 and m["eer"] == 1.0


def test_tied_pair_interpolated_eer():
    # y = 1 1 0 0, s = .9 .5 .5 .1. Pairs (pos, neg): (.9,.5)=1 (.9,.1)=1 (.5,.5)=1/2
    # (.5,.1)=1 -> AUC = 3.5/4. ROC points (FPR, TPR): (0,0) (0,.5) (.5,1) (1,1); the
    # tie makes the diagonal segment (0,.5)->(.5,1), where FNR - FPR goes .5 -> -.5,
    # so it crosses halfway: FPR = FNR = .25 = EER (neither ROC point has it).
    y, s = [1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1]
    m = M.frame_metrics(y, s)
    assert m["auc"] == pytest.approx(0.875)
    assert m["eer"] == pytest.approx(0.25)
    assert M.eer_threshold(y, s) == 0.5  # t = 1/2 on the segment: the lower point wins


def test_unbalanced_eer_and_threshold():
    # y = 1 0 1 0 0 (P=2, N=3), s descending. ROC: (0,0) (0,.5) (1/3,.5) (1/3,1) (2/3,1)
    # (1,1); FNR - FPR: 1, .5, 1/6, -1/3, ... -> crossing on the vertical segment
    # (1/3,.5)->(1/3,1): EER = 1/3. |d| is smaller at (1/3,.5) (1/6 < 1/3), whose
    # threshold is 0.8.
    y, s = [1, 0, 1, 0, 0], [0.9, 0.8, 0.6, 0.3, 0.2]
    assert M.eer(y, s) == pytest.approx(1 / 3)
    assert M.eer_threshold(y, s) == 0.8
    # accuracy of score >= thr: .9 -> 4/5, .8 -> 3/5, .6 -> 4/5; ties go to the higher
    assert M.best_acc_threshold(y, s) == 0.9


def test_eer_threshold_on_perfect_separation_is_an_observed_score():
    assert M.eer_threshold([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 0.8


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "labels, scores, match",
    [
        ([0, 0, 0], [0.1, 0.2, 0.3], "all 3 labels are real"),
        ([1, 1], [0.1, 0.2], "all 2 labels are fake"),
        ([], [], "empty"),
        ([0, 1], [0.1, np.nan], "NaN"),
        ([0, 1, 1], [0.1, 0.2], "differ in length"),
        ([0, 2], [0.1, 0.2], "0 \\(real\\) or 1 \\(fake\\)"),
    ],
)
def test_bad_input_raises_ablate_error(labels, scores, match):
    with pytest.raises(AblateError, match=match):
        M.frame_metrics(labels, scores)
    with pytest.raises(AblateError):
        M.evaluate_scores(np.arange(len(labels)), labels, scores, n_boot=10)


def test_one_class_video_auc_and_bootstrap_raise():
    with pytest.raises(AblateError, match="labels are real"):
        M.video_auc(["a", "a", "b"], [0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(AblateError, match="labels are fake"):
        M.bootstrap_ci(["a", "b"], [1, 1], [0.1, 0.2], "auc", n_boot=5)


def test_mixed_label_video_raises():
    with pytest.raises(AblateError, match="mix real and fake"):
        M.video_scores(["a", "a", "b"], [0, 1, 1], [0.1, 0.2, 0.3])


def test_unknown_metric_name_raises():
    with pytest.raises(AblateError, match="unknown metric"):
        M.bootstrap_ci([0, 1], [0, 1], [0.1, 0.9], "f1", n_boot=5)


# ---------------------------------------------------------------- video level


def test_video_scores_are_frame_means():
    ids = ["b", "a", "b", "c", "a", "b"]
    y = [1, 0, 1, 1, 0, 1]
    s = [0.9, 0.2, 0.6, 0.1, 0.4, 0.3]
    vid, vy, vs = M.video_scores(ids, y, s)
    assert list(vid) == ["a", "b", "c"]
    assert list(vy) == [0, 1, 1]
    np.testing.assert_allclose(vs, [0.3, 0.6, 0.1])  # (.2+.4)/2, (.9+.6+.3)/3, .1
    # video a (real, .3) sits between fakes b (.6) and c (.1): AUC = 1/2
    assert M.video_auc(ids, y, s) == 0.5


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_ci_contains_point_and_narrows_with_more_videos():
    widths = []
    for n_videos in (20, 400):
        vid, y, s = _videos(n_videos, frames=5, separation=1.5, seed=1)
        low, high = M.bootstrap_ci(vid, y, s, "auc", n_boot=300, seed=0)
        assert low <= M.auc(y, s) <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2


def test_bootstrap_reproducible_with_seed():
    vid, y, s = _videos(30, frames=4, separation=1.0, seed=2)
    a = M.bootstrap_ci(vid, y, s, "eer", n_boot=200, seed=7)
    assert a == M.bootstrap_ci(vid, y, s, "eer", n_boot=200, seed=7)
    assert a != M.bootstrap_ci(vid, y, s, "eer", n_boot=200, seed=8)


def test_vectorised_metrics_equal_sklearn_on_the_same_resamples():
    vid, y, s = _videos(24, frames=6, separation=1.0, seed=3)
    s = np.round(s, 2)  # ties
    pairs = [
        ("auc", roc_auc_score),
        ("ap", average_precision_score),
        ("eer", _sklearn_eer),
        ("acc_05", lambda yy, ss: float(np.mean((ss >= 0.5) == yy))),
    ]
    for name, fn in pairs:
        fast, _ = M.bootstrap_values(vid, y, s, name, n_boot=50, seed=4)
        slow, _ = M.bootstrap_values(vid, y, s, fn, n_boot=50, seed=4)
        np.testing.assert_allclose(fast, slow, atol=1e-12, err_msg=name)


def test_bootstrap_draws_whole_videos():
    # Each frame's score encodes (video, frame); in every resample all frames of a
    # video must appear equally often (0, 1, 2, ... times), never a partial video.
    vid = np.repeat(np.arange(8), 5)
    s = vid * 10.0 + np.tile(np.arange(5), 8)
    y = (vid % 2).astype(int)
    seen = []

    def record(yy, ss):
        counts = np.bincount(ss.astype(int), minlength=80).reshape(8, 10)[:, :5]
        seen.append(counts)
        return 0.0

    M.bootstrap_values(vid, y, s, record, n_boot=50, seed=0)
    assert len(seen) == 50
    for counts in seen:
        assert (counts == counts[:, :1]).all()


def test_video_resampling_matters_for_correlated_frames():
    # 2 real + 2 fake videos, 50 near-identical frames each. Fake video 3 scores
    # lowest of all, fake video 1 highest: frame AUC = 1/2, but which videos a
    # resample draws moves it between 0 and 1. Resampling frames (wrongly, as if
    # independent) gives a far narrower CI around 1/2.
    rng = np.random.default_rng(0)
    video_score = {0: 0.5, 1: 0.9, 2: 0.4, 3: 0.1}
    vid = np.repeat([0, 1, 2, 3], 50)
    y = np.isin(vid, [1, 3]).astype(int)
    s = np.array([video_score[v] for v in vid]) + rng.normal(0, 0.01, vid.size)
    low, high = M.bootstrap_ci(vid, y, s, "auc", n_boot=500, seed=0)
    assert low <= 0.25 and high >= 0.75

    frame_boot = [M.auc(y[i], s[i]) for i in rng.integers(0, y.size, size=(300, y.size))]
    f_low, f_high = np.quantile(frame_boot, [0.025, 0.975])
    assert f_high - f_low < (high - low) / 2


def test_one_class_resamples_are_redrawn_and_counted():
    # 1 fake among 4 videos: (3/4)^4 + (1/4)^4 ~ 32% of resamples are one-class
    vid = np.arange(4)
    y = np.array([0, 0, 0, 1])
    s = np.array([0.1, 0.2, 0.3, 0.9])
    values, redrawn = M.bootstrap_values(vid, y, s, "auc", n_boot=200, seed=0)
    assert values.size == 200 and (values == 1.0).all()
    assert 20 < redrawn < 200


def test_evaluate_scores_rows():
    vid, y, s = _videos(40, frames=5, separation=1.5, seed=5)
    rows = M.evaluate_scores(vid, y, s, threshold=0.5, n_boot=200, seed=0)
    keys = [(r["level"], r["metric"]) for r in rows]
    assert keys == [
        ("frame", "auc"),
        ("frame", "eer"),
        ("frame", "ap"),
        ("frame", "acc_05"),
        ("frame", "acc_thr"),
        ("video", "auc"),
        ("video", "eer"),
    ]
    for r in rows:
        assert r["ci_low"] <= r["value"] <= r["ci_high"], r
        assert r["n"] == (200 if r["level"] == "frame" else 40)
    assert rows[5]["value"] == pytest.approx(M.video_auc(vid, y, s))
    # same resamples as bootstrap_ci with the same seed
    assert (rows[0]["ci_low"], rows[0]["ci_high"]) == M.bootstrap_ci(
        vid, y, s, "auc", n_boot=200, seed=0
    )


def test_evaluate_scores_without_bootstrap_has_nan_ci():
    vid, y, s = _videos(10, frames=3, separation=1.0, seed=6)
    rows = M.evaluate_scores(vid, y, s, n_boot=0)
    assert all(np.isnan(r["ci_low"]) and np.isnan(r["ci_high"]) for r in rows)
    assert "acc_thr" not in {r["metric"] for r in rows}


def test_bootstrap_speed_10k_frames():
    import time

    vid, y, s = _videos(500, frames=20, separation=1.0, seed=7)
    start = time.perf_counter()
    M.bootstrap_ci(vid, y, s, "auc", n_boot=1000, seed=0)
    assert time.perf_counter() - start < 5.0  # generous: shared CI cores


# ---------------------------------------------------------------- EER conventions


def _deepfakebench_eer(y, s) -> float:
    """DeepfakeBench's training/metrics/utils.py, verbatim in substance: sklearn's default
    roc_curve (drop_intermediate=True), then the FPR where |FNR - FPR| is smallest."""
    fpr, tpr, _ = roc_curve(y, s, pos_label=1)
    fnr = 1 - tpr
    return float(fpr[np.nanargmin(np.absolute(fnr - fpr))])


def _diffusionfake_eer(y, s) -> float:
    """DiffusionFake's EER: the root of 1 - x - interp1d(fpr, tpr)(x) on [0, 1]."""
    from scipy.interpolate import interp1d
    from scipy.optimize import brentq

    fpr, tpr, _ = roc_curve(y, s)
    return float(brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0))


@pytest.mark.parametrize("seed", range(40))
def test_nearest_eer_is_deepfakebench_expression(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(6, 200))
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    s = rng.random(n) * 0.6 + 0.3 * y
    if seed % 2:
        s = np.round(s, int(rng.integers(1, 3)))  # ties: diagonal ROC segments
    assert M.eer(y, s, "nearest") == _deepfakebench_eer(y, s)
    assert M.frame_metrics(y, s, eer_convention="nearest")["eer"] == _deepfakebench_eer(y, s)


@pytest.mark.parametrize("seed", range(20))
def test_interpolated_eer_is_diffusionfake_brentq(seed):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(10, 300))
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    s = rng.random(n) * 0.7 + 0.3 * y  # continuous: interp1d needs no tie handling
    assert M.eer(y, s) == pytest.approx(_diffusionfake_eer(y, s), abs=1e-9)
    assert M.eer(y, s, "interpolated") == M.eer(y, s)  # the default


def test_hand_worked_case_where_the_conventions_differ():
    # y (by descending score) = 1 0 0 0 1: P = 2, N = 3. ROC points (FPR, TPR):
    # (0,0) (0,.5) (1/3,.5) (2/3,.5) (1,.5) (1,1). FNR - FPR: 1, .5, 1/6, -1/6, -.5, -1.
    # interpolated: halfway between (1/3,.5) and (2/3,.5) -> EER = 1/2.
    # nearest (DeepfakeBench): sklearn's roc_curve drops (1/3,.5) and (2/3,.5) (equal
    # steps either side), leaving (0,0) (0,.5) (1,.5) (1,1) with |FNR - FPR| = 1, .5, .5,
    # 1; the first minimum is (0,.5) -> EER = 0, although AUC is only 1/2.
    y, s = [1, 0, 0, 0, 1], [0.9, 0.8, 0.7, 0.6, 0.5]
    assert M.auc(y, s) == pytest.approx(0.5)
    assert M.eer(y, s, "interpolated") == pytest.approx(0.5)
    assert M.eer(y, s, "nearest") == 0.0
    assert _deepfakebench_eer(y, s) == 0.0


def test_unknown_eer_convention_raises():
    with pytest.raises(AblateError, match="unknown EER convention 'brentq'.*eval.eer"):
        M.frame_metrics([0, 1], [0.2, 0.8], eer_convention="brentq")


def test_vectorised_nearest_eer_equals_deepfakebench_on_the_same_resamples():
    # weighted resamples leave some tie groups at weight 0: the kept ROC points must be
    # those of the materialised frames, as sklearn sees them
    vid, y, s = _videos(30, frames=4, separation=1.0, seed=8)
    s = np.round(s, 2)
    for name, fn in (("eer", _deepfakebench_eer),):
        fast, _ = M.bootstrap_values(vid, y, s, name, n_boot=80, seed=2,
                                     eer_convention="nearest")
        slow, _ = M.bootstrap_values(vid, y, s, fn, n_boot=80, seed=2)
        np.testing.assert_array_equal(fast, slow)
    vids, vy, vs = M.video_scores(vid, y, s)
    fast, _ = M.bootstrap_values(vid, y, s, "video_eer", n_boot=80, seed=2,
                                 eer_convention="nearest")
    slow, _ = M.bootstrap_values(vids, vy, vs, _deepfakebench_eer, n_boot=80, seed=2)
    np.testing.assert_array_equal(fast, slow)


# ---------------------------------------------------------------- identity-clustered bootstrap


def _correlated_identities(n_ids: int = 20, seed: int = 0):
    """n_ids identities of 4 videos each, all of one class (identity i is fake when i is odd),
    2 frames per video; every frame of an identity has one score (perfect correlation)."""
    rng = np.random.default_rng(seed)
    ident_score = rng.random(n_ids) + 0.3 * (np.arange(n_ids) % 2)
    vid = np.repeat(np.arange(n_ids * 4), 2)  # video v belongs to identity v // 4
    ident = vid // 4
    y = ident % 2
    return vid, y, ident_score[ident], np.array([f"id{i:02d}" for i in ident], dtype=object)


def _numpy_cluster_ci(vid, y, s, ident, n_boot, seed, alpha=0.05):
    """Independent cluster bootstrap: draw identities with replacement (one (B, C) draw
    from default_rng(seed)), weight each frame by its identity's count, weighted AUC."""
    names = sorted(set(ident))
    cluster = np.array([names.index(i) for i in ident])
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(names), size=(n_boot, len(names)))
    values = []
    for row in draws:
        w = np.bincount(row, minlength=len(names))[cluster]
        assert 0 < (w * y).sum() < w.sum()  # both classes (20 identities: none redrawn)
        values.append(roc_auc_score(y, s, sample_weight=w))
    return tuple(np.quantile(values, [alpha / 2, 1 - alpha / 2]))


def test_identity_bootstrap_is_wider_for_correlated_identities_and_matches_numpy():
    vid, y, s, ident = _correlated_identities()
    by_id = M.bootstrap_ci(vid, y, s, "auc", n_boot=400, seed=5, identities=ident)
    by_video = M.bootstrap_ci(vid, y, s, "auc", n_boot=400, seed=5, identities=ident,
                              boot_unit="video")
    assert by_id == M.bootstrap_ci(vid, y, s, "auc", n_boot=400, seed=5, identities=ident,
                                   boot_unit="identity")  # auto = identity when known
    # 4 copies of each identity look like 4 independent videos to per-video resampling
    assert by_id[1] - by_id[0] > 1.5 * (by_video[1] - by_video[0])
    assert M.bootstrap_values(vid, y, s, "auc", n_boot=400, seed=5, identities=ident)[1] == 0
    np.testing.assert_allclose(by_id, _numpy_cluster_ci(vid, y, s, ident, 400, 5), atol=1e-12)
    # without identities (or all empty) auto falls back to videos
    assert M.bootstrap_ci(vid, y, s, "auc", n_boot=400, seed=5) == by_video
    blank = np.array([""] * len(vid), dtype=object)
    assert M.bootstrap_ci(vid, y, s, "auc", n_boot=400, seed=5, identities=blank) == by_video


def test_identity_resamples_bring_every_video_of_a_drawn_identity():
    vid, y, s, ident = _correlated_identities(n_ids=6)
    clusters = M.video_clusters(vid, ident)
    assert list(clusters) == list(np.repeat(np.arange(6), 4))
    boot = M.draw_videos(np.repeat(np.arange(6) % 2, 4), 50, seed=1, clusters=clusters)
    assert boot.unit == "identity" and boot.n_units == 6
    per_video = boot.counts.reshape(50, 6, 4)
    assert (per_video == per_video[:, :, :1]).all()  # a cluster's videos are drawn together
    assert (boot.counts.sum(axis=1) == 24).all()  # 6 identities drawn, 4 videos each


def test_videos_without_identity_are_clusters_of_their_own_and_conflicts_raise():
    vid = np.array(["a", "a", "b", "c", "d"])
    clusters = M.video_clusters(vid, np.array(["x", "x", "x", None, ""], dtype=object))
    assert clusters[0] == clusters[1] and len(set(clusters)) == 3  # {a, b}, {c}, {d}
    with pytest.raises(AblateError, match="1 videos name more than one identity.*a"):
        M.video_clusters(vid, np.array(["x", "y", "x", "z", "z"], dtype=object))
    with pytest.raises(AblateError, match="bootstrap_unit=identity.*no identity column"):
        M.evaluate_scores(np.arange(4), [0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8], n_boot=10,
                          boot_unit="identity")
    with pytest.raises(AblateError, match="unknown bootstrap unit 'frame'"):
        M.evaluate_scores(np.arange(4), [0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8], n_boot=10,
                          boot_unit="frame")


def test_evaluate_scores_rows_say_how_they_were_computed():
    vid, y, s, ident = _correlated_identities()
    rows = {(r["level"], r["metric"]): r for r in M.evaluate_scores(
        vid, y, s, threshold=0.4, n_boot=100, seed=3, identities=ident,
        eer_convention="nearest", threshold_from="source val EER point")}
    for r in rows.values():
        assert (r["n_boot"], r["boot_seed"], r["boot_unit"]) == (100, 3, "identity")
    assert rows[("frame", "eer")]["eer_convention"] == "nearest"
    assert rows[("video", "eer")]["eer_convention"] == "nearest"
    assert rows[("frame", "auc")]["eer_convention"] is None
    assert rows[("frame", "eer")]["value"] == _deepfakebench_eer(y, s)
    assert {r["aggregation"] for k, r in rows.items() if k[0] == "video"} == {"mean"}
    assert {r["aggregation"] for k, r in rows.items() if k[0] == "frame"} == {"none"}
    assert (rows[("frame", "acc_thr")]["threshold"],
            rows[("frame", "acc_thr")]["threshold_from"]) == (0.4, "source val EER point")
    assert (rows[("frame", "acc_05")]["threshold"],
            rows[("frame", "acc_05")]["threshold_from"]) == (0.5, "fixed 0.5")
    assert (rows[("frame", "auc")]["threshold"], rows[("frame", "auc")]["threshold_from"]) == (
        None, "none")
    plain = M.evaluate_scores(vid, y, s, n_boot=0)
    assert {(r["boot_unit"], r["boot_seed"], r["n_boot"]) for r in plain} == {("none", None, 0)}
    assert {r["eer_convention"] for r in plain if r["metric"] == "eer"} == {"interpolated"}
