"""Videos -> evenly spaced frames -> square face crops, the input every adapter reads.

One module per job (each one's docstring says why it is shaped so):
    run       prepare(): plan the jobs, skip what is done, run the videos, report
    settings  what a crop depends on, the named presets, checking them
    jobs      finding the videos; output folders mirror the input tree
    video     one video: sample frames, find faces (or an FF++ fake's original's), crop
    files     crops and per-video markers, written atomically; reading markers back
    resume    which videos an earlier run finished; whether matched fakes can run
    summary   counts and skipped videos, the report file, stopping on too many skips
"""

from ablate.data.prepare.files import MARKER, read_marker
from ablate.data.prepare.jobs import (
    VIDEO_EXTENSIONS,
    VIDEOS_DIR,
    Job,
    ffpp_original,
    find_videos,
    plan_jobs,
)
from ablate.data.prepare.run import prepare
from ablate.data.prepare.settings import PRESETS, Settings, resolve_settings
from ablate.data.prepare.summary import (
    REPORT,
    SHOWN,
    PrepareSummary,
    VideoResult,
    write_report,
)
from ablate.data.prepare.video import (
    CACHE_BYTES,
    find_faces,
    prepare_video,
    read_frames,
    sample_indices,
    write_crops,
)

__all__ = [
    "CACHE_BYTES",
    "MARKER",
    "PRESETS",
    "REPORT",
    "SHOWN",
    "VIDEOS_DIR",
    "VIDEO_EXTENSIONS",
    "Job",
    "PrepareSummary",
    "Settings",
    "VideoResult",
    "ffpp_original",
    "find_faces",
    "find_videos",
    "plan_jobs",
    "prepare",
    "prepare_video",
    "read_frames",
    "read_marker",
    "resolve_settings",
    "sample_indices",
    "write_crops",
    "write_report",
]
