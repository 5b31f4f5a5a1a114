"""Precision and kernel settings of a run (`train.precision`, `train.channels_last`, ...).

None of them changes what a step computes beyond floating-point rounding, so all
have safe defaults: bf16 autocast and channels-last only on a GPU (`auto`),
PyTorch's scaled-dot-product attention everywhere, gradient checkpointing and
`torch.compile` only when asked for. `Speed.straightforward()` is the reference
the benchmark and the equivalence test compare against: fp32, no caches, one
branch after the other, a for-loop optimiser.

The teacher is shared and frozen: settings applied to it (attention kernel,
memory format, checkpointing) are numerically neutral, so a teacher reused by
another detector is not changed in any way that matters.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ablate.core.errors import AblateError
from ablate.core.identity import resolve_precision
from ablate.core.schema import group_setting

PRECISIONS = ("auto", "fp32", "bf16")
ATTENTION = ("sdpa", "math")
_AUTO_FLAGS = ("auto", True, False)


@dataclass(frozen=True)
class Speed:
    """Resolved settings (what `auto` became on this device)."""

    precision: str = "fp32"  # fp32 | bf16 (autocast; weights and optimiser stay fp32)
    channels_last: bool = False
    attention: str = "sdpa"  # sdpa: torch SDPA kernels | math: diffusers' explicit softmax; UNets only: SD3/Flux keep their own SDPA processors
    grad_checkpointing: bool = False  # encoder (timm), filters, guide, teacher: recompute, don't store
    branch_backward: bool = False  # each branch backpropagated (and freed) before the next
    compile: bool = False  # torch.compile of backbone, filters, guide and teacher UNet
    latent_cache: bool = True  # VAE posteriors once per image (model/latent_cache.py)
    batched: bool = True  # both branches in one 2B teacher call and one guide call
    fused_optimizer: bool = True  # one fused Adam(W) kernel, not a Python loop over tensors
    latent_cache_dir: str | None = None
    latent_cache_mb: float = 8192
    loader_workers: int = 0  # processes that load and augment batches ahead of the step
    pin_memory: bool = False  # page-locked batches: an asynchronous copy to the GPU

    @classmethod
    def from_config(cls, train_cfg: Any, device: torch.device) -> Speed:
        """From `cfg.train`; keys a recipe lacks take their defaults (ablate/core/schema.py)."""
        def get(key: str) -> Any:
            return group_setting(train_cfg, f"train.{key}")

        precision = get("precision")
        if precision not in PRECISIONS:
            raise AblateError(f"train.precision must be one of {', '.join(PRECISIONS)}, "
                              f"not {precision!r}")
        on_gpu = device.type == "cuda"
        precision = resolve_precision(precision, on_gpu, on_gpu and torch.cuda.is_bf16_supported())
        attention = get("attention")
        if attention not in ATTENTION:
            raise AblateError(f"train.attention must be one of {', '.join(ATTENTION)}, "
                              f"not {attention!r}")
        workers = get("loader_workers")
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
            raise AblateError(f"train.loader_workers must be a whole number >= 0, not {workers!r}")
        return cls(
            precision=precision,
            channels_last=_auto_flag(get, "channels_last", device),
            attention=attention,
            grad_checkpointing=bool(get("grad_checkpointing")),
            branch_backward=bool(get("branch_backward")),
            compile=bool(get("compile")),
            latent_cache=bool(get("latent_cache")),
            latent_cache_dir=get("latent_cache_dir"),
            latent_cache_mb=float(get("latent_cache_mb")),
            loader_workers=workers,
            pin_memory=_auto_flag(get, "pin_memory", device),
        )

    @classmethod
    def straightforward(cls, attention: str = "sdpa") -> Speed:
        """The plain way: fp32, no latent cache, branches one after the other."""
        return cls(latent_cache=False, batched=False, fused_optimizer=False, attention=attention)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.precision == "bf16" else None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _auto_flag(get: Any, name: str, device: torch.device) -> bool:
    """`train.<name>`: auto (on a GPU only), true or false."""
    value = get(name)
    if value not in _AUTO_FLAGS:
        raise AblateError(f"train.{name} must be auto, true or false, not {value!r}")
    return device.type == "cuda" if value == "auto" else bool(value)


@contextlib.contextmanager
def autocast(device: torch.device, speed: Speed | None) -> Iterator[None]:
    """bf16 autocast when the settings ask for it, else nothing."""
    dtype = speed.autocast_dtype if speed is not None else None
    if dtype is None:
        yield
        return
    with torch.autocast(device.type, dtype=dtype):
        yield


def memory_format(speed: Speed | None) -> torch.memory_format:
    return torch.channels_last if speed is not None and speed.channels_last else torch.contiguous_format


def configure_classifier(classifier: nn.Module, speed: Speed) -> None:
    """Encoder + head: memory format, inference autocast, optional compile."""
    classifier.to(memory_format=memory_format(speed))
    classifier.autocast_dtype = speed.autocast_dtype  # used by Classifier.forward (evaluation)
    if getattr(classifier.backbone, "is_vit", False):  # a timm ViT: its blocks recompute (a
        # CNN's would run BatchNorm twice, moving its statistics: left alone)
        classifier.backbone.model.set_grad_checkpointing(speed.grad_checkpointing)
    if speed.compile:
        _compile(classifier.backbone)


def configure_detector(detector: nn.Module, speed: Speed) -> None:
    """Every setting, both ways (on or off), except compile, which is only ever switched
    on: run a reference step under `torch.compiler.set_stance("force_eager")` instead."""
    configure_classifier(detector.classifier, speed)
    if not detector.guided:  # the baseline: nothing else was built
        return
    fmt = memory_format(speed)
    detector.checkpoint_filters = speed.grad_checkpointing
    for module in (detector.filter_source, detector.filter_target, detector.weight_source,
                   detector.weight_target, detector.guide, detector.teacher.denoiser):
        module.to(memory_format=fmt)
    nets = [detector.teacher.denoiser, *detector.guide.nets]
    for net in nets:
        if _is_unet(net):  # transformers keep their own (joint) SDPA processors
            net.set_attn_processor(_processor(speed.attention))
        if getattr(net, "_supports_gradient_checkpointing", False):
            if speed.grad_checkpointing:
                net.enable_gradient_checkpointing()
            else:
                net.disable_gradient_checkpointing()
    if speed.compile:
        for module in (detector.filter_source, detector.filter_target, *detector.guide.nets,
                       detector.teacher.denoiser):
            _compile(module)


def _compile(module: nn.Module) -> None:
    """`nn.Module.compile` in place (state_dict keys unchanged), once per module."""
    if getattr(module, "_compiled_call_impl", None) is None:
        module.compile()


def tune_kernels(device: torch.device) -> None:
    """cuDNN picks the fastest convolution algorithm per shape (training shapes repeat)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def _is_unet(net: nn.Module) -> bool:
    from diffusers import ControlNetModel, UNet2DConditionModel

    return isinstance(net, UNet2DConditionModel | ControlNetModel)


def _processor(kind: str) -> Any:
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    return AttnProcessor2_0() if kind == "sdpa" else AttnProcessor()


def reference_stance() -> contextlib.AbstractContextManager:
    """Run compiled modules eagerly (for the straightforward reference step)."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()
