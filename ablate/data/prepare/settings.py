"""What a crop depends on: the settings, their named presets, and checking them."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from ablate.core.errors import AblateError
from ablate.data.crops import ALIGNS
from ablate.data.faces import DETECTORS, WITH_LANDMARKS


@dataclass(frozen=True)
class Settings:
    """What a crop depends on; stored in each marker so a rerun can tell if it is stale.

    The defaults are DeepfakeBench's convention (aligned, scale 1.3, 256 px, 32 frames).
    """

    frames: int = 32  # 0 = every frame
    size: int = 256
    scale: float = 1.3  # crop side = scale x face size (template span or box side)
    align: str = "similarity"  # similarity | none
    detector: str = "mtcnn"
    min_face_score: float = 0.9  # a detection below this is a miss
    smooth: int = 3  # centred moving-average window over sampled frames; 1 = off
    match_crops: bool = True  # FF++ fakes cut with their target original's faces


# Named conventions; explicit settings override them. See docs/data.md.
PRESETS: dict[str, dict[str, Any]] = {
    "deepfakebench": {"frames": 32, "size": 256, "scale": 1.3, "align": "similarity",
                      "detector": "mtcnn"},
    "diffusionfake": {"frames": 270, "size": 256, "scale": 1.3, "align": "none",
                      "detector": "mtcnn"},
}


def resolve_settings(preset: str | None = None, **given: Any) -> Settings:
    """Defaults, then the preset's values, then every setting given (not None)."""
    names = {f.name for f in fields(Settings)}
    unknown = sorted(set(given) - names)
    if unknown:
        raise AblateError(f"unknown prepare setting(s) {', '.join(unknown)}; known: "
                          f"{', '.join(sorted(names))}")
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise AblateError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        values.update(PRESETS[preset])
    values.update({k: v for k, v in given.items() if v is not None})
    return replace(Settings(), **values)


def check_args(settings: Settings, max_skip_fraction: float, workers: int) -> None:
    if settings.frames < 0:
        raise AblateError(f"--frames must be >= 0 (0 = every frame), got {settings.frames}")
    if settings.size < 8:
        raise AblateError(f"--size must be at least 8 pixels, got {settings.size}")
    if not 0 < settings.scale <= 10:
        raise AblateError(f"--scale must be in (0, 10] (1.3 = crop side 1.3 x the face), "
                          f"got {settings.scale}")
    if settings.align not in ALIGNS:
        raise AblateError(f"--align must be one of {', '.join(ALIGNS)}, got {settings.align!r}")
    if settings.detector not in DETECTORS:
        raise AblateError(f"--detector must be one of {', '.join(DETECTORS)}, "
                          f"got {settings.detector!r}")
    needs_points = settings.align == "similarity" and settings.detector != "none"
    if needs_points and settings.detector not in WITH_LANDMARKS:
        raise AblateError(f"--align similarity needs landmarks, which --detector "
                          f"{settings.detector} does not give; add --align none or use "
                          "--detector mtcnn")
    if not 0 <= settings.min_face_score <= 1:
        raise AblateError(f"--min-face-score must be in [0, 1], got {settings.min_face_score}")
    if settings.smooth < 1:
        raise AblateError(f"--smooth must be >= 1 (1 = no smoothing), got {settings.smooth}")
    if not 0 <= max_skip_fraction <= 1:
        raise AblateError(f"--max-skip-fraction must be in [0, 1], got {max_skip_fraction}")
    if workers < 1:
        raise AblateError(f"--workers must be >= 1, got {workers}")
