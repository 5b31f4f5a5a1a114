"""Recipe -> modules, through the registries only."""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ablate.core.errors import AblateError
from ablate.core.schema import BUILDER_APPLIED, setting, timestep_range
from ablate.model.contracts import check_backbone, check_filter, check_weight
from ablate.model.detector import Classifier, DiffusionFakeDetector, LossWeights
from ablate.model.tuning import Tuning, apply_tuning
from ablate.recipe import is_guided
from ablate.registry import build

log = logging.getLogger(__name__)

# image_size this many times below (or above) the size a teacher was trained at is allowed
# but warned: SDXL (1024 px) at 256 px, not SD 1.5 (512 px) at the paper's 224.
FAR_FROM_NATIVE = 4


def _slot(cfg: DictConfig, slot: str) -> tuple[str, dict[str, Any]]:
    """(variant name, its arguments) of one slot of a recipe."""
    args = OmegaConf.to_container(cfg[slot], resolve=True)
    assert isinstance(args, dict)
    return args.pop("name"), args


def build_classifier(cfg: DictConfig) -> Classifier:
    """Encoder + head: all that inference needs (no teacher is loaded). The encoder's tuning
    and taps (`backbone.tuning`, `backbone.taps`, ...) apply to whatever variant is named."""
    name, args = _slot(cfg, "backbone")
    applied = {k: args.pop(k) for k in BUILDER_APPLIED["backbone"] if k in args}
    backbone = build("backbone", name, image_size=cfg.image_size, **args)
    encoder = {k: applied.get(k, setting(cfg, f"backbone.{k}"))
               for k in BUILDER_APPLIED["backbone"]}
    _tap(name, backbone, encoder["taps"], encoder["pool"])
    tuning = tuning_of(encoder)
    apply_tuning(getattr(backbone, "model", backbone), tuning, f"backbone {name}")
    check_backbone(name, backbone, cfg.image_size)
    head_features = getattr(backbone, "head_features", backbone.num_features)
    return Classifier(backbone, head_features, bool(encoder["l2_normalize"]), tuning.mode)


def tuning_of(encoder: dict[str, Any]) -> Tuning:
    """The recipe's `backbone.tuning` and its settings as one value."""
    targets = {k: tuple(encoder[k]) for k in ("lora_targets", "svd_targets")}
    return Tuning(mode=str(encoder["tuning"]), lora_rank=int(encoder["lora_rank"]),
                  lora_alpha=float(encoder["lora_alpha"]),
                  lora_dropout=float(encoder["lora_dropout"]), **targets,
                  svd_rank=None if encoder["svd_rank"] is None else int(encoder["svd_rank"]))


def _tap(name: str, backbone: Any, taps: Any, pool: str) -> None:
    """Feature taps on an encoder that has them (ablate's timm encoders); a plugin encoder
    without `tap` takes only the defaults."""
    if hasattr(backbone, "tap"):
        backbone.tap(taps, pool)
    elif taps is not None or pool != "mean":
        raise AblateError(f"backbone {name} has no feature taps (no `tap` method): leave "
                          "backbone.taps=null and backbone.pool=mean")


def build_teacher(cfg: DictConfig):  # noqa: ANN201
    name, args = _slot(cfg, "teacher")
    teacher = build("teacher", name, **args)
    teacher.check_image_size(cfg.image_size)
    note = native_size_note(teacher, cfg.image_size, bool(args.get("random_init")))
    if note:
        log.warning(note)
    return teacher


def native_size(teacher) -> int | None:  # noqa: ANN001
    """The image size a teacher was trained at: its denoiser's latent `sample_size` x the VAE
    factor (SD 2.1-base: 512, SD 2.1: 768), else its VAE's `sample_size` (Flux); None where
    neither says."""
    denoiser = getattr(teacher, "denoiser", None)
    latent = getattr(getattr(denoiser, "config", None), "sample_size", None)
    if isinstance(latent, int) and latent > 0:
        return latent * int(teacher.vae_factor)
    size = getattr(getattr(getattr(teacher, "vae", None), "config", None), "sample_size", None)
    return size if isinstance(size, int) and size > 0 else None


def native_size_note(teacher, image_size: int, random_init: bool = False) -> str | None:  # noqa: ANN001
    """One line when `image_size` is FAR_FROM_NATIVE times off the teacher's trained size;
    None for tiny twins and random weights (no size learned) or a size near it."""
    native = None if random_init or str(teacher.name).startswith("tiny-") else native_size(teacher)
    if native is None or image_size <= 0:
        return None
    ratio = max(native, image_size) / min(native, image_size)
    if ratio < FAR_FROM_NATIVE:
        return None
    way = "smaller" if image_size < native else "larger"
    return (f"teacher {teacher.name} was trained at {native} px and image_size {image_size} is "
            f"{ratio:g}x {way}: allowed, but it guides from far outside what it learned "
            f"(image_size={native} matches it)")


def build_detector(cfg: DictConfig, teacher=None) -> DiffusionFakeDetector:  # noqa: ANN001
    """The detector of a recipe; pass `teacher` to reuse a loaded one.

    `guide=none` (the baseline): the classifier alone, nothing else is built or loaded.
    """
    classifier = build_classifier(cfg)
    weights = loss_weights(cfg)
    if not is_guided(cfg):
        return DiffusionFakeDetector(classifier, loss_weights=weights)
    teacher = teacher if teacher is not None else build_teacher(cfg)
    channels = classifier.backbone.num_features
    grid = classifier.backbone.grid_size(cfg.image_size)
    latent = cfg.image_size // teacher.vae_factor
    guide_channels = teacher.guide_channels  # conv_in width (UNet), latent channels (DiT)

    f_name, f_args = _slot(cfg, "filter")
    filters = tuple(
        build("filter", f_name, in_channels=channels, out_channels=guide_channels,
              in_size=grid, out_size=latent, **f_args)
        for _ in range(2)
    )
    check_filter(f_name, filters[0], channels, grid, guide_channels, latent)
    w_name, w_args = _slot(cfg, "weight")
    branch_weights = tuple(build("weight", w_name, in_channels=channels, **w_args)
                           for _ in range(2))
    check_weight(w_name, branch_weights[0], channels, grid)
    g_name, g_args = _slot(cfg, "guide")
    guide = build("guide", g_name, teacher=teacher, **g_args)
    detector = DiffusionFakeDetector(classifier, filters, branch_weights, guide, teacher, weights)
    detector.timestep_range = timestep_range(cfg)  # train.t_min, train.t_max (0, 1 if absent)
    bounds = getattr(teacher, "timestep_bounds", None)  # integer steps (UNet): at least one
    if bounds is not None:
        bounds(detector.timestep_range)
    return detector


def loss_weights(cfg: DictConfig) -> LossWeights:
    """The recipe's loss weights (`configs/loss/`)."""
    try:
        return LossWeights(**OmegaConf.to_container(cfg.loss, resolve=True))
    except TypeError as err:
        raise AblateError(f"bad loss settings: {err}") from None
