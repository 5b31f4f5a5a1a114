"""Face detection (faces.py) and crop geometry (crops.py) for `ablate data prepare`.

Where the astronaut's face is was read off skimage.data.astronaut() by hand (a 3x
zoom with a 10 px grid): eyes at about (203, 102) and (245, 103), mouth centre
about (225, 147); the face spans x 182..262, y 83..175.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data
from skimage.transform import rotate

from ablate.data import crops, faces

LEFT_EYE, RIGHT_EYE, MOUTH = (203, 102), (245, 103), (225, 147)


@pytest.fixture(scope="module")
def mtcnn():
    return faces.make_detector("mtcnn")


def _only_face(image: np.ndarray, detector) -> faces.Face:
    found = [f for f in faces.detect_faces(image, detector) if f.score >= 0.9]
    assert len(found) == 1, found
    return found[0]


def _inside(point, box, pad: float = 0) -> bool:
    x, y = point
    x1, y1, x2, y2 = box
    return x1 - pad <= x <= x2 + pad and y1 - pad <= y <= y2 + pad


# ---------------------------------------------------------------- detection


def test_mtcnn_box_and_landmarks_sit_on_the_astronauts_face(mtcnn):
    face = _only_face(skimage.data.astronaut(), mtcnn)
    x1, y1, x2, y2 = face.box
    # the hand-read eye band (x 195..255, y 95..110) and the mouth lie inside the box
    assert x1 <= 195 and x2 >= 255 and y1 <= 95 and y2 >= 150
    assert 60 <= x2 - x1 <= 120 and 70 <= y2 - y1 <= 140  # a face, not the whole photo
    assert face.score > 0.99
    assert all(_inside(p, face.box) for p in face.landmarks)
    left, right, _nose, mouth_l, mouth_r = np.array(face.landmarks)
    assert np.hypot(*(left - LEFT_EYE)) < 8 and np.hypot(*(right - RIGHT_EYE)) < 8
    mouth = (mouth_l + mouth_r) / 2
    assert np.hypot(*(mouth - MOUTH)) < 12


def test_mtcnn_finds_a_face_on_the_cameraman_and_none_on_non_faces(mtcnn):
    camera = np.stack([skimage.data.camera()] * 3, axis=-1)
    assert _only_face(camera, mtcnn).score > 0.99
    for name in ("coffee", "chelsea", "rocket", "brick"):
        image = getattr(skimage.data, name)()
        image = np.stack([image] * 3, axis=-1) if image.ndim == 2 else image
        picked = faces.pick_track([faces.detect_faces(image, mtcnn)], min_score=0.9)
        assert picked == [None], name


def test_detection_on_a_big_frame_comes_back_in_frame_pixels(mtcnn):
    """Frames are shrunk to DETECT_SIDE for detection; boxes must be scaled back."""
    image = skimage.data.astronaut()
    big = cv2.resize(image, (1024, 1024), interpolation=cv2.INTER_CUBIC)  # 2x
    small, large = _only_face(image, mtcnn), _only_face(big, mtcnn)
    assert np.allclose(np.array(large.box) / 2, small.box, atol=6)
    assert np.allclose(np.array(large.landmarks) / 2, small.landmarks, atol=4)


# ---------------------------------------------------------------- one face per frame


def _face(x: float, y: float, side: float, score: float = 1.0, points=None) -> faces.Face:
    return faces.Face((x, y, x + side, y + side), score, points)


def test_track_follows_the_first_face_not_the_largest():
    a0, b0 = _face(10, 10, 50), _face(200, 10, 30)
    a1, b1 = _face(14, 10, 50), _face(196, 10, 90)  # the other face grows larger
    weak = _face(12, 10, 50, score=0.5)
    picked = faces.pick_track([[b0, a0], [b1, a1], [weak, b1]], min_score=0.9)
    assert picked[0] == a0  # first frame: the largest
    assert picked[1] == a1  # then: nearest to the previous choice
    assert picked[2] == b1  # the weak one is no face; the only face left is chosen


def test_track_below_the_score_is_a_miss():
    assert faces.pick_track([[_face(0, 0, 40, score=0.89)], []], min_score=0.9) == [None, None]


def test_smoothing_by_hand_and_misses_stay_misses():
    # x1 of each box; a jittered box at k = 2; window 3 = the frame and one either side
    track = [_face(x, 0, 20) for x in (10, 10, 16, 10, 10)]
    smoothed = faces.smooth(track, 3)
    # k=0: (10+10)/2; k=1: (10+10+16)/3; k=2: (10+16+10)/3; k=3: (16+10+10)/3; k=4: 10
    assert [f.box[0] for f in smoothed] == pytest.approx([10, 12, 12, 12, 10])
    assert [f.box[2] for f in smoothed] == pytest.approx([30, 32, 32, 32, 30])

    pts = [((0.0, 0.0),) * 5, None, ((6.0, 3.0),) * 5, ((0.0, 0.0),) * 5]
    with_miss = [_face(10, 0, 20, points=pts[0]), None, _face(16, 0, 20, points=pts[2]),
                 _face(10, 0, 20, points=pts[3])]
    out = faces.smooth(with_miss, 3)
    assert out[1] is None  # nothing made up where nothing was found
    # k=0 sees k=0,1 -> only itself; k=2 sees 1..3 -> (16+10)/2; k=3 sees 2..3 -> 13
    assert [out[k].box[0] for k in (0, 2, 3)] == pytest.approx([10, 13, 13])
    assert out[2].landmarks[0] == pytest.approx((3.0, 1.5))
    assert faces.smooth(track, 1) == track


# ---------------------------------------------------------------- crop geometry


def test_template_is_deepfakebenchs():
    # DeepfakeBench's img_align_crop: ArcFace points (+8 px in x) for 112 px, then margin
    published = np.array([[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366],
                          [33.5493, 92.3655], [62.7299, 92.2041]]) + [8.0, 0.0]
    assert np.allclose(crops.template(112, 1.0), published)
    # 256 px, scale 1.3: left eye x = (38.2946/112*256 + 256*0.3/2)/1.3 = 96.8696
    assert crops.template(256, 1.3)[0] == pytest.approx([96.8696, 120.4331], abs=1e-3)


def test_similarity_by_hand():
    dst = crops.template(112, 1.0)
    a = 2 * np.array([[0.0, -1.0], [1.0, 0.0]])  # rotate 90 degrees, scale 2
    src = dst @ a.T + [100.0, 50.0]  # the face in the frame
    # frame -> crop is the inverse: 0.5 * R(-90) (p - (100, 50))
    expected = np.array([[0.0, 0.5, -25.0], [-0.5, 0.0, 50.0]])
    assert np.allclose(crops.align_matrix(src, 112, 1.0), expected, atol=1e-9)
    assert crops.align_matrix(np.zeros((5, 2)), 112, 1.0) is None  # degenerate: no crop


def test_aligned_crop_puts_the_landmarks_on_the_template():
    """A dot drawn at each landmark lands on the template's pixel after the warp."""
    frame = np.zeros((300, 400, 3), dtype=np.uint8)
    points = crops.template(112, 1.0) @ (1.5 * np.array([[0.8, -0.6], [0.6, 0.8]])).T + [150, 60]
    for x, y in points:
        cv2.circle(frame, (int(round(x)), int(round(y))), 2, (255, 255, 255), -1)
    face = faces.Face((0, 0, 1, 1), 1.0, tuple(map(tuple, points)))
    crop = crops.crop_face(frame, face, "similarity", 1.3, 128)[..., 0]
    for x, y in crops.template(128, 1.3):
        patch = crop[int(y) - 2 : int(y) + 3, int(x) - 2 : int(x) + 3]
        assert patch.max() > 100, (x, y)
    assert crop.mean() < 20  # only the five dots


