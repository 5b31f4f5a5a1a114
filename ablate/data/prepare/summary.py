"""What happened to each video and to the run: counts, skipped videos, the report file.

Nothing is dropped silently: frames without a face are counted; videos without
any face, that cannot be decoded, or whose original is missing are listed in the
summary and in OUT/prepare_report.json; once more than `max_skip_fraction` of all
videos are skipped the run stops with an AblateError (finished videos are kept).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ablate.core.errors import AblateError
from ablate.data.prepare.files import write_atomic

REPORT = "prepare_report.json"
SHOWN = 10  # names shown per kind in messages; the report file lists all


@dataclass
class VideoResult:
    """What happened to one video."""

    name: str
    status: str  # prepared | already_done | no_face | unreadable | no_original
    frames_written: int = 0
    frames_no_face: int = 0
    reason: str = ""
    was_done: bool = False  # no_face read from an earlier run's marker


@dataclass
class PrepareSummary:
    """Counts over a run, with every skipped video named."""

    videos: int = 0
    prepared: int = 0
    already_done: int = 0
    frames_written: int = 0
    frames_no_face: int = 0
    no_face: list[str] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)
    no_original: dict[str, str] = field(default_factory=dict)
    matched: int = 0  # fakes cut with their original's faces
    stopped_early: bool = False
    out: str = ""
    shard: str = ""  # "I/N" when one node of N prepared its share

    @property
    def skipped(self) -> int:
        return len(self.no_face) + len(self.unreadable) + len(self.no_original)

    def add(self, result: VideoResult) -> None:
        if result.status == "unreadable":
            self.unreadable[result.name] = result.reason
            return
        if result.status == "no_original":
            self.no_original[result.name] = result.reason
            return
        if result.was_done or result.status == "already_done":
            self.already_done += 1
        else:
            self.prepared += 1
        if result.status == "no_face":
            self.no_face.append(result.name)
        self.frames_written += result.frames_written
        self.frames_no_face += result.frames_no_face

    def format(self) -> list[str]:
        """Summary lines for the terminal."""
        lines = [
            f"videos: {self.videos} found{f' (shard {self.shard})' if self.shard else ''}, "
            f"{self.prepared} processed now, "
            f"{self.already_done} already done, {len(self.no_face)} without a face, "
            f"{len(self.unreadable)} unreadable"
            + (f", {len(self.no_original)} without their original" if self.no_original else ""),
            f"frames: {self.frames_written} face crops written, "
            f"{self.frames_no_face} sampled frames without a face (skipped)",
        ]
        if self.matched:
            lines.append(f"matching crops: {self.matched} FF++ fakes cut with their target "
                         "original's faces")
        if self.no_face:
            lines.append(f"no face in any sampled frame: {_examples(self.no_face)}")
        if self.unreadable:
            items = [f"{k} ({v})" for k, v in self.unreadable.items()]
            lines.append(f"unreadable: {_examples(items)}")
        if self.no_original:
            items = [f"{k} ({v})" for k, v in self.no_original.items()]
            lines.append(f"original not prepared: {_examples(items)}")
        lines.append(f"report: {self.report}")
        return lines

    @property
    def report(self) -> Path:
        """The report file; one per node when sharded, since the nodes share `out`."""
        if not self.shard:
            return Path(self.out) / REPORT
        index, count = self.shard.split("/")
        return Path(self.out) / REPORT.replace(".json", f"-{index}of{count}.json")


def _examples(items: list[str]) -> str:
    more = f", ... {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return ", ".join(items[:SHOWN]) + more


def too_many_skipped(summary: PrepareSummary, fraction: float) -> AblateError:
    where = "stopped early: " if summary.stopped_early else ""
    items = summary.no_face[:3] + [
        f"{k} ({v})" for k, v in [*summary.unreadable.items(), *summary.no_original.items()][:3]
    ]
    extra = f", {len(summary.no_original)} without their original" if summary.no_original else ""
    return AblateError(
        f"{where}{summary.skipped} of {summary.videos} videos skipped "
        f"({len(summary.no_face)} without a face, {len(summary.unreadable)} unreadable{extra}), "
        f"more than --max-skip-fraction {fraction:g}; e.g. {', '.join(items)}; "
        f"all listed in {Path(summary.out) / REPORT}. Check those videos, try --detector none "
        "for videos that are already face crops, or raise --max-skip-fraction; "
        "finished videos are kept and a rerun resumes"
    )


def write_report(summary: PrepareSummary) -> None:
    """Full lists of what was skipped, next to the crops (the terminal shows a few)."""
    path = summary.report
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(asdict(summary), indent=1).encode())
