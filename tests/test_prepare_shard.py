"""`ablate data prepare --shard I/N`: N nodes prepare one dataset into one shared folder, each
its own share, the same share whichever node computes it; an FF++ fake runs on the node of
the original whose faces it is cut with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ablate.core.errors import AblateError
from ablate.data import prepare as prep
from ablate.data.prepare.jobs import parse_shard, plan_jobs, shard_jobs
from ablate.data.prepare.settings import resolve_settings
from tests.test_prepare import _face_frames, _moving_face_frames, _noise_frames, _write_video

ORIGINALS = [f"{i:03d}" for i in range(7)]
FAKES = ["000_003", "003_000", "001_002", "002_001", "004_005"]


def _tree(root: Path) -> Path:
    """FF++ names as empty files: planning reads names only."""
    videos = [f"original_sequences/youtube/c23/videos/{v}.mp4" for v in ORIGINALS]
    videos += [f"manipulated_sequences/{m}/c23/videos/{v}.mp4"
               for m in ("Deepfakes", "FaceSwap") for v in FAKES]
    for rel in videos:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).touch()
    return root


@pytest.mark.parametrize("count", [1, 2, 3, 20])
def test_shards_split_every_video_once_with_fakes_beside_their_originals(tmp_path, count):
    root = _tree(tmp_path / "ffpp")
    jobs = plan_jobs(f"{root}/*_sequences/*/c23/videos/*.mp4", tmp_path / "out", "frames",
                     resolve_settings(None, detector="lbp", align="none"))
    assert len(jobs) == 7 + 2 * 5 and sum(j.original is not None for j in jobs) == 10
    shards = [shard_jobs(jobs, i, count) for i in range(count)]
    assert sorted(j.out for s in shards for j in s) == sorted(j.out for j in jobs)  # once each
    where = {j.out: i for i, s in enumerate(shards) for j in s}
    for job in jobs:
        if job.original is not None:
            assert where[job.out] == where[job.original]  # 000_003 runs where 000 does
    # 7 groups (an original and the fakes cut with its faces) dealt in sorted order
    groups = [len({j.original or j.out for j in s}) for s in shards]
    assert max(groups) - min(groups) <= 1 and sum(groups) == 7
    assert [shard_jobs(list(reversed(jobs)), i, count) for i in range(count)] == [
        list(reversed(s)) for s in shards]  # the share depends on the names, not the order


@pytest.mark.parametrize("text", ["2/2", "1", "a/2", "-1/2", "0/0", "1/2/3"])
def test_a_bad_shard_is_one_line(text):
    with pytest.raises(AblateError, match=r"--shard .*0 <= I < N") as err:
        parse_shard(text)
    assert "\n" not in str(err.value)


def test_sharded_nodes_write_what_one_node_writes(tmp_path):
    root = tmp_path / "ffpp"
    base = _moving_face_frames()
    for rel, frames in {
        "original_sequences/youtube/c23/videos/000.avi": base,
        "original_sequences/youtube/c23/videos/003.avi": _face_frames()[:8],
        "manipulated_sequences/Deepfakes/c23/videos/000_003.avi": [f[..., ::-1] for f in base],
        "manipulated_sequences/Deepfakes/c23/videos/003_000.avi": _noise_frames(180)[:8],
    }.items():
        _write_video(root / rel, [np.ascontiguousarray(f) for f in frames])
    glob = f"{root}/*_sequences/*/c23/videos/*.avi"
    settings = {"frames": 0, "size": 32, "detector": "lbp", "align": "none",
                "frames_dir": "frames", "max_skip_fraction": 1.0, "progress": False}
    whole = prep.prepare(glob, str(tmp_path / "one"), **settings)
    assert whole.videos == 4 and whole.matched == 2
    parts = [prep.prepare(glob, str(tmp_path / "many"), shard=(i, 2), **settings)
             for i in range(2)]
    assert [p.videos for p in parts] == [2, 2] and sum(p.matched for p in parts) == 2

    def files(out: Path) -> dict[str, bytes]:
        return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.png"))}

    assert files(tmp_path / "many") == files(tmp_path / "one") != {}
    assert (tmp_path / "many" / "prepare_report-0of2.json").is_file()
    assert (tmp_path / "many" / "prepare_report-1of2.json").is_file()
    assert "(shard 1/2)" in parts[1].format()[0]
