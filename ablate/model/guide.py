"""Guides: turn (noisy latent, timestep, filtered features) into ControlNet-style
residuals for the frozen teacher's denoiser, in the layout its `predict` takes.

The teacher builds the per-family networks (`Teacher.controlnet`, `Teacher.adapter`):
for a UNet teacher, the ones below (one residual per down-block output and one for the
mid block, shaped exactly like the skip connections); for SD3 / Flux transformers,
`ablate.model.dit_guide`. The registry entries and the `Guide` wrapper are the same for
every family, so a recipe's `guide=` never depends on its `teacher=`.

Both branches travel as one batch [2B] (source half first, target half second);
a *separate* guide splits it and runs one network per half.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from diffusers import ControlNetModel
from torch import Tensor, nn

from ablate.core.errors import AblateError
from ablate.registry import GUIDES

Residuals = tuple  # the teacher's layout: UNet (downs, mid), SD3 (blocks,), Flux (blocks, singles)


class Guide(nn.Module):
    """Base: one network shared by both branches, or one per branch. Always fp32 weights."""

    def __init__(self, nets: list[nn.Module]) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)

    @property
    def shared(self) -> bool:
        return len(self.nets) == 1

    @property
    def dtype(self) -> torch.dtype:
        """The guide's weights' dtype: fp32 always (it trains; autocast sets the compute)."""
        return next(self.parameters()).dtype

    def forward(
        self, noisy: Tensor, timesteps: Tensor, cond: Tensor, unet_kwargs: dict[str, Any]
    ) -> Residuals:
        """noisy [2B, 4, h, w], timesteps [2B], cond [2B, C0, h, w] -> residuals.

        Inputs arrive in the teacher's dtype (maybe bf16); they are cast to the guide's own."""
        noisy, cond, unet_kwargs = _cast((noisy, cond, unet_kwargs), self.dtype)
        if self.shared:
            return self._run(self.nets[0], noisy, timesteps, cond, unet_kwargs)
        halves = [
            self._run(net, *(t.chunk(2)[i] for t in (noisy, timesteps, cond)), _half(unet_kwargs, i))
            for i, net in enumerate(self.nets)
        ]
        return _cat_halves(*halves)

    def branch(
        self, index: int, noisy: Tensor, timesteps: Tensor, cond: Tensor,
        unet_kwargs: dict[str, Any],
    ) -> Residuals:
        """One branch alone (0 = source, 1 = target): noisy [B, 4, h, w] -> its residuals.
        What `forward` computes for that half, without batching the two."""
        net = self.nets[0 if self.shared else index]
        noisy, cond, unet_kwargs = _cast((noisy, cond, unet_kwargs), self.dtype)
        return self._run(net, noisy, timesteps, cond, unet_kwargs)

    def _run(self, net, noisy, timesteps, cond, unet_kwargs) -> Residuals:  # noqa: ANN001
        raise NotImplementedError


def _cat_halves(first: Any, second: Any) -> Any:
    """Source-half and target-half residuals (same layout) -> one [2B] layout."""
    if isinstance(first, Tensor):
        return torch.cat([first, second])
    return type(first)(_cat_halves(a, b) for a, b in zip(first, second, strict=True))


def _cast(value: Any, dtype: torch.dtype) -> Any:
    """Floating tensors inside tuples/dicts -> `dtype` (timesteps and other ints untouched)."""
    if isinstance(value, Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: _cast(v, dtype) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(_cast(v, dtype) for v in value)
    return value


def _half(kwargs: dict[str, Any], index: int) -> dict[str, Any]:
    """The source (0) or target (1) half of batched UNet keyword arguments."""
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if isinstance(value, dict):
            out[key] = _half(value, index)
        elif isinstance(value, Tensor):
            out[key] = value.chunk(2)[index]
        else:
            out[key] = value
    return out


class UNetControlNet(ControlNetModel):
    """A trainable copy of the teacher UNet's encoder (diffusers' ControlNetModel,
    initialised from the teacher), zero-initialised 1x1 convs on every down-block
    output and on the mid output. Its input is conv_in(z_noisy) + filtered features:
    the pixel-space conditioning embedding of a usual ControlNet is not used.

    Its structure (`guide.blocks`, `guide.inject`, `guide.zero_init`; `copy_of`): the copy
    may hold only the first down blocks (no mid block) and project only some residuals; the
    residuals it does not produce are zeros of the teacher's shapes, so the layout `predict`
    takes never changes."""

    @classmethod
    def copy_of(cls, unet: nn.Module, blocks: int | None = None, inject: Any = "all",
                zero_init: bool = True) -> UNetControlNet:
        """The copy; with the defaults, exactly the whole encoder + mid, every residual."""
        plan = structure(unet, blocks, inject)  # checks first: a bad key costs no copy
        net = cls.from_unet(unet, load_weights_from_unet=True)
        net.controlnet_cond_embedding = nn.Identity()  # features are already latent-sized
        net.layout = residual_shapes(unet)
        net.plan = plan
        if plan.held_blocks < len(net.down_blocks):  # deeper blocks: never copied nor run
            net.down_blocks = net.down_blocks[: plan.held_blocks]
        if not plan.held_mid:
            net.mid_block = None
        net.controlnet_down_blocks = nn.ModuleList(
            conv if i in plan.down else NoResidual()
            for i, conv in enumerate(net.controlnet_down_blocks[: plan.held_residuals]))
        if not plan.mid:
            net.controlnet_mid_block = NoResidual()
        if not zero_init:  # PyTorch's default init of each projection built
            for conv in (*net.controlnet_down_blocks, net.controlnet_mid_block):
                if isinstance(conv, nn.Conv2d):
                    conv.reset_parameters()
        return net

    def residuals(self, noisy: Tensor, timesteps: Tensor, cond: Tensor,
                  unet_kwargs: dict[str, Any]) -> Residuals:
        """noisy [N, 4, h, w], cond [N, C0, h, w] -> ([down residuals], mid residual)."""
        if getattr(self, "plan", None) is None or self.plan.whole:  # today's copy: diffusers'
            down, mid = self(noisy, timesteps, controlnet_cond=cond, return_dict=False,
                             **unet_kwargs)
            return list(down), mid
        return self._partial(noisy, timesteps, cond, **unet_kwargs)

    def _partial(self, noisy: Tensor, timesteps: Tensor, cond: Tensor,
                 encoder_hidden_states: Tensor,
                 added_cond_kwargs: dict[str, Tensor] | None = None) -> Residuals:
        """diffusers' ControlNetModel.forward for a copy that holds part of the encoder:
        time embedding, conv_in(noisy) + cond, the held down blocks (and the mid block if
        held); the residuals it does not project are zeros of the teacher's shapes."""
        emb = self._embedding(noisy, timesteps, encoder_hidden_states, added_cond_kwargs)
        sample = self.conv_in(noisy) + self.controlnet_cond_embedding(cond)
        outputs = [sample]  # [N, C, h, w] per residual, shallowest first
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                sample, res = block(hidden_states=sample, temb=emb,
                                    encoder_hidden_states=encoder_hidden_states)
            else:
                sample, res = block(hidden_states=sample, temb=emb)
            outputs += res
        sizes = _level_sizes(noisy.shape[-2:], self.layout[1][1])
        n = noisy.shape[0]
        downs = []
        for i, (channels, level) in enumerate(self.layout[0]):
            if i in self.plan.down:
                downs.append(self.controlnet_down_blocks[i](outputs[i]))
            else:
                downs.append(noisy.new_zeros(n, channels, *sizes[level]))
        mid_channels, mid_level = self.layout[1]
        if self.plan.mid:
            if getattr(self.mid_block, "has_cross_attention", False):
                sample = self.mid_block(sample, emb, encoder_hidden_states=encoder_hidden_states)
            else:
                sample = self.mid_block(sample, emb)
            mid = self.controlnet_mid_block(sample)
        else:
            mid = noisy.new_zeros(n, mid_channels, *sizes[mid_level])
        return downs, mid

    def _embedding(self, sample: Tensor, timesteps: Tensor, encoder_hidden_states: Tensor,
                   added_cond_kwargs: dict[str, Tensor] | None) -> Tensor:
        """The time embedding (+ SDXL's text-time embedding), as ControlNetModel.forward."""
        if timesteps.ndim == 0:
            timesteps = timesteps[None].to(sample.device)
        t_emb = self.time_proj(timesteps.expand(sample.shape[0])).to(dtype=sample.dtype)
        emb = self.time_embedding(t_emb, None)
        if self.class_embedding is not None:
            raise NotImplementedError("a class-conditioned UNet teacher has no partial guide")
        kind = self.config.addition_embed_type
        if kind == "text":
            emb = emb + self.add_embedding(encoder_hidden_states)
        elif kind == "text_time":
            text_embeds = added_cond_kwargs["text_embeds"]
            time_embeds = self.add_time_proj(added_cond_kwargs["time_ids"].flatten())
            time_embeds = time_embeds.reshape((text_embeds.shape[0], -1))
            add_embeds = torch.concat([text_embeds, time_embeds], dim=-1).to(emb.dtype)
            emb = emb + self.add_embedding(add_embeds)
        elif kind is not None:
            raise NotImplementedError(f"addition_embed_type {kind!r}: no partial guide")
        return emb


