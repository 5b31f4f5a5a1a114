"""The encoders deepfake detection uses since 2025, as presets, and their CPU twins.

Every preset is a timm model; weights come only from a local file (timm's own, timm's
Hugging Face `model.safetensors`, or an open_clip / OpenAI CLIP state dict or Meta's DINO /
PE file that timm's converter for that model reads: ablate/model/encoder_weights.py).
Nothing is downloaded. Images arrive in [-1, 1] and are normalised as each model was trained
(`normalize`: OpenAI CLIP's mean/std for CLIP, ImageNet's for DINO, ...).

A twin is the same timm architecture at a toy size (width 32, 2 blocks): the same
LayerNorms, attention projections, class and register tokens, so every tuning mode and
feature tap runs on a CPU in tests.
"""

from __future__ import annotations

from ablate.core.errors import AblateError
from ablate.model.backbone import TimmBackbone
from ablate.registry import BACKBONES

CLIP = "OpenAI CLIP; QuickGELU as trained"


@BACKBONES.register("clip_b16", f"CLIP ViT-B/16 ({CLIP}); 768 ch, 14x14 at 224 px",
                    model_name="vit_base_patch16_clip_quickgelu_224")
@BACKBONES.register("clip_l14", f"CLIP ViT-L/14 ({CLIP}; Effort, GenD); 1024 ch, 16x16 "
                    "at 224 px", model_name="vit_large_patch14_clip_quickgelu_224")
@BACKBONES.register("dinov2_l14", "DINOv2 ViT-L/14; 1024 ch", model_name="vit_large_patch14_dinov2")
@BACKBONES.register("dinov3_l16", "DINOv3 ViT-L/16 (4 register tokens); 1024 ch",
                    model_name="vit_large_patch16_dinov3")
@BACKBONES.register("pe_core_l", "Perception Encoder core L/14 (GenD); 1024 ch",
                    model_name="vit_pe_core_large_patch14_336")
@BACKBONES.register("xception", "Xception (FF++'s and DeepfakeBench's baseline); 2048 ch",
                    model_name="legacy_xception")
def pretrained_encoder(
    model_name: str, image_size: int = 224, pretrained_path: str | None = None,
    random_init: bool = False, normalize: bool = True,
) -> TimmBackbone:
    """These encoders matter for what they learned; from scratch they are only a cost
    measurement, so random weights take an explicit `random_init=true`."""
    if not pretrained_path and not random_init:
        raise AblateError(
            f"backbone {model_name} needs backbone.pretrained_path=/local/weights.safetensors "
            "(timm, open_clip or the original release; nothing is downloaded), or "
            "backbone.random_init=true for speed and memory runs (reproduces nothing)")
    if pretrained_path and random_init:
        raise AblateError("give backbone.pretrained_path or backbone.random_init=true, not both")
    return TimmBackbone(model_name, image_size, pretrained_path, warn=not random_init,
                        preset=model_name, normalize=normalize)


TWIN = {"embed_dim": 32, "depth": 2, "num_heads": 2}


@BACKBONES.register("tiny-clip", "CPU twin of CLIP ViT-L/14 (pre-norm, QuickGELU, class "
                    "token); 32 ch", model_name="vit_large_patch14_clip_quickgelu_224")
@BACKBONES.register("tiny-dinov2", "CPU twin of DINOv2 ViT-L/14 with 4 register tokens; "
                    "32 ch", model_name="vit_large_patch14_dinov2", reg_tokens=4)
@BACKBONES.register("tiny-dinov3", "CPU twin of DINOv3 ViT-L/16 (Eva: RoPE, 4 register "
                    "tokens); 32 ch", model_name="vit_large_patch16_dinov3")
@BACKBONES.register("tiny-pe", "CPU twin of Perception Encoder core L (Eva, attention "
                    "pool); 32 ch", model_name="vit_pe_core_large_patch14_336")
def encoder_twin(
    model_name: str, image_size: int = 64, pretrained_path: str | None = None,
    normalize: bool = True, reg_tokens: int = 0,
) -> TimmBackbone:
    args = dict(TWIN, **({"reg_tokens": reg_tokens} if reg_tokens else {}))
    return TimmBackbone(model_name, image_size, pretrained_path, warn=False,
                        preset=model_name, model_args=args, normalize=normalize)
