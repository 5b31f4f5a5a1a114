"""Comparing stored test protocols: torch- and framework-free, so the report can say which
columns were measured alike without loading the data layer (which builds them:
`ablate.data.protocol`, whose module doc describes the dict).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

PROTOCOL_VERSION = 1
# published protocols that fix the frame counts of training and test data alike, and why
FIXED_PRESETS = {
    "deepfakebench": "DeepfakeBench comparisons fix 32 frames per video in every split",
    "paper": "DiffusionFake's Table 1 fixes 270 train / 100 test frames per video",
    "official_code": "DiffusionFake's released code samples 50 per real / 16 per fake video",
}
# keys that say what a number was measured on; display_name and level are how it is shown
COMPARED = ("adapter", "preset", "frames_per_video", "frames", "videos_real", "videos_fake",
            "compression", "crop", "official_list")


def parse(text: Any) -> dict[str, Any] | None:
    """A stored protocol (JSON text, a dict, or NULL) as a dict; None when unknown."""
    if isinstance(text, Mapping):
        return dict(text)
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def measured_on(protocol: Mapping[str, Any] | None) -> str | None:
    """The COMPARED part of a protocol as canonical text: equal text, same protocol."""
    if protocol is None:
        return None
    return json.dumps({k: protocol.get(k) for k in COMPARED}, sort_keys=True, default=str)


def mixed_presets(train: str | None, tests: Mapping[str, str | None]) -> str | None:
    """Why a training preset and its test presets may not be compared under a published
    protocol (None when they may): where any of them is a FIXED_PRESETS preset, all must be
    that preset and known."""
    every = {"training": train, **{f"test {k}": v for k, v in tests.items()}}
    fixed = [p for p in every.values() if p in FIXED_PRESETS]
    if not fixed or all(p == fixed[0] for p in every.values()):
        return None
    odd = [f"{who} {p or 'unknown'}" for who, p in every.items() if p != fixed[0]]
    return (f"preset {fixed[0]} ({FIXED_PRESETS[fixed[0]]}) mixed with " + ", ".join(odd))