class NoResidual(nn.Module):
    """Where a residual is not injected: no projection, no parameters (zeros instead)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.zeros_like(x)


def _level_sizes(size: Any, levels: int) -> list[tuple[int, int]]:
    """(h, w) of the latent at each downsampling level: SD's stride-2 3x3 convs (padding
    1) give ceil(h / 2) per level."""
    h, w = int(size[0]), int(size[1])
    out = [(h, w)]
    for _ in range(levels):
        h, w = (h + 1) // 2, (w + 1) // 2
        out.append((h, w))
    return out


class Plan(NamedTuple):
    """What a UNet guide holds and projects (`structure`)."""

    held_blocks: int  # down blocks copied (and run)
    held_mid: bool  # mid block copied (and run)
    held_residuals: int  # down residuals the held blocks produce (conv_in's included)
    down: frozenset[int]  # down residuals projected (injected); the rest are zeros
    mid: bool  # mid residual projected (injected)

    @property
    def whole(self) -> bool:
        """Today's copy: the whole encoder + mid, every residual projected."""
        return self.held_mid and self.mid and len(self.down) == self.held_residuals


def structure(unet: nn.Module, blocks: int | None = None, inject: Any = "all") -> Plan:
    """`guide.blocks` and `guide.inject` on this UNet -> what the copy holds and projects;
    a value the UNet cannot take is one line naming it and the valid range.

    blocks: null = every down block + the mid block; k = the first k down blocks, no mid.
    inject: "all" = every residual the held blocks produce; "mid" = the mid residual only;
    k = the deepest k down residuals the held blocks produce (+ mid when held); a list of
    down-residual indices and/or "mid". A block whose outputs reach no injected residual is
    not copied either (a list without mid holds no mid block and no block past its deepest).
    """
    downs, _ = residual_shapes(unet)
    n_blocks = len(unet.down_blocks)
    owner = _owners(unet)  # residual index -> down block producing it (-1: conv_in)
    if blocks is not None and (isinstance(blocks, bool) or not isinstance(blocks, int)
                               or not 1 <= blocks <= n_blocks):
        raise AblateError(f"guide.blocks={blocks}: the teacher's UNet has {n_blocks} down "
                          f"blocks; give 1..{n_blocks}, or null for all of them + the mid block")
    held_blocks = n_blocks if blocks is None else blocks
    held_mid = blocks is None
    held = sum(1 for o in owner if o < held_blocks)
    where = (f"indices 0..{held - 1}" + (" and mid" if held_mid else "")
             + (f" (guide.blocks={blocks} holds no mid block)" if not held_mid else ""))
    if isinstance(inject, str) and inject == "all":
        down, mid = frozenset(range(held)), held_mid
    elif isinstance(inject, str) and inject == "mid":
        if not held_mid:
            raise AblateError(f"guide.inject=mid: guide.blocks={blocks} holds no mid block; "
                              f"inject one of indices 0..{held - 1}, or set guide.blocks=null")
        down, mid = frozenset(), True
    elif isinstance(inject, int) and not isinstance(inject, bool):
        if not 1 <= inject <= held:
            raise AblateError(f"guide.inject={inject}: the guide produces {held} down "
                              f"residuals; give 1..{held} (the deepest k), all, mid or a list")
        down, mid = frozenset(range(held - inject, held)), held_mid
    elif isinstance(inject, Sequence) and not isinstance(inject, str):  # list, ListConfig
        items = list(inject)
        if not items:
            raise AblateError(f"guide.inject=[]: injects nothing; give {where}")
        if len(set(map(str, items))) < len(items):  # one module, two hashes otherwise
            raise AblateError(f"guide.inject={items}: an entry is listed twice; list each once")
        for item in items:
            if item == "mid" and held_mid:
                continue
            if isinstance(item, int) and not isinstance(item, bool) and 0 <= item < held:
                continue
            raise AblateError(f"guide.inject: entry {item!r} is not a residual of this "
                              f"guide; valid: {where} ({len(downs)} down residuals in the UNet)")
        down = frozenset(i for i in items if i != "mid")
        mid = "mid" in items
    else:
        raise AblateError(f"guide.inject={inject!r}: give all, mid, a number k (the deepest k "
                          f"down residuals) or a list of {where}")
    if not mid:  # nothing past the deepest injected residual is copied
        held_mid = False
        held_blocks = max(owner[i] for i in down) + 1
        held = sum(1 for o in owner if o < held_blocks)
    return Plan(held_blocks, held_mid, held, down, mid)


