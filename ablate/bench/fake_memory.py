"""Peak memory of a piece of training on fake tensors: MemTracker made to work on a frozen
teacher with a trainable guide, and what torch 2.14 needs for modules of fake tensors.

Tricks, found the hard way (torch 2.14, diffusers 0.42):
- `Module._apply` (`.to()`, `to_empty`, a dtype cast) always swaps FakeTensor parameters
  with `torch.utils.swap_tensors`, which refuses a tensor that has a weakref, and the fake
  mode's converter memo is a WeakValueDictionary holding one on every fake tensor (torch
  issues #148977, #170781). While building and configuring, `strong_memo` makes the memo a
  plain dict (no weakrefs), a fresh one per phase (views it kept alive would raise a
  tensor's use count, which swapping also refuses), then a weak one again before
  tracking, or freed activations would never be seen as freed.
- A tracked step leaves graph nodes behind (MemTracker's module hooks) that hold the
  parameters, so `swap_tensors` refuses them for good: `format_kept` makes the `.to()` of a
  later configuration (same memory format, other levers) return the modules as they are.
- `fill_random` (random-init teachers) skips fake modules: it draws Python ints from
  tensors. Noise schedulers are built on real tensors (`real_schedulers`): SD3's and Flux's
  read `.item()`s of their sigmas while they are made.
- MemTracker hooks every parameter of a module it sees run, and `register_hook` raises on
  the frozen teacher's; a net called once per branch looks like a second iteration to it,
  which raises too; its per-module snapshots cost a deep copy per module call. `_Tracker`
  hooks the trainable parameters once, up front, and keeps the global peak only.
- `reset_mod_stats()` clears per-module statistics but not the tracker's peak, so every
  phase gets a fresh tracker (`track`) instead of one tracker reset between steps.
- CPU autocast keeps group/layer/RMS norm and softmax in bf16 where CUDA's computes them in
  fp32 (ATen's AT_FORALL_FP32 lists): `_cuda_autocast_policy` casts their inputs to fp32
  while tracking, as CUDA's policy does.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import SchedulerMixin
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily
from torch.distributed._tools.mem_tracker import _TOTAL_KEY, MemTracker, _MemRefType
from torch.utils._pytree import tree_map_only

from ablate.model.detector import DiffusionFakeDetector
from ablate.model.latent_cache import vae_posterior


@dataclass(frozen=True)
class Breakdown:
    """Bytes at one peak, by what holds them; `peak` is the tracker's total there."""

    weights: int = 0
    grads: int = 0
    optimizer: int = 0
    activations: int = 0
    temporaries: int = 0
    inputs: int = 0
    peak: int = 0

    @classmethod
    def from_snapshot(cls, snapshot: dict[torch.device, dict[Any, int]]) -> Breakdown:
        """MemTracker's peak snapshot (one device) -> the breakdown."""
        snap = next(iter(snapshot.values()), {})
        kind = _MemRefType
        return cls(weights=snap.get(kind.PARAM, 0) + snap.get(kind.BUFFER, 0),
                   grads=snap.get(kind.GRAD, 0), optimizer=snap.get(kind.OPT, 0),
                   activations=snap.get(kind.ACT, 0), temporaries=snap.get(kind.TEMP, 0),
                   inputs=snap.get(kind.OTH, 0), peak=snap.get(_TOTAL_KEY, 0))

    def with_optimizer_state(self, old: int, new: int) -> Breakdown:
        """The same moment with `old` bytes of optimiser state held as `new` bytes."""
        return replace(self, optimizer=self.optimizer - old + new, peak=self.peak - old + new)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@contextlib.contextmanager
def strong_memo(mode: FakeTensorMode | None) -> Iterator[None]:
    """Module `.to()` under fake mode (see the module docstring): a fresh strong memo while
    inside, an empty weak one after (nothing to do on real tensors: `mode` None)."""
    if mode is None:
        yield
        return
    converter = mode.fake_tensor_converter.meta_converter
    converter.tensor_memo = {}
    try:
        yield
    finally:
        converter.tensor_memo = weakref.WeakValueDictionary()


@contextlib.contextmanager
def real_schedulers() -> Iterator[None]:
    """Noise schedulers are made of real tensors (a few thousand numbers) even under fake
    mode: some read values while they are made (`FlowMatchEulerDiscreteScheduler` takes
    `.item()`s of its sigmas), which a fake tensor cannot give."""
    classes, todo = [], [SchedulerMixin]
    while todo:
        cls = todo.pop()
        classes.append(cls)
        todo.extend(cls.__subclasses__())
    inits = {cls: cls.__dict__["__init__"] for cls in classes if "__init__" in cls.__dict__}
    for cls, init in inits.items():
        cls.__init__ = _unfaked(init)
    try:
        yield
    finally:
        for cls, init in inits.items():
            cls.__init__ = init


