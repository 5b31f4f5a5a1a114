"""CLIP vision weights in the Hugging Face *transformers* layout (`CLIPModel` /
`CLIPVisionModel`, e.g. openai/clip-vit-large-patch14's model.safetensors, what Effort's code
loads) renamed to timm's `vit_*_clip_*` layout. timm has converters for OpenAI and open_clip
files but none for this one; the tensors are the same, only the names and the q/k/v split
differ.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

CLASS = "embeddings.class_embedding"  # its prefix is the vision tower's: vision_model. in a
# CLIPModel file, none in a CLIPVisionModel's own state dict (transformers 5)
_RENAME = (  # transformers (after vision_model.) -> timm
    (r"^embeddings\.patch_embedding\.", "patch_embed.proj."),
    (r"^pre_layrnorm\.", "norm_pre."),
    (r"^post_layernorm\.", "norm."),
    (r"^encoder\.layers\.(\d+)\.layer_norm1\.", r"blocks.\1.norm1."),
    (r"^encoder\.layers\.(\d+)\.layer_norm2\.", r"blocks.\1.norm2."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layers\.(\d+)\.mlp\.fc([12])\.", r"blocks.\1.mlp.fc\2."),
)
_QKV = re.compile(r"^encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$")


def is_hf_clip(state: dict[str, Tensor]) -> bool:
    """A transformers CLIP state dict: its vision tower's class embedding is there."""
    return _prefix(state) is not None


def _prefix(state: dict[str, Tensor]) -> str | None:
    found = [k[: -len(CLASS)] for k in state if k.endswith(CLASS)]
    return found[0] if len(found) == 1 and found[0] in ("", "vision_model.") else None


def hf_clip_to_timm(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The vision tower under timm's names; the text tower, projection and position ids
    (not weights) are left out. q, k and v [C, C] each become one qkv [3C, C]."""
    prefix = _prefix(state) or ""
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in state.items():
        if not key.startswith(prefix) or key.startswith(("text_model.", "visual_projection.")):
            continue  # a CLIPModel's text tower and projection, logit_scale
        name = key[len(prefix):]
        if name == "logit_scale":
            continue
        if name == "embeddings.class_embedding":
            out["cls_token"] = value.reshape(1, 1, -1)  # [C] -> [1, 1, C]
        elif name == "embeddings.position_embedding.weight":
            out["pos_embed"] = value.unsqueeze(0)  # [N, C] -> [1, N, C]
        elif name == "embeddings.position_ids":
            continue
        elif found := _QKV.match(name):
            layer, part, kind = found.groups()
            qkv.setdefault((layer, kind), {})[part] = value
        else:
            for pattern, repl in _RENAME:
                if re.match(pattern, name):
                    out[re.sub(pattern, repl, name)] = value
                    break
            else:
                out[name] = value  # unknown: left for the shape and name checks to name
    for (layer, kind), parts in qkv.items():
        if set(parts) == {"q", "k", "v"}:
            out[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts[p] for p in "qkv"])
        else:  # incomplete: keep what is there under its own name, for the checks to name
            out.update({f"blocks.{layer}.attn.{p}_proj.{kind}": v for p, v in parts.items()})
    return out