def _owners(unet: nn.Module) -> list[int]:
    """For each down residual (residual_shapes' order), the down block producing it
    (-1: conv_in's output)."""
    out = [-1]
    for index, block in enumerate(unet.down_blocks):
        out += [index] * len(block.resnets)
        if getattr(block, "downsamplers", None):
            out.append(index)
    return out


class ControlNetGuide(Guide):
    """The teacher's own ControlNet-style copy (`Teacher.controlnet`: a module with
    `residuals(noisy, t, cond, conditioning)`), shared by both branches or one per branch."""

    def __init__(self, teacher: nn.Module, shared: bool = True, **args: Any) -> None:
        nets = []
        for _ in range(1 if shared else 2):
            net = teacher.controlnet(**args)
            # fp32 master weights even under a bf16/fp16 teacher: at lr 1e-5 most bf16
            # weights could not move at all (reduced precision is for compute: autocast)
            nn.Module.to(net, torch.float32).requires_grad_(True)  # plain cast, no diffusers warning
            nets.append(net)
        super().__init__(nets)

    def _run(self, net, noisy, timesteps, cond, unet_kwargs) -> Residuals:  # noqa: ANN001
        return net.residuals(noisy, timesteps, cond, unet_kwargs)


def check_flag(key: str, value: Any) -> None:
    """A true/false setting must be a bool: YAML reads `no` or `off` as text, which Python
    would take as true, and build the opposite of what was asked under a new hash."""
    if not isinstance(value, bool):
        raise AblateError(f"{key} must be true or false, not {value!r}")


