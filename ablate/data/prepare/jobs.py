"""Finding the videos, and the folder each one's crops go to.

Output mirrors the input tree: VIDEOS/a/b/xyz.mp4 -> OUT/a/b/xyz/0042.png, the
file name being the frame's index in the video. Adapters pair a fake's frame with
its originals' frame by that index, so FF++ fakes and originals sampled with the
same --frames line up. `frames_dir` renames a `videos` folder in the relative path
(FF++/DFD: .../c23/videos/000.mp4 -> .../c23/frames/000/).
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ablate.core.errors import AblateError
from ablate.data.prepare.settings import Settings

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"}
)
VIDEOS_DIR = "videos"  # the folder name `frames_dir` replaces
_FFPP_FAKE = re.compile(r"^(\d+)_(\d+)$")  # FF++ fake A_B: target A's video, B's face


@dataclass(frozen=True)
class Job:
    """One video and the folder its crops go to."""

    video: str
    out: str
    name: str  # path relative to the videos root, for messages
    original: str | None = None  # FF++ fake: its target original's crop folder


def plan_jobs(
    videos: str, out: Path, frames_dir: str | None = None, settings: Settings | None = None
) -> list[Job]:
    """One job per video file, its output folder mirroring its path below the videos root.

    With `settings.match_crops` (and a detector), an FF++ fake's job names the crop
    folder of its target original (see `ffpp_original`).
    """
    base, files = find_videos(videos)
    match = settings is not None and settings.match_crops and settings.detector != "none"
    jobs, seen = [], {}
    for path in files:
        rel = path.relative_to(base)
        parts = list(rel.parent.parts)
        if frames_dir is not None:
            if VIDEOS_DIR not in parts:
                raise AblateError(
                    f"--frames-dir {frames_dir} renames a '{VIDEOS_DIR}' folder, but {rel} has "
                    f"none below {base}; drop --frames-dir or point --videos higher up"
                )
            parts = [frames_dir if p == VIDEOS_DIR else p for p in parts]
        target = out.joinpath(*parts, rel.stem)
        key = str(target)
        if key in seen:
            raise AblateError(
                f"{seen[key]} and {rel} would both write to {target}; "
                "rename one (videos in a folder need distinct names without the extension)"
            )
        seen[key] = rel.as_posix()
        original = ffpp_original(target) if match else None
        if match and original is None and ffpp_original(path.parent / path.stem) is not None:
            raise AblateError(
                f"{path} is an FF++ fake, but --videos starts below its "
                "manipulated_sequences folder, so the crops do not mirror FF++ and it cannot "
                "find its target original's crops; give a glob from the dataset root (e.g. "
                "'ROOT/*_sequences/*/c23/videos/*.mp4') or pass --no-match-crops"
            )
        jobs.append(Job(str(path), key, rel.as_posix(), None if original is None else str(original)))
    return jobs


def parse_shard(text: str) -> tuple[int, int]:
    """`--shard I/N` -> (I, N): this node's share, I counted from 0."""
    index, sep, count = text.partition("/")
    if not (sep and index.strip().isdigit() and count.strip().isdigit()
            and 0 <= int(index) < int(count)):
        raise AblateError(f"--shard {text}: give I/N with 0 <= I < N (node I of N, counted "
                          "from 0), e.g. --shard 0/4 on the first of four nodes")
    return int(index), int(count)


def shard_jobs(jobs: list[Job], index: int, count: int) -> list[Job]:
    """Node `index` of `count`'s jobs, the same on every node: groups in sorted order dealt
    round-robin, a group being an original with the FF++ fakes cut with its faces (a fake
    waits for its original's crops, so both run on one node; other videos are alone)."""
    groups = sorted({job.original or job.out for job in jobs})
    mine = set(groups[index::count])
    return [job for job in jobs if (job.original or job.out) in mine]


def ffpp_original(folder: Path) -> Path | None:
    """FF++ fake crops .../manipulated_sequences/<M>/<comp>/<dir>/A_B -> .../original_sequences/
    youtube/<comp>/<dir>/A (target A's video, into which B's face was put); else None."""
    parts = folder.parts
    if len(parts) < 5 or parts[-5] != "manipulated_sequences":
        return None
    found = _FFPP_FAKE.match(parts[-1])
    if found is None:
        return None
    comp, where = parts[-3], parts[-2]  # compression level, frames folder
    return Path(*parts[:-5], "original_sequences", "youtube", comp, where, found.group(1))


def find_videos(spec: str) -> tuple[Path, list[Path]]:
    """(root that relative paths start from, sorted video files) for a folder, file or glob."""
    spec = os.path.expanduser(spec)
    if glob.has_magic(spec):
        base = _glob_base(spec)
        files = [Path(p) for p in glob.glob(spec, recursive=True)]
    elif os.path.isdir(spec):
        base = Path(spec)
        files = [Path(d, f) for d, _, names in os.walk(spec) for f in names]
    elif os.path.isfile(spec):
        base, files = Path(spec).parent, [Path(spec)]
    else:
        raise AblateError(f"--videos {spec}: no such folder or file (a glob needs * ? or [)")
    files = sorted(p for p in files if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    if not files:
        kinds = ", ".join(sorted(VIDEO_EXTENSIONS))
        raise AblateError(f"--videos {spec}: no video files found (looked for {kinds})")
    return base, files


def _glob_base(pattern: str) -> Path:
    """The folders of a glob before its first wildcard: where relative paths start."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")
