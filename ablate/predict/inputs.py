"""The PATHs given to `ablate predict` -> the image and video files to score, in order.

Why checked up front: a typo'd name or a file predict cannot read should stop the command
before the model is loaded, in one line; whereas inside a folder, other files (notes,
metadata) are expected and are only counted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ablate.core.errors import AblateError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".webm", ".mkv")


@dataclass(frozen=True)
class InputFile:
    path: str
    kind: str  # image | video


@dataclass
class Inputs:
    files: list[InputFile]
    skipped: Counter = field(default_factory=Counter)  # suffix -> files left out in folders

    def skipped_note(self) -> str | None:
        """One line on the files of other types found in folders, or None."""
        if not self.skipped:
            return None
        n = sum(self.skipped.values())
        kinds = ", ".join(f"{s or '(no suffix)'} {c}" for s, c in sorted(self.skipped.items()))
        return (f"note: {n} file{'s' if n != 1 else ''} in the folders given "
                f"{'are' if n != 1 else 'is'} not an image or video and "
                f"{'were' if n != 1 else 'was'} skipped ({kinds})")


def kind_of(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    return None


def expand(paths: tuple[str, ...] | list[str]) -> Inputs:
    """Files named, and files found under folders named (recursively, sorted), each once."""
    out = Inputs([])
    seen: set[Path] = set()

    def add(path: Path, kind: str) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            out.files.append(InputFile(str(path), kind))

    for given in paths:
        path = Path(given).expanduser()
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                kind = kind_of(file)
                if kind is None:
                    out.skipped[file.suffix.lower()] += 1
                else:
                    add(file, kind)
        elif path.is_file():
            kind = kind_of(path)
            if kind is None:
                raise AblateError(
                    f"{given}: not an image ({' '.join(IMAGE_SUFFIXES)}) or video "
                    f"({' '.join(VIDEO_SUFFIXES)}); convert it or leave it out")
            add(path, kind)
        else:
            raise AblateError(f"{given}: no such file or folder")
    if not out.files:
        raise AblateError(f"no image or video found in {' '.join(paths)} (looked for "
                          f"{' '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)})")
    return out
