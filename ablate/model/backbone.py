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
from ablate.core.files import sha256_file
from ablate.model.encoder_weights import load_encoder_weights
from ablate.registry import BACKBONES

log = logging.getLogger(__name__)


class TimmBackbone(nn.Module):
    """A timm model's `forward_features`, with ViT tokens reshaped to their grid.

    `features(x)` (`forward(x, token=True)`) also gives what the head reads: None (the mean of the grid, as before
    taps existed) or the class token (`tap(pool="cls")`). Register and other prefix tokens
    never enter the grid.
    """

    gives_token = True  # forward(x, token=True) -> (grid, token): what Classifier.encode calls

    def __init__(
        self, model_name: str, image_size: int, pretrained_path: str | None = None,
        warn: bool = True, *, preset: str | None = None, model_args: dict | None = None,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        self.model_name = model_name
        kwargs: dict = {"num_classes": 0, **(model_args or {})}
        if _is_vit(model_name):
            kwargs["img_size"] = image_size  # position embeddings follow the input size
        try:
            self.model = timm.create_model(model_name, pretrained=False, **kwargs)
        except RuntimeError as err:
            if "Unknown model" in str(err):
                raise AblateError(
                    f"timm has no model {model_name!r}; list them with "
                    "`python -c \"import timm; print(timm.list_models('*b4*'))\"`"
                ) from None
            raise
        if getattr(self.model, "attn_pool", None) is not None:  # PE's pooling head: the
            self.model.attn_pool = None  # detector's head reads the class token or the grid
        # sha256 of the weights file the encoder started from: a run that trains only part
        # of it stores that part and this, and loads onto the same base only
        self.base_sha256: str | None = None
        if pretrained_path:
            path = Path(pretrained_path).expanduser()
            if not path.is_file():
                raise AblateError(
                    f"backbone.pretrained_path {path} does not exist; give a local "
                    ".safetensors/.pth file of the encoder's weights, or null for random init"
                )
            load_encoder_weights(self.model, path, preset or model_name)
            self.base_sha256 = sha256_file(path)
        elif warn:
            log.warning("backbone %s: no pretrained_path, random init", model_name)
        self.width: int = self.model.num_features  # C of one block's tokens
        self.num_features: int = self.width  # channels of the grid the filters read
        self.head_features: int = self.width  # width of what the head reads
        self.num_prefix_tokens: int = getattr(self.model, "num_prefix_tokens", 0)
        # a ViT (patch embedding + blocks of tokens): taps and recomputed blocks apply; a CNN
        # (EfficientNet has `blocks` too) would run BatchNorm twice under recomputation
        self.is_vit = hasattr(self.model, "patch_embed") and hasattr(self.model, "blocks")
        self.taps: tuple[int, ...] | None = None
        self.pool = "mean"
        # [-1, 1] images -> the model's own normalisation (CLIP, DINO, PE were trained on it)
        self.normalize = normalize
        cfg = self.model.pretrained_cfg
        mean = torch.tensor(cfg.get("mean", (0.5, 0.5, 0.5))).view(1, 3, 1, 1)
        std = torch.tensor(cfg.get("std", (0.5, 0.5, 0.5))).view(1, 3, 1, 1)
        self.register_buffer("input_mean", mean, persistent=False)  # [1, 3, 1, 1]
        self.register_buffer("input_std", std, persistent=False)

    def tap(self, taps: list[int] | tuple[int, ...] | int | None, pool: str) -> None:
        """Which blocks form the grid (None: the last, normed) and what the head reads."""
        if pool == "cls" and getattr(self.model, "cls_token", None) is None:
            raise AblateError(f"backbone.pool=cls needs a ViT with a class token; "
                              f"{self.model_name} has none: use backbone.pool=mean")
        if taps is not None:
            if not self.is_vit or not hasattr(self.model, "forward_intermediates"):
                raise AblateError(f"backbone.taps reads ViT blocks; {self.model_name} is not a "
                                  "ViT: leave backbone.taps=null")
            taps = (taps,) if isinstance(taps, int) else tuple(int(t) for t in taps)
            depth = len(self.model.blocks)
            bad = [t for t in taps if not -depth <= t < depth]
            if bad or not taps:
                raise AblateError(f"backbone.taps={list(taps)}: {self.model_name} has {depth} "
                                  f"blocks; give indices from {-depth} to {depth - 1}")
            self.num_features = self.width * len(taps)
        self.taps, self.pool = taps, pool
        self.head_features = self.width if pool == "cls" else self.num_features

    def forward(self, x: Tensor, token: bool = False) -> Tensor | tuple[Tensor, Tensor | None]:
        """The grid [B, C, h, w] (every backbone's contract); with `token=True`,
        `features(x)`: through the module call, so hooks and compile see it."""
        return self.features(x) if token else self.features(x)[0]

    def features(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """(grid [B, C, h, w], class token [B, C'] or None: the head then reads the grid's
        mean)."""
        if self.normalize:
            x = ((x + 1) / 2 - self.input_mean) / self.input_std
        if self.taps is not None:  # blocks' tokens, each through the final norm (the last
            # tap of [-1] is then exactly forward_features' grid)
            final, blocks = self.model.forward_intermediates(
                x, indices=list(self.taps), norm=True, output_fmt="NCHW")
            grid = torch.cat(blocks, dim=1)  # [B, C x taps, h, w]
            return grid, (final[:, 0] if self.pool == "cls" else None)
        feats = self.model.forward_features(x)
        token = feats[:, 0] if self.pool == "cls" else None  # [B, C]
        if feats.ndim == 3:  # ViT: [B, prefix + h*w, C] -> [B, C, h, w]
            tokens = feats[:, self.num_prefix_tokens :]
            b, n, c = tokens.shape
            side = int(round(n**0.5))
            if side * side != n:
                raise AblateError(f"{self.model_name}: {n} patch tokens do not form a square grid")
            feats = tokens.transpose(1, 2).reshape(b, c, side, side)
        return feats, token

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
    return TimmBackbone(model_name, image_size, pretrained_path, warn=not random_init,
                        preset=model_name)


@BACKBONES.register("small", "ResNet-10t, 4.9M params: CPU-friendly; 512 ch", model_name="resnet10t")
@BACKBONES.register(
    "tiny", "timm test_efficientnet, 0.1M params: tests and smoke runs; 256 ch",
    model_name="test_efficientnet",
)
def timm_preset(
    model_name: str, image_size: int = 256, pretrained_path: str | None = None
) -> TimmBackbone:
    return TimmBackbone(model_name, image_size, pretrained_path)