def _unfaked(init: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(init)
    def run(*args: Any, **kwargs: Any) -> None:
        with unset_fake_temporarily():
            init(*args, **kwargs)
    return run


class _Tracker(MemTracker):
    """MemTracker for a model with frozen parts and nets called once per branch, keeping only
    the global peak: the trainable parameters' gradient hooks go in once, up front (its own
    per-module hooks hook frozen parameters too, which raises), and no per-module snapshot
    is taken (a deep copy per module call, and a module called twice in one step raises)."""

    def hook_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Gradients of `params` count as GRAD (else as the TEMP they are created as)."""
        def grad_hook(grad: Tensor) -> None:
            self._update_and_maybe_create_winfos(grad, _MemRefType.GRAD)

        for p in params:
            self._param_to_grad_hook_handles[p] = (
                p.register_hook(grad_hook),
                p.register_post_accumulate_grad_hook(lambda q: grad_hook(q.grad)))

    def _pre_fw_hook(self, module: nn.Module, inputs: Any) -> None:
        if self._mod_tracker.is_bw and self._ac_mod is None:  # checkpointing recomputes
            self._ac_mod, self._in_ac = weakref.ref(module), True

    def _post_fw_hook(self, module: nn.Module, inputs: Any, outputs: Any) -> None:
        if self._mod_tracker.is_bw and self._ac_mod is not None and self._ac_mod() is module:
            self._ac_mod, self._in_ac = None, False

    def _pre_bw_hook(self, module: nn.Module, args: Any) -> None:
        pass

    def _post_bw_hook(self, module: nn.Module, args: Any) -> None:
        pass

    def _update_peak_stats(self, peak_state: Any) -> None:
        for dev, snap in self._curr_mem_snap.items():
            if self._peak_mem.get(dev, 0) < snap[_TOTAL_KEY]:
                self._peak_mem[dev] = snap[_TOTAL_KEY]
                self._peak_mem_snap[dev] = dict(snap)


# ops CUDA's autocast runs in fp32 (ATen's AT_FORALL_FP32 lists) that CPU autocast leaves in
# bf16, and that hold large activations here: norms' outputs, attention probabilities
_FP32_ON_CUDA = ((F, "group_norm"), (F, "layer_norm"), (F, "rms_norm"), (F, "softmax"),
                 (F, "log_softmax"), (Tensor, "softmax"), (Tensor, "log_softmax"))


@contextlib.contextmanager
def _cuda_autocast_policy() -> Iterator[None]:
    """Under CPU autocast, `_FP32_ON_CUDA` get fp32 inputs, as CUDA's `fp32` policy casts
    them (an explicit `dtype=` is left alone). Patched on the functions themselves, not a
    TorchFunctionMode: the autograd engine does not carry modes into backward, where
    checkpointing recomputes the forward and checks it made the same dtypes."""
    patched = []
    for owner, name in _FP32_ON_CUDA:
        if hasattr(owner, name):
            patched.append((owner, name, owner.__dict__.get(name)))
            setattr(owner, name, _in_fp32(getattr(owner, name)))
    try:
        yield
    finally:
        for owner, name, own in reversed(patched):
            if own is None:
                delattr(owner, name)  # inherited (TensorBase's method): uncover it
            else:
                setattr(owner, name, own)


def _in_fp32(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        if "dtype" not in kwargs and torch.is_autocast_enabled("cpu"):
            args, kwargs = tree_map_only(Tensor, _fp32, (args, kwargs))
        return func(*args, **kwargs)
    return run


def _fp32(t: Tensor) -> Tensor:
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


class WarmCache:
    """The latent cache with every image in it: posteriors [N, 2C, h', w'] arrive on the
    device (their values are never read here)."""

    def posteriors(self, teacher: nn.Module, images: Tensor, device: torch.device) -> Tensor:
        f = teacher.vae_factor
        n, _, h, w = images.shape
        return torch.empty(n, 2 * teacher.latent_channels, h // f, w // f, device=device)


class ColdCache:
    """The latent cache with none of them: the VAE encodes all N images on the device."""

    def posteriors(self, teacher: nn.Module, images: Tensor, device: torch.device) -> Tensor:
        return vae_posterior(teacher, images)  # [N, 2C, h', w']


def track(run: Callable[[], Any], *external: Any) -> Breakdown:
    """The peak breakdown of `run()`, counting `external` (modules, optimiser, tensors)."""
    tracker = _Tracker()
    tracker.track_external(*external)
    tracker.hook_gradients(p for m in external if isinstance(m, nn.Module)
                           for p in m.parameters() if p.requires_grad)
    with tracker, _cuda_autocast_policy():
        run()
    return Breakdown.from_snapshot(tracker.get_tracker_snapshot("peak"))


@contextlib.contextmanager
def format_kept(detector: DiffusionFakeDetector, kept: bool) -> Iterator[None]:
    """`configure_detector` on modules already in its memory format (`kept`): their `.to()`
    returns them as they are. It must: a tracked step leaves graph nodes behind (MemTracker's
    module hooks) that hold the parameters, so `swap_tensors` refuses them from then on."""
    modules = [detector.classifier]
    if kept and detector.guided:
        modules += [detector.filter_source, detector.filter_target, detector.weight_source,
                    detector.weight_target, detector.guide, detector.teacher.denoiser]
    for module in modules if kept else []:
        module.__dict__["to"] = lambda *_, _module=module, **__: _module
    try:
        yield
    finally:
        for module in modules:
            module.__dict__.pop("to", None)
