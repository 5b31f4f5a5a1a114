"""Recipe -> modules, through the registries only."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from ablate.core.errors import AblateError
from ablate.model.contracts import check_backbone, check_filter, check_weight
from ablate.model.detector import Classifier, DiffusionFakeDetector, LossWeights
from ablate.recipe import is_guided
from ablate.registry import build


def _slot(cfg: DictConfig, slot: str) -> tuple[str, dict[str, Any]]:
    """(variant name, its arguments) of one slot of a recipe."""
    args = OmegaConf.to_container(cfg[slot], resolve=True)
    assert isinstance(args, dict)
    return args.pop("name"), args


def build_classifier(cfg: DictConfig) -> Classifier:
    """Encoder + head: all that inference needs (no teacher is loaded)."""
    name, args = _slot(cfg, "backbone")
    backbone = build("backbone", name, image_size=cfg.image_size, **args)
    check_backbone(name, backbone, cfg.image_size)
    return Classifier(backbone, backbone.num_features)


def build_teacher(cfg: DictConfig):  # noqa: ANN201
    name, args = _slot(cfg, "teacher")
    teacher = build("teacher", name, **args)
    teacher.check_image_size(cfg.image_size)
    return teacher


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
    return DiffusionFakeDetector(classifier, filters, branch_weights, guide, teacher, weights)


def loss_weights(cfg: DictConfig) -> LossWeights:
    """The recipe's loss weights (`configs/loss/`)."""
    try:
        return LossWeights(**OmegaConf.to_container(cfg.loss, resolve=True))
    except TypeError as err:
        raise AblateError(f"bad loss settings: {err}") from None
