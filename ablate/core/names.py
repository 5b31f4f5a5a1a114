"""Names that several layers share: the recipe's slots, which settings only guided recipes
use, the score file of a run folder and the columns that say how a metric row was computed.

Plain constants (no Hydra, no torch), so the recipe layer, evaluation and the results side
(which reads only the database) agree on them without importing each other.
"""

from __future__ import annotations

from typing import Any

SLOTS = ("backbone", "filter", "weight", "guide", "teacher")
NO_GUIDE = "none"  # guide=none: the plain baseline (encoder + head, CE only)
# What only a guided recipe builds or uses: dropped from a baseline's identity, so
# `guide=none` gives one hash whatever these say (nothing of them is built).
GUIDANCE_ONLY = ("filter", "weight", "teacher", "loss.source", "loss.target",
                 "loss.weight_source", "loss.weight_target", "data.source_is",
                 "train.t_min", "train.t_max")


def is_guidance_key(dotted: str) -> bool:
    """A flat recipe key that means nothing for the baseline (guide.name itself does)."""
    if dotted.startswith("guide.") and dotted != "guide.name":
        return True
    return any(dotted == k or dotted.startswith(k + ".") for k in GUIDANCE_ONLY)


def is_baseline_flat(flat: dict[str, Any]) -> bool:
    """Whether a flat recipe ({"guide.name": ...}) is the plain baseline."""
    return str(flat.get("guide.name")) == NO_GUIDE


def without_guidance(flat: dict[str, Any]) -> dict[str, Any]:
    """The flat recipe as the baseline of the same setup would have it."""
    out = {k: v for k, v in flat.items() if not is_guidance_key(k)}
    out["guide.name"] = NO_GUIDE
    return out


SCORES = "scores.csv"  # in every evaluated run folder: one row per scored test frame

# How a metric row was computed (evaluation writes them, the database stores them): the
# frame -> video aggregation, the threshold and where it came from, the bootstrap's resamples,
# seed and unit, and the EER convention.
METRIC_HOW = ("aggregation", "threshold", "threshold_from", "n_boot", "boot_seed", "boot_unit",
              "eer_convention")
# ... plus the scored rows' hash (ablate.provenance.manifest_sha); NULL in the DB = unknown
METRIC_PROVENANCE = (*METRIC_HOW, "manifest_sha", "protocol")
# "protocol" (v5): the test set's protocol line as JSON (ablate/data/protocol.py): frames per
# video, videos real / fake, compression, crop preset, official list, level, display name

# A teacher folder ablate wrote (results/teachers/...): the files beside the weights that say
# what a fit or an adapt used (not weights: a teacher's fingerprint leaves them out), and the
# LoRA adapter's weights file (diffusers' name).
FITTED_META = "ablate_teacher.json"  # next to a fitted twin's unet/ vae/ ...: what it was fit on
ADAPTER_META = "ablate_adapter.json"  # next to the adapter weights: its base teacher
ADAPTER_WEIGHTS = "pytorch_lora_weights.safetensors"

FINGERPRINT_HEX = 16  # hex digits of a content fingerprint (data, teacher, scored rows)

# A teacher's single weights file: safetensors, or a pickle read as tensors only
# (torch.load(weights_only=True); docs/teachers.md, "Where a teacher's weights come from").
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
WEIGHT_FILE_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
WEIGHT_FILES = ".safetensors or .ckpt/.pt/.pth/.bin"  # as messages name them

RUN_INFO = "run.json"  # in a run folder: steps, timings, device, speed, selection
