"""Seek-based frame reading returns exactly the frames a full decode does.

The reference is an independent sequential decode with PyAV (every frame, in
order, no seeking) and, for the frame count, OpenCV's own FFmpeg build.
"""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from ablate.data import decode
from ablate.data.decode import Undecodable, frame_count, read_frames


def write_video(path: Path, n: int, gop: int, bframes: int, size=(64, 48), fps=25) -> None:
    """H.264 with keyframes every `gop` frames and B-frames: frames differ in a way the
    decoder must get right (a moving square plus a per-frame brightness ramp)."""
    width, height = size
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"g": str(gop), "bf": str(bframes), "keyint_min": str(gop),
                          "sc_threshold": "0", "crf": "18"}
        for i in range(n):
            img = np.full((height, width, 3), (i * 4) % 256, np.uint8)
            x = (i * 3) % (width - 8)
            img[10:18, x:x + 8] = (255, 0, 0)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def full_decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    write_video(path, n=90, gop=12, bframes=2)
    return path


def test_frame_count_matches_full_decode_and_opencv(video):
    cap = cv2.VideoCapture(str(video))
    opencv = 0
    while cap.grab():
        opencv += 1
    cap.release()
    assert frame_count(str(video)) == len(full_decode(video)) == opencv == 90


@pytest.mark.parametrize("indices", [
    [0, 1, 2],                      # from the start, decoding on
    [5, 11, 12, 13, 47, 89],        # both sides of keyframes, the last frame
    [88, 3, 60, 3],                 # unsorted with a repeat: ascending, once each
    list(range(0, 90, 7)),          # evenly spaced, as prepare samples
])
def test_seeking_returns_the_frames_of_a_full_decode(video, indices):
    reference = full_decode(video)
    got = list(read_frames(str(video), indices))
    assert [i for i, _ in got] == sorted(set(indices))
    for i, frame in got:
        assert frame.shape == (48, 64, 3) and frame.dtype == np.uint8
        np.testing.assert_array_equal(frame, reference[i])


def test_indices_past_the_end_are_left_out(video):
    assert [i for i, _ in read_frames(str(video), [80, 89, 90, 500])] == [80, 89]


def test_seeking_decodes_about_one_gop_per_frame(tmp_path, monkeypatch):
    """With a keyframe every 10 frames, 5 frames of 200 cost at most 5 x 10 decodes,
    not the 200 a sequential read up to the last one would."""
    path = tmp_path / "long.mp4"
    write_video(path, n=200, gop=10, bframes=0)
    decoded = []
    real = av.container.InputContainer.decode

    def counting(self, *args, **kwargs):
        for frame in real(self, *args, **kwargs):
            decoded.append(frame.pts)
            yield frame

    monkeypatch.setattr(av.container.InputContainer, "decode", counting)
    got = [i for i, _ in read_frames(str(path), [3, 57, 101, 150, 199])]
    assert got == [3, 57, 101, 150, 199]
    assert len(decoded) <= 5 * 10


def test_streams_without_timestamps_fall_back_to_a_sequential_decode(video, monkeypatch):
    monkeypatch.setattr(decode, "index_frames", lambda path: None)
    reference = full_decode(video)
    got = dict(read_frames(str(video), [0, 30, 31, 89]))
    assert sorted(got) == [0, 30, 31, 89]
    for i, frame in got.items():
        np.testing.assert_array_equal(frame, reference[i])


@pytest.mark.parametrize("content", [b"", b"not a video at all" * 100])
def test_a_file_that_is_not_a_video_names_itself(tmp_path, content):
    path = tmp_path / "broken.mp4"
    path.write_bytes(content)
    with pytest.raises(Undecodable, match=r"broken\.mp4.*(re-encode|give a video)"):
        list(read_frames(str(path), [0]))
    with pytest.raises(Undecodable, match=r"broken\.mp4"):
        frame_count(str(path))


def test_a_truncated_video_yields_what_it_holds_or_names_itself(tmp_path, video):
    """Half a file: either the frames that are there come out right, or one clear error."""
    path = tmp_path / "half.mp4"
    data = video.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    try:
        count = frame_count(str(path))
    except Undecodable as err:
        assert "half.mp4" in str(err)
        return
    reference = full_decode(video)
    for i, frame in read_frames(str(path), range(0, count, 5)):
        np.testing.assert_array_equal(frame, reference[i])
