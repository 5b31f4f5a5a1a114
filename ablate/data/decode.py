"""Reading chosen frames of a video by seeking, not by decoding it to the end.

Sampling 32 frames of a 10-minute clip used to decode every frame up to the last
one asked for. Here the container is first demuxed (packets only, no decoding)
to learn every frame's presentation time and where the keyframes are; each
wanted frame is then reached by seeking to the keyframe at or before it and
decoding forward, or by decoding on from where the decoder already is when that
is shorter. Frame `i` means the i-th frame in presentation order, exactly what a
full sequential decode yields as its i-th frame, so the result is the same
frames as decoding everything (tests/test_decode.py checks it), at a cost of
about one keyframe interval per wanted frame instead of the whole video.

Streams whose packets carry no timestamps (some old AVI files) cannot be
addressed by time; they are decoded sequentially, which is exact and slow.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ablate.core.errors import AblateError

try:  # PyAV: FFmpeg bindings (a dependency; the import error says how to install it)
    import av
except ImportError:  # pragma: no cover - a broken install
    av = None


class Undecodable(AblateError):
    """A video FFmpeg cannot open or decode."""


@dataclass(frozen=True)
class FrameIndex:
    """Where each frame of a video's first video stream sits, from demuxing alone."""

    pts: list[int]        # presentation time of frame i (stream time base), ascending
    keyframes: list[int]  # frame indices that are keyframes, ascending (0 first if decodable)

    def keyframe_before(self, index: int) -> int:
        """The last keyframe at or before frame `index` (0 when none precedes it)."""
        k = bisect.bisect_right(self.keyframes, index) - 1
        return self.keyframes[k] if k >= 0 else 0


def _require_av() -> None:
    if av is None:
        raise AblateError("reading videos needs PyAV: pip install av")


def _undecodable(path: str, err: Exception) -> Undecodable:
    reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
    return Undecodable(f"cannot decode video {path}: {reason}; check the file plays (e.g. with "
                       "ffprobe), re-encode or remove it, then rerun")


def _open(path: str):
    _require_av()
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise _undecodable(path, err) from err
    if not container.streams.video:
        container.close()
        raise Undecodable(f"{path} has no video stream; give a video file")
    return container


def index_frames(path: str) -> FrameIndex | None:
    """Demux `path` once: every frame's pts and the keyframes; None if any packet lacks a pts."""
    container = _open(path)
    try:
        stream = container.streams.video[0]
        found: list[tuple[int, bool]] = []
        for packet in container.demux(stream):
            if packet.size == 0:  # the flush packet at the end
                continue
            if packet.pts is None:
                return None
            found.append((packet.pts, packet.is_keyframe))
    except av.FFmpegError as err:
        raise _undecodable(path, err) from err
    finally:
        container.close()
    found.sort()
    pts = [p for p, _ in found]
    if not pts:
        raise Undecodable(f"{path} holds no video frames; give a video file")
    if len(set(pts)) != len(pts):
        return None  # duplicate timestamps: frames cannot be told apart by time
    keyframes = [i for i, (_, key) in enumerate(found) if key]
    return FrameIndex(pts, keyframes)


def frame_count(path: str) -> int:
    """Frames in the video, counted from its packets (headers may be wrong; this is not)."""
    index = index_frames(path)
    if index is not None:
        return len(index.pts)  # never 0: index_frames refuses a file without frames
    count = sum(1 for _ in _decode_all(path))
    if count == 0:
        raise Undecodable(f"{path} holds no video frames; give a video file")
    return count


def read_frames(path: str, indices: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (i, RGB uint8 (H, W, 3)) for each wanted frame index, ascending, each once.

    Indices past the last frame are ignored (the caller compares what it got with
    what it asked). Raises Undecodable naming the file if FFmpeg fails on it.
    """
    wanted = sorted(set(int(i) for i in indices if i >= 0))
    if not wanted:
        return
    index = index_frames(path)
    if index is None:
        yield from _sequential(path, wanted)
        return
    wanted = [i for i in wanted if i < len(index.pts)]
    yield from _seeking(path, index, wanted)


def _seeking(path: str, index: FrameIndex, wanted: list[int]) -> Iterator[tuple[int, np.ndarray]]:
    container = _open(path)
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    frame_of = {pts: i for i, pts in enumerate(index.pts)}
    position = -1  # index of the last frame the decoder returned; -1: must seek
    frames = None
    try:
        for target in wanted:
            keyframe = index.keyframe_before(target)
            if frames is None or position < keyframe - 1 or position >= target:
                # seeking is no longer than decoding on (or the only way back)
                container.seek(index.pts[keyframe], stream=stream, backward=True)
                frames = container.decode(stream)
                position = -1
            for frame in frames:
                i = frame_of.get(frame.pts) if frame.pts is not None else None
                if i is None:
                    continue
                position = i
                if i == target:
                    yield i, frame.to_ndarray(format="rgb24")
                    break
                if i > target:  # the decoder skipped it (damaged stream): say so
                    raise Undecodable(f"cannot decode frame {target} of {path}: the decoder "
                                      "returned later frames; re-encode the video and rerun")
            else:
                raise Undecodable(f"cannot decode frame {target} of {path}: the stream ended "
                                  "early; re-encode the video and rerun")
    except av.FFmpegError as err:
        raise _undecodable(path, err) from err
    finally:
        container.close()


def _decode_all(path: str) -> Iterator[np.ndarray | None]:
    """Every frame in order; yields None for frames not converted (counting only)."""
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        yield from (None for _ in container.decode(stream))
    except av.FFmpegError as err:
        raise _undecodable(path, err) from err
    finally:
        container.close()


def _sequential(path: str, wanted: list[int]) -> Iterator[tuple[int, np.ndarray]]:
    """Decode from the start up to the last wanted frame (streams without timestamps)."""
    todo = set(wanted)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if i in todo:
                yield i, frame.to_ndarray(format="rgb24")
            if i >= wanted[-1]:
                break
    except av.FFmpegError as err:
        raise _undecodable(path, err) from err
    finally:
        container.close()