def _unet_only(teacher: nn.Module, changed: dict[str, Any], instead: str) -> None:
    """A structure key a transformer teacher's guide does not take: one line saying so."""
    if getattr(teacher, "denoiser_name", "unet") == "unet" or not changed:
        return
    keys = " ".join(f"guide.{k}={v}" for k, v in changed.items())
    raise AblateError(f"{keys}: for UNet teachers only; {getattr(teacher, 'name', 'this')} "
                      f"is a transformer teacher: {instead}")


def residual_shapes(unet: nn.Module) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """(channels, downsampling level) of each down residual and of the mid residual,
    read off the UNet's modules: conv_in, then per block its resnets and downsampler."""
    downs = [(unet.conv_in.out_channels, 0)]
    level = 0
    for block in unet.down_blocks:
        channels = block.resnets[-1].out_channels
        downs += [(channels, level)] * len(block.resnets)
        if getattr(block, "downsamplers", None):
            level += 1
            downs.append((channels, level))
    mid_channels = unet.mid_block.resnets[-1].out_channels
    return downs, (mid_channels, level)


def zero_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class ConvPyramid(nn.Module):
    """A light stack of stride-2 convs over the filtered features (no copy of the
    UNet, no timestep): one zero-initialised 1x1 conv per residual. `depth` convs per
    level (the first one strides); `zero_init=False`: PyTorch's default init of the 1x1s."""

    def __init__(self, unet: nn.Module, width: int = 64, depth: int = 1,
                 zero_init: bool = True) -> None:
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise AblateError(f"guide.depth={depth}: convs per level; give 1 or more")
        downs, (mid_channels, mid_level) = residual_shapes(unet)
        in_channels = unet.conv_in.out_channels
        levels = mid_level + 1
        self.stages = nn.ModuleList()
        for level in range(levels):
            stride = 1 if level == 0 else 2
            layers: list[nn.Module] = [
                nn.Conv2d(in_channels if level == 0 else width, width, 3, stride, 1), nn.SiLU()]
            for _ in range(depth - 1):
                layers += [nn.Conv2d(width, width, 3, 1, 1), nn.SiLU()]
            self.stages.append(nn.Sequential(*layers))
        self.levels = [lvl for _, lvl in downs]
        projection = zero_conv if zero_init else _plain_conv
        self.down_convs = nn.ModuleList(projection(width, c) for c, _ in downs)
        self.mid_conv = projection(width, mid_channels)
        self.mid_level = mid_level

    def forward(self, cond: Tensor) -> Residuals:
        feats = []
        x = cond  # [N, C0, h, w]
        for stage in self.stages:
            x = stage(x)  # [N, width, h / 2**level, w / 2**level]
            feats.append(x)
        downs = [conv(feats[lvl]) for conv, lvl in zip(self.down_convs, self.levels, strict=True)]
        return downs, self.mid_conv(feats[self.mid_level])


