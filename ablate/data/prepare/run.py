"""The entry point: plan the jobs, skip what is done, run the videos, report."""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import cv2
from tqdm import tqdm

from ablate.data.faces import make_detector
from ablate.data.prepare.jobs import Job, plan_jobs, shard_jobs
from ablate.data.prepare.resume import check_originals, finished_jobs
from ablate.data.prepare.settings import Settings, check_args, resolve_settings
from ablate.data.prepare.summary import (
    PrepareSummary,
    VideoResult,
    too_many_skipped,
    write_report,
)
from ablate.data.prepare.video import prepare_video


def prepare(
    videos: str,
    out: str,
    frames: int | None = None,
    size: int | None = None,
    scale: float | None = None,
    align: str | None = None,
    detector: str | None = None,
    min_face_score: float | None = None,
    smooth: int | None = None,
    match_crops: bool | None = None,
    preset: str | None = None,
    max_skip_fraction: float = 0.05,
    workers: int = 1,
    frames_dir: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    shard: tuple[int, int] | None = None,
) -> PrepareSummary:
    """Extract face crops of every video under `videos` (folder, file or glob) into `out`.

    Settings left None come from `preset` (see PRESETS), else from Settings' defaults.
    `shard` (I, N): only node I of N's share of the videos (`shard_jobs`), so N nodes can
    prepare one dataset into one shared `out`, each writing its own report.
    """
    settings = resolve_settings(
        preset, frames=frames, size=size, scale=scale, align=align, detector=detector,
        min_face_score=min_face_score, smooth=smooth, match_crops=match_crops,
    )
    check_args(settings, max_skip_fraction, workers)
    make_detector(settings.detector)  # fail before any work if the backend is missing
    jobs = plan_jobs(videos, Path(out).expanduser(), frames_dir, settings)
    if shard is not None:
        jobs = shard_jobs(jobs, *shard)
    done = {} if overwrite else finished_jobs(jobs, settings)
    check_originals(jobs, done, settings)
    summary = PrepareSummary(videos=len(jobs), out=str(Path(out).expanduser()),
                             shard="" if shard is None else f"{shard[0]}/{shard[1]}")
    summary.matched = sum(1 for j in jobs if j.original is not None)
    allowed = max_skip_fraction * len(jobs)
    # originals (and everything else) first, then the fakes that read their faces
    phases = [[j for j in jobs if j.out not in done and j.original is None],
              [j for j in jobs if j.out not in done and j.original is not None]]
    with tqdm(total=len(jobs), unit="video", desc="prepare", disable=not progress) as bar:
        for job in jobs:
            if job.out in done:
                summary.add(done[job.out])
                bar.update()
        todo = sum(len(p) for p in phases)
        n = 0
        for phase in phases:
            if summary.skipped > allowed:
                break
            for result in _run(phase, settings, workers, preset):
                n += 1
                summary.add(result)
                bar.update()
                bar.set_postfix(skipped=summary.skipped)
                if summary.skipped > allowed:
                    summary.stopped_early = n < todo
                    break
    write_report(summary)
    if summary.skipped > allowed:
        raise too_many_skipped(summary, max_skip_fraction)
    return summary


def _run(
    jobs: list[Job], settings: Settings, workers: int, preset: str | None = None
) -> Iterator[VideoResult]:
    """Results as videos finish; with workers > 1, in worker processes (spawned).

    Closing the iterator early cancels the videos not yet started.
    """
    if workers == 1 or len(jobs) <= 1:
        for job in jobs:  # one thread, as in a worker: the face detector's float sums (and
            with one_thread():  # so its boxes) then match whatever --workers is
                result = prepare_video(job, settings, preset)
            yield result
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init) as pool:
        pending = [pool.submit(prepare_video, job, settings, preset) for job in jobs]
        try:
            for future in as_completed(pending):
                yield future.result()
        finally:
            for future in pending:
                future.cancel()


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch and OpenCV on one thread for the block, then as they were."""
    import torch  # here, not on top: importing the package (e.g. sample_indices) stays torch-free

    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv_threads)


def _worker_init() -> None:
    """One video per process; threads would only contend."""
    cv2.setNumThreads(1)
    import torch  # here, not on top: see one_thread

    torch.set_num_threads(1)
