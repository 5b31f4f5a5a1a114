"""Scoring the files: crops of several files share a batch; a file that fails is a result
with its error, never the end of the command.

Why batches across files: a folder of photos gives one crop per file, and a batch per file
would leave an accelerator idle. Crops are queued in file order and scored in that order,
so each file's scores come back in its frames' order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from tqdm.auto import tqdm

from ablate.core.errors import AblateError, first_line
from ablate.data.faces import make_detector
from ablate.data.prepare.settings import Settings
from ablate.metrics import video_scores
from ablate.predict.frames import Box, Crop, image_crops, to_batch, video_crops
from ablate.predict.inputs import InputFile
from ablate.predict.scorer import Scorer
from ablate.predict.status import NO_FACE, OK


@dataclass(frozen=True)
class FrameScore:
    index: int  # frame index in the video (0 for an image)
    box: Box | None  # the face the crop was cut around; None without detection
    score: float  # P(fake)


@dataclass
class FileResult:
    """One input file's outcome: its scored frames, or why it has none."""

    file: str
    kind: str  # image | video
    status: str = OK  # ok | no face | error: <one line>
    sampled: int = 0  # frames sampled (those without a face included)
    frames: list[FrameScore] = field(default_factory=list)

    @property
    def score(self) -> float | None:
        """The file's P(fake): the mean of its frames', as ablate's video metrics aggregate
        (`ablate.metrics.video_scores`); None with no frame scored."""
        if not self.frames:
            return None
        scores = np.array([f.score for f in self.frames])
        _, _, means = video_scores(np.zeros(scores.size), np.zeros(scores.size), scores)
        return float(means[0])


def predict_files(
    scorer: Scorer, files: list[InputFile], frames: int | None = None, batch_size: int = 32,
    progress: bool = True,
) -> list[FileResult]:
    """Score every file; `frames` overrides the frames sampled per video (0: every frame)."""
    if batch_size < 1:
        raise AblateError(f"--batch-size must be at least 1, got {batch_size}")
    settings = scorer.preparation.settings
    if frames is not None:
        if frames < 0:
            raise AblateError(f"--frames must be >= 0 (0 = every frame), got {frames}")
        settings = replace(settings, frames=frames)
    make_detector(settings.detector)  # a missing detector fails before any file is read
    results: list[FileResult] = []
    queue: list[tuple[FileResult, Crop]] = []

    def flush() -> None:
        if queue:
            batch = to_batch([crop.pixels for _, crop in queue], scorer.image_size)
            probs = torch.sigmoid(scorer.logits(batch).float()).tolist()
            for (result, crop), p in zip(queue, probs, strict=True):
                result.frames.append(FrameScore(crop.index, crop.box, float(p)))
            queue.clear()

    for item in tqdm(files, desc="predict", unit="file", disable=None if progress else True):
        result = FileResult(item.path, item.kind)
        results.append(result)
        cut = 0
        for crop in _crops(result, settings):
            cut += 1
            queue.append((result, crop))
            if len(queue) >= batch_size:
                flush()
        if result.status != OK:  # it failed part-way: none of its frames counts
            result.frames.clear()
            queue[:] = [queued for queued in queue if queued[0] is not result]
        elif cut == 0:
            result.status = NO_FACE
    flush()
    return results


def _crops(result: FileResult, settings: Settings) -> Iterator[Crop]:
    """The file's crops; an error reading or cutting it becomes its status, so the other
    files go on (an error while scoring, the model's, is not caught here)."""
    cut_of = video_crops if result.kind == "video" else image_crops
    try:
        cut = cut_of(result.file, settings)
        result.sampled = cut.sampled
        yield from cut.crops
    except Exception as err:  # noqa: BLE001 - a bad file is reported; the others go on
        result.status = f"error: {_one_line(err)}"


def _one_line(err: Exception) -> str:
    """An error as one line: our own as written, a library's with its type."""
    text = first_line(err, default="")
    if isinstance(err, AblateError) and text:
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
