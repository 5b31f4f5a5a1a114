"""The slots of a recipe and which settings only guided recipes use.

Plain constants (no Hydra, no torch), so the recipe layer and the report (which
reads only the database) agree on them without importing each other.
"""

from __future__ import annotations

from typing import Any

SLOTS = ("backbone", "filter", "weight", "guide", "teacher")
NO_GUIDE = "none"  # guide=none: the plain baseline (encoder + head, CE only)
# What only a guided recipe builds or uses: dropped from a baseline's identity, so
# `guide=none` gives one hash whatever these say (nothing of them is built).
GUIDANCE_ONLY = ("filter", "weight", "teacher", "loss.source", "loss.target",
                 "loss.weight_source", "loss.weight_target", "data.source_is")


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
