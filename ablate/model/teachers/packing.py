"""Flux's latent packing: 2x2 latent patches become one 64-channel token, with position ids
(FluxPipeline._pack_latents / _unpack_latents / _prepare_latent_image_ids)."""

from __future__ import annotations

import torch
from torch import Tensor


def pack(latents: Tensor) -> Tensor:
    """[B, C, h, w] -> [B, (h/2)(w/2), 4C], row-major over the 2x2 patches."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: Tensor, h: int, w: int) -> Tensor:
    """[B, (h/2)(w/2), 4C] -> [B, C, h, w] (inverse of `pack`)."""
    b, _, channels = tokens.shape
    x = tokens.view(b, h // 2, w // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, channels // 4, h, w)


def image_ids(h: int, w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Position ids [(h/2)(w/2), 3] of packed image tokens: (0, row, column)."""
    ids = torch.zeros(h // 2, w // 2, 3, device=device, dtype=dtype)
    ids[..., 1] += torch.arange(h // 2, device=device, dtype=dtype)[:, None]
    ids[..., 2] += torch.arange(w // 2, device=device, dtype=dtype)[None, :]
    return ids.reshape(-1, 3)


def text_ids(length: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Position ids [length, 3] of text tokens: all zero."""
    return torch.zeros(length, 3, device=device, dtype=dtype)
