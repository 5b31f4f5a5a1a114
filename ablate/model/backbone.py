"""Detector encoders: any timm model, returning a feature *grid* [B, C, h, w].

Pretrained weights come only from a local file (`pretrained_path`); without one
the encoder is randomly initialised and says so once. Nothing is downloaded.
"""

from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch
from torch import Tensor, nn

from ablate.core.errors import AblateError
from ablate.registry import BACKBONES

log = logging.getLogger(__name__)


class TimmBackbone(nn.Module):
    """A timm model's `forward_features`, with ViT tokens reshaped to their grid."""

    def __init__(
        self, model_name: str, image_size: int, pretrained_path: str | None = None,
        warn: bool = True,
    ) -> None:
        super().__init__()
        self.model_name = model_name
        kwargs: dict = {"num_classes": 0}
        if _is_vit(model_name):
            kwargs["img_size"] = image_size  # position embeddings follow the input size
        if pretrained_path:
            path = Path(pretrained_path).expanduser()
            if not path.is_file():
                raise AblateError(
                    f"backbone.pretrained_path {path} does not exist; give a local "
                    ".safetensors/.pth file of timm weights, or null for random init"
                )
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
        elif warn:
            log.warning("backbone %s: no pretrained_path, random init", model_name)
        try:
            self.model = timm.create_model(model_name, **kwargs)
        except RuntimeError as err:
            if "Unknown model" in str(err):
                raise AblateError(
                    f"timm has no model {model_name!r}; list them with "
                    "`python -c \"import timm; print(timm.list_models('*b4*'))\"`"
                ) from None
            raise
        self.num_features: int = self.model.num_features
        self.num_prefix_tokens: int = getattr(self.model, "num_prefix_tokens", 0)

    def forward(self, x: Tensor) -> Tensor:
        feats = self.model.forward_features(x)
        if feats.ndim == 3:  # ViT: [B, prefix + h*w, C] -> [B, C, h, w]
            tokens = feats[:, self.num_prefix_tokens :]
            b, n, c = tokens.shape
            side = int(round(n**0.5))
            if side * side != n:
                raise AblateError(f"{self.model_name}: {n} patch tokens do not form a square grid")
            feats = tokens.transpose(1, 2).reshape(b, c, side, side)
        return feats  # [B, C, h, w]

    @torch.no_grad()
    def grid_size(self, image_size: int) -> int:
        """Side of the feature grid for a square input (one dummy forward)."""
        was_training = self.training
        self.eval()
        side = self.forward(torch.zeros(1, 3, image_size, image_size)).shape[-1]
        self.train(was_training)
        return side


def _is_vit(model_name: str) -> bool:
    return model_name.startswith(("vit_", "deit", "test_vit", "eva", "beit"))


@BACKBONES.register("timm", "any timm model by name (model_name=...)")
def timm_backbone(
    model_name: str = "resnet10t", image_size: int = 256, pretrained_path: str | None = None
) -> TimmBackbone:
    return TimmBackbone(model_name, image_size, pretrained_path)


@BACKBONES.register(
    "efficientnet_b4", "EfficientNet-B4 (tf_, paper and released code; 1792 ch)",
    model_name="tf_efficientnet_b4",
)
@BACKBONES.register(
    "vit_base_patch16_224", "ViT-B/16 (paper), tokens reshaped to a grid; 768 ch",
    model_name="vit_base_patch16_224",
)
def paper_encoder(
    model_name: str, image_size: int = 256, pretrained_path: str | None = None,
    random_init: bool = False,
) -> TimmBackbone:
    """The paper's encoders start from ImageNet weights; from scratch they reproduce
    nothing, so that takes an explicit `random_init=true` (speed and memory runs)."""
    if not pretrained_path and not random_init:
        raise AblateError(
            f"backbone {model_name} needs backbone.pretrained_path=/local/weights.safetensors "
            "(ImageNet timm weights, as in the paper; nothing is downloaded), or "
            "backbone.random_init=true to train from scratch on purpose (reproduces nothing)"
        )
    if pretrained_path and random_init:
        raise AblateError("give backbone.pretrained_path or backbone.random_init=true, not both")
    return TimmBackbone(model_name, image_size, pretrained_path, warn=not random_init)


@BACKBONES.register("small", "ResNet-10t, 4.9M params: CPU-friendly; 512 ch", model_name="resnet10t")
@BACKBONES.register(
    "tiny", "timm test_efficientnet, 0.1M params: tests and smoke runs; 256 ch",
    model_name="test_efficientnet",
)
def timm_preset(
    model_name: str, image_size: int = 256, pretrained_path: str | None = None
) -> TimmBackbone:
    return TimmBackbone(model_name, image_size, pretrained_path)