def test_aligned_crops_of_a_rotated_face_agree(mtcnn):
    image = skimage.data.astronaut()
    turned = (rotate(image, 25, center=(225, 125)) * 255).astype(np.uint8)  # 25 deg anticlockwise
    upright, tilted = _only_face(image, mtcnn), _only_face(turned, mtcnn)

    def gray(crop):
        return cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY).astype(float).ravel()

    aligned = [crops.crop_face(im, f, "similarity", 1.3, 128) for im, f in
               ((image, upright), (turned, tilted))]
    boxed = [crops.crop_face(im, f, "none", 1.3, 128) for im, f in
             ((image, upright), (turned, tilted))]
    r_aligned = np.corrcoef(gray(aligned[0]), gray(aligned[1]))[0, 1]
    r_boxed = np.corrcoef(gray(boxed[0]), gray(boxed[1]))[0, 1]
    assert r_aligned > 0.9 and r_aligned > r_boxed + 0.1
    # the detector, run again on the tilted face's aligned crop, finds the eyes level and
    # at the template's place
    again = _only_face(aligned[1], mtcnn)
    eyes = np.array(again.landmarks[:2])
    assert np.abs(eyes - crops.template(128, 1.3)[:2]).max() < 5
    assert abs(eyes[0, 1] - eyes[1, 1]) < 3


def test_square_box_grows_by_scale_and_stays_inside_the_frame():
    assert crops.square_box((40, 40, 60, 50), 1.5, 100, 200) == (35, 30, 30, 30)
    assert crops.square_box((0, 0, 20, 20), 1.5, 100, 200) == (0, 0, 30, 30)  # shifted in
    assert crops.square_box((150, 50, 230, 130), 2.0, 100, 200) == (100, 0, 100, 100)  # shrunk
    assert crops.centre_box(120, 160) == (20, 0, 120, 120)
