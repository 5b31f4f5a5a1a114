"""`ablate bench --decode`: what sampling frames of a video costs, before and after seeking.

Before: OpenCV reads every frame in order up to the last sampled one (what
`ablate data prepare` did until seek-based reading). After: ablate.data.decode
seeks to the keyframe before each sampled frame. Both return the sampled frames
as arrays; only the reading is timed, not face detection.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from ablate.data.decode import frame_count, index_frames, read_frames


@dataclass
class DecodeBench:
    video: str
    width: int
    height: int
    frames: int
    keyframe_interval: float  # mean frames between keyframes
    sampled: int
    sequential_s: float
    seek_s: float

    @property
    def sequential_fps(self) -> float:
        return self.sampled / self.sequential_s

    @property
    def seek_fps(self) -> float:
        return self.sampled / self.seek_s

    def as_dict(self) -> dict:
        return {**asdict(self), "sequential_fps": self.sequential_fps, "seek_fps": self.seek_fps,
                "speedup": self.sequential_s / self.seek_s}


def make_clip(path: Path, seconds: float = 60, fps: int = 30, size: tuple[int, int] = (1920, 1080),
              gop: int = 250) -> Path:
    """A synthetic H.264 clip (moving gradient + square), a keyframe every `gop` frames.

    250 is x264's default keyframe interval, which FaceForensics++'s c23/c40 videos were
    encoded with; B-frames and CABAC as x264's defaults (preset veryfast to encode quickly).
    """
    import av

    width, height = size
    yy, xx = np.mgrid[0:height, 0:width]
    base = ((xx + yy) // 8 % 256).astype(np.uint8)  # (H, W)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0",
                          "preset": "veryfast", "crf": "23"}
        for i in range(int(seconds * fps)):
            img = np.stack([np.roll(base, 4 * i, axis=1), base, np.roll(base, -2 * i, axis=0)], -1)
            x = (i * 7) % (width - 200)
            img[400:600, x:x + 200] = (240, 200, 180)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def sequential_read(video: str, wanted: list[int]) -> list[np.ndarray]:
    """OpenCV grab/retrieve in order up to the last wanted frame (the old way)."""
    todo, frames = set(wanted), []
    cap = cv2.VideoCapture(video)
    index = 0
    try:
        while index <= wanted[-1] and cap.grab():
            if index in todo:
                frames.append(cap.retrieve()[1])
            index += 1
    finally:
        cap.release()
    return frames


def bench_decode(video: str, sampled: int = 32, repeats: int = 3) -> DecodeBench:
    """Median seconds to read `sampled` evenly spaced frames, both ways."""
    # lazy: loads skimage only when called
    from ablate.data.prepare import sample_indices

    count = frame_count(video)
    wanted = sample_indices(count, sampled)
    index = index_frames(video)
    keyframes = len(index.keyframes) if index else 1
    cap = cv2.VideoCapture(video)
    width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    cap.release()

    def timed(read) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            got = read()
            times.append(time.perf_counter() - start)
            if len(got) != len(wanted):
                raise RuntimeError(f"read {len(got)} of {len(wanted)} frames of {video}")
        return float(np.median(times))

    return DecodeBench(
        video=video, width=width, height=height, frames=count,
        keyframe_interval=count / max(keyframes, 1), sampled=len(wanted),
        sequential_s=timed(lambda: sequential_read(video, wanted)),
        seek_s=timed(lambda: list(read_frames(video, wanted))),
    )


def format_decode(found: DecodeBench) -> str:
    return "\n".join([
        f"video {found.video}: {found.width}x{found.height}, {found.frames} frames, a keyframe "
        f"every {found.keyframe_interval:.0f} frames; {found.sampled} frames sampled",
        f"  sequential (OpenCV, to the last sampled frame): {found.sequential_s:.2f}s  "
        f"{found.sequential_fps:.1f} sampled frames/s",
        f"  seeking (ablate.data.decode):                   {found.seek_s:.2f}s  "
        f"{found.seek_fps:.1f} sampled frames/s  ({found.sequential_s / found.seek_s:.1f}x)",
    ])
