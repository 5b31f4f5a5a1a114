"""Guide networks for diffusion-transformer teachers (SD3 / SD3.5, Flux), following the
ControlNets diffusers ships for them (`SD3ControlNetModel`, `FluxControlNetModel`):

- a trainable copy of the teacher's first N transformer blocks (and its embedders),
  initialised from the teacher;
- zero-initialised output projections (one Linear per copied block) whose outputs the
  teacher adds to its own blocks' hidden states;
- the conditioning enters through the patch embedding: the filter output f (latent-shaped,
  [N, C_lat, h, w]) is embedded by a copy of the teacher's patch projection, without bias,
  and added to the embedded noisy latent, i.e. the copy sees embed(z_t + f). This is the
  DiT analogue of the UNet guide's conv_in(z_t) + f. diffusers zero-initialises that
  embedding instead; with the output projections also zero, the filter's path would start
  doubly zero (METHOD.md: the filter output is not zero-initialised, only the outputs are).

Each residual is multiplied by its branch's per-sample weight W by the detector, like the
UNet residuals. `TokenAdapter` is the light alternative with the same residual shapes.

Default N (`guide.layers=null`): diffusers' `from_transformer` defaults, 12 blocks for SD3
(never its context-only last block) and 4 double + 10 single blocks for Flux, capped at what
the teacher has. `layers=K` for Flux sets the double blocks; the single blocks stay 10.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import FluxControlNetModel, SD3ControlNetModel
from torch import Tensor, nn

from ablate.core.errors import AblateError
from ablate.model.teachers.packing import image_ids, pack, text_ids

SD3_DEFAULT_LAYERS = 12  # SD3ControlNetModel.from_transformer
FLUX_DEFAULT_LAYERS = (4, 10)  # FluxControlNetModel.from_transformer: double, single blocks


def _copy_projection(target: nn.Module, source: nn.Module) -> None:
    """target (conv or linear) := source's weight, zero bias: embeds f like z, no offset."""
    with torch.no_grad():
        target.weight.copy_(source.weight)
        if target.bias is not None:
            target.bias.zero_()


def _layers(asked: int | None, default: int, available: int, what: str) -> int:
    n = default if asked is None else int(asked)
    if n < 1 or (asked is not None and n > available):
        raise AblateError(f"guide.layers={asked}: the teacher has {available} {what}; "
                          f"use 1..{available} (or null for the default, {min(default, available)})")
    return min(n, available)


class SD3ControlNet(SD3ControlNetModel):
    """ControlNet copy of an SD3 / SD3.5 transformer; `residuals` -> ([block residuals],)."""

    @classmethod
    def copy_of(cls, transformer: nn.Module, layers: int | None = None) -> SD3ControlNet:
        config = dict(transformer.config)
        # the teacher's last block only reads the context (context_pre_only): no copy of it
        n = _layers(layers, SD3_DEFAULT_LAYERS, config["num_layers"] - 1,
                    "transformer blocks before its context-only last one")
        # built from a copy of the config: diffusers' from_transformer writes num_layers into
        # the teacher's own config object
        keys = ("sample_size", "patch_size", "in_channels", "attention_head_dim",
                "num_attention_heads", "joint_attention_dim", "caption_projection_dim",
                "pooled_projection_dim", "out_channels", "pos_embed_max_size",
                "dual_attention_layers", "qk_norm")
        net = cls(**{k: config[k] for k in keys if k in config}, num_layers=n,
                  extra_conditioning_channels=0)
        net.pos_embed.load_state_dict(transformer.pos_embed.state_dict())
        net.time_text_embed.load_state_dict(transformer.time_text_embed.state_dict())
        net.context_embedder.load_state_dict(transformer.context_embedder.state_dict())
        net.transformer_blocks.load_state_dict(transformer.transformer_blocks[:n].state_dict())
        _copy_projection(net.pos_embed_input.proj, transformer.pos_embed.proj)
        return net

    def residuals(self, noisy: Tensor, timesteps: Tensor, cond: Tensor,
                  kwargs: dict[str, Any]) -> tuple[list[Tensor]]:
        """noisy, cond [N, 16, h, w]; timesteps = sigmas [N] -> ([N, h*w/4, D] per block,)."""
        (blocks,) = self(noisy, cond, timestep=timesteps * 1000, return_dict=False, **kwargs)
        return (list(blocks),)


class FluxControlNet(FluxControlNetModel):
    """ControlNet copy of a Flux transformer; `residuals` -> ([double], [single])."""

    @classmethod
    def copy_of(cls, transformer: nn.Module, layers: int | None = None) -> FluxControlNet:
        config = dict(transformer.config)
        double = _layers(layers, FLUX_DEFAULT_LAYERS[0], config["num_layers"], "double blocks")
        single = min(FLUX_DEFAULT_LAYERS[1], config["num_single_layers"])
        keys = ("patch_size", "in_channels", "attention_head_dim", "num_attention_heads",
                "joint_attention_dim", "pooled_projection_dim", "guidance_embeds",
                "axes_dims_rope")
        net = cls(**{k: config[k] for k in keys if k in config}, num_layers=double,
                  num_single_layers=single)
        for part in ("pos_embed", "time_text_embed", "context_embedder", "x_embedder"):
            getattr(net, part).load_state_dict(getattr(transformer, part).state_dict())
        net.transformer_blocks.load_state_dict(
            transformer.transformer_blocks[:double].state_dict())
        net.single_transformer_blocks.load_state_dict(
            transformer.single_transformer_blocks[:single].state_dict())
        _copy_projection(net.controlnet_x_embedder, transformer.x_embedder)
        return net

    def residuals(self, noisy: Tensor, timesteps: Tensor, cond: Tensor,
                  kwargs: dict[str, Any]) -> tuple[list[Tensor], list[Tensor]]:
        """noisy, cond [N, 16, h, w] (packed here to [N, h*w/4, 64]); timesteps = sigmas [N]
        -> ([N, h*w/4, D] per double block], [... per single block])."""
        h, w = noisy.shape[-2:]
        context = kwargs["encoder_hidden_states"]
        blocks, singles = self(
            pack(noisy), pack(cond), timestep=timesteps, return_dict=False,
            img_ids=image_ids(h, w, noisy.device, noisy.dtype),
            txt_ids=text_ids(context.shape[1], noisy.device, noisy.dtype), **kwargs)
        return list(blocks or []), list(singles or [])


class TokenAdapter(nn.Module):
    """The light guide for transformer teachers: a patch embedding of f, one hidden layer,
    then a zero-initialised Linear per residual; no copy of the teacher, no timestep.

    cond [N, C_lat, h, w] -> residual groups of [N, (h/p)(w/p), D] tokens in the
    teacher's own token order (row-major patches, as SD3's PatchEmbed and Flux's packing).
    """

    def __init__(self, latent_channels: int, patch: int, dim: int, groups: list[int],
                 width: int = 64) -> None:
        super().__init__()
        self.embed = nn.Conv2d(latent_channels, width, patch, stride=patch)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(width, width), nn.SiLU())
        self.heads = nn.ModuleList(
            nn.ModuleList(_zero_linear(width, dim) for _ in range(n)) for n in groups)

    def forward(self, cond: Tensor) -> tuple[list[Tensor], ...]:
        tokens = self.mlp(self.embed(cond).flatten(2).transpose(1, 2))  # [N, tokens, width]
        return tuple([head(tokens) for head in group] for group in self.heads)


def _zero_linear(in_features: int, out_features: int) -> nn.Linear:
    linear = nn.Linear(in_features, out_features)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear
