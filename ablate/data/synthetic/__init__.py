"""The embedded benchmark: a small face-swap dataset rendered locally, no download.

Why: CPU default runs and tests need data with the structure of FaceForensics++
(real videos, fakes made by putting a *source* identity's face into a *target*
video frame, source/target images for guided training, manipulation families
that differ) so "train on one family, test on the others" is a real
cross-dataset question. See docs/embedded_benchmark.md for the full recipe.

Outline, one module per job:
    faces          identities: procedural parametric faces, drawn one frame at a time
    photo          optionally one identity cut from `skimage.data.astronaut()`
    scene          real video: one scene, per-frame motion and expression, the camera
    manipulations  fake video: a source identity's face aligned and blended into
                   a target frame, one method per family
    benchmark      datasets: one per family with its own identities, split by
                   identity; seeding, PNGs and the manifest
    cache          where the benchmark is cached and when it is (re)built
"""

from ablate.data.manifest import COLUMNS
from ablate.data.synthetic.benchmark import (
    DATASETS,
    DEFAULT_METHODS,
    DEFAULTS,
    MANIFEST,
    MARKER,
    SPLITS,
    VERSION,
    BenchmarkParams,
    Identity,
    Video,
    build_benchmark,
    dataset_name,
    render_video,
    split_identities,
)
from ablate.data.synthetic.cache import cache_root, ensure_benchmark, is_complete
from ablate.data.synthetic.faces import Face, render_face, sample_face
from ablate.data.synthetic.manipulations import METHODS, manipulate, sample_fake_params
from ablate.data.synthetic.photo import PHOTO, photo_available, render_photo
from ablate.data.synthetic.scene import (
    Landmarks,
    Scene,
    State,
    camera,
    sample_scene,
    sample_states,
)

__all__ = [
    "COLUMNS",
    "DATASETS",
    "DEFAULTS",
    "DEFAULT_METHODS",
    "MANIFEST",
    "MARKER",
    "METHODS",
    "PHOTO",
    "SPLITS",
    "VERSION",
    "BenchmarkParams",
    "Face",
    "Identity",
    "Landmarks",
    "Scene",
    "State",
    "Video",
    "build_benchmark",
    "cache_root",
    "camera",
    "dataset_name",
    "ensure_benchmark",
    "is_complete",
    "manipulate",
    "photo_available",
    "render_face",
    "render_photo",
    "render_video",
    "sample_face",
    "sample_fake_params",
    "sample_scene",
    "sample_states",
    "split_identities",
]