def _plain_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1)  # PyTorch's default init


class AdapterGuide(Guide):
    """The cheap alternative to a copy of the denoiser: residuals from features alone
    (`Teacher.adapter`: a conv pyramid for UNets, patch tokens for transformers)."""

    def __init__(self, teacher: nn.Module, shared: bool = True, width: int = 64,
                 depth: int = 1, zero_init: bool = True) -> None:
        changed = {k: v for k, v, d in (("depth", depth, 1), ("zero_init", zero_init, True))
                   if v != d}
        _unet_only(teacher, changed, "its adapter has one hidden layer and zero-initialised "
                                     "outputs; set only guide.width")
        extra = changed  # a UNet teacher's pyramid takes them; none given: today's call
        super().__init__([teacher.adapter(width, **extra) for _ in range(1 if shared else 2)])

    def _run(self, net, noisy, timesteps, cond, unet_kwargs) -> Residuals:  # noqa: ANN001
        return net(cond)


@GUIDES.register("controlnet", "trainable copy of the teacher's first blocks + zero projections")
def controlnet_guide(teacher: nn.Module, shared: bool = True, layers: int | None = None,
                     blocks: int | None = None, inject: Any = "all",
                     zero_init: bool = True) -> ControlNetGuide:
    """`layers`: transformer blocks copied (None: the family's default, see
    `ablate.model.dit_guide`). UNet teachers: `blocks` down blocks copied (None: all + the
    mid block), `inject` the residuals projected ("all", "mid", the deepest k, or a list of
    down-residual indices and/or "mid"; the rest are zeros), `zero_init` the projections'
    init (`structure` says exactly what each means)."""
    check_flag("guide.zero_init", zero_init)
    changed = {k: v for k, v, d in (("blocks", blocks, None), ("inject", inject, "all"),
                                    ("zero_init", zero_init, True)) if v != d}
    _unet_only(teacher, changed, "set the copy's depth with guide.layers (its projections "
                                 "are always zero-initialised)")
    return ControlNetGuide(teacher, shared, layers=layers, **changed)


@GUIDES.register("none", "no guidance: the plain encoder + head trained with CE only (baseline)")
def no_guide() -> None:
    """The baseline: `build_detector` builds no teacher, guide, filter or weight module."""
    return None


@GUIDES.register("adapter", "light conv pyramid to the same residual shapes, zero-initialised")
def adapter_guide(teacher: nn.Module, shared: bool = True, width: int = 64, depth: int = 1,
                  zero_init: bool = True) -> AdapterGuide:
    """`depth` convs per pyramid level, `zero_init` the 1x1 projections' init (UNet teachers)."""
    check_flag("guide.zero_init", zero_init)
    return AdapterGuide(teacher, shared, width, depth, zero_init)
