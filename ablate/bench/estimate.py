"""`ablate bench --estimate-memory`: the peak GPU memory of a recipe's training step and of
its evaluation, estimated on a CPU with no GPU and no weights (architecture only).

Method. The recipe is composed with its weights switched off (`teacher.random_init=true`,
`backbone.random_init=true`, no paths, no LoRA: `architecture_only`), the detector and
its optimiser are built under a `FakeTensorMode` on the CPU device (tensors with shapes,
dtypes and storage sizes but no data: a 2.6 B-parameter teacher costs no memory), and the
real step, `ablate.train.update` (what `train_step` runs, without its host reads), is
tracked by `torch.distributed._tools.mem_tracker.MemTracker`. Its categories at the peak
give the breakdown: weights (PARAM + BUFFER), gradients (GRAD), optimiser state (OPT),
activations (ACT), backward temporaries (TEMP), the batch on the device (inputs: the
tensors handed to `track_external`). Bytes are counted per storage, as an allocator sees
them. The phases of a training run, each with its own tracker:

  step        the steady step, under the row's `Speed`: the optimiser state and the last
              step's gradients present (made by a zero-gradient `optimizer.step()`), the
              latent cache warm
  encode      the first epoch's extra: the VAE encodes the batch's 3B images (every one new)
              right after the gradients are freed (`cached_posteriors`, latent cache on)
  validation  `score`'s per-batch forward of the classifier (no_grad, its batch of 64), the
              weights and optimiser state still on the device (train() frees the gradients)
  eval        `ablate eval` alone: the classifier (fp32, no autocast) at the eval batch size

How modules of fake tensors are built, configured and tracked (and what torch 2.14 needs
for that) is `fake_memory`'s docstring. `.item()`/`float()` of a fake tensor raises (data
dependent): hence `ablate.train.update`, split out of `train_step`. 8-bit AdamW
(bitsandbytes) cannot run on fake tensors: the step runs with plain AdamW and the
optimiser state is swapped for `adamw8bit_state_bytes` (bitsandbytes' `init_state`).

Limits (what it cannot see or only stands in for; see `MARGIN_FRACTION`, `CUDA_CONTEXT_GB`):
- Autocast runs on the CPU device, standing in for CUDA's. CPU autocast keeps group/layer/
  RMS norm, softmax, exp, pow, sum and upsampling in bf16 where CUDA's computes them in
  fp32; the norms and softmax get fp32 inputs as on CUDA (`fake_memory`), the rest (exp,
  pow, sum, upsampling: small here, or cast by diffusers itself) is not modelled.
- SDPA on the CPU picks its CPU flash kernel (output + logsumexp saved), as CUDA's flash /
  memory-efficient kernels do; their workspaces are not counted. Neither are cuDNN and
  cuBLAS workspaces, the caching allocator's block rounding and fragmentation (reserved >
  allocated), or the CUDA context outside the allocator: they are the margin.
- `train.compile` is not modelled (eager step); `auto` settings resolve as on a GPU with
  bf16 (precision bf16, channels-last on).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensorMode

from ablate.bench.fake_memory import (
    Breakdown,
    ColdCache,
    WarmCache,
    format_kept,
    real_schedulers,
    strong_memo,
    track,
)
from ablate.bench.run import synthetic_batch
from ablate.core.schema import group_setting
from ablate.model.build import build_detector
from ablate.model.detector import DiffusionFakeDetector
from ablate.model.speed import Speed, configure_detector, memory_format
from ablate.recipe import compose, is_guided
from ablate.registry import registry
from ablate.scoring import score
from ablate.train import cached_posteriors, make_optimizer, update

GB = 2**30
MARGIN_FRACTION = 0.10
"""Of the tracked peak: the caching allocator's rounding (512 B blocks, 2 MB segments) and
fragmentation (reserved > allocated, typically 5-20 % in training), cuDNN / cuBLAS and
flash-attention workspaces. A judgement, not a measurement: no GPU calibrated it."""
CUDA_CONTEXT_GB = 0.5
"""The CUDA context and kernel images, outside PyTorch's allocator (~0.3-0.6 GB)."""
MARGIN_TERMS = (f"{MARGIN_FRACTION:.0%} of the peak for allocator rounding + fragmentation "
                f"and cuDNN/cuBLAS/attention workspaces, + {CUDA_CONTEXT_GB:g} GB CUDA context")
EIGHT_BIT_MIN_SIZE = 4096  # bitsandbytes' min_8bit_size: smaller tensors keep fp32 moments
EIGHT_BIT_BLOCK = 256  # bitsandbytes' blockwise quantisation: one fp32 absmax per block
VALIDATION_BATCH = inspect.signature(score).parameters["batch_size"].default
INPUTS = ("image", "source", "target", "label")  # what `update` moves to the device


@dataclass(frozen=True)
class MemoryEstimate:
    """One recipe's estimate. `train`: the largest of `phases`; `needs_gb`: what must fit on
    the card (the larger of train and eval peaks, plus the margin)."""

    train: Breakdown
    eval: Breakdown
    trainable_params: int
    needs_gb: float
    phase: str = "step"
    phases: dict[str, Breakdown] = field(default_factory=dict)
    margin_gb: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"train": self.train.as_dict(), "eval": self.eval.as_dict(),
                "trainable_params": self.trainable_params, "needs_gb": self.needs_gb,
                "phase": self.phase, "margin_gb": self.margin_gb,
                "phases": {k: v.as_dict() for k, v in self.phases.items()}}


def margin_bytes(peak: int) -> int:
    """What the estimate cannot see, on top of a tracked peak (`MARGIN_TERMS`)."""
    return int(peak * MARGIN_FRACTION + CUDA_CONTEXT_GB * GB)


def adamw8bit_state_bytes(numels: Iterable[int]) -> int:
    """bitsandbytes' AdamW8bit state for trainable tensors of `numels` elements, as its
    `Optimizer2State.init_state` allocates it (bitsandbytes 0.50, optim/optimizer.py lines
    492-533): a tensor of >= min_8bit_size (4096) elements gets two uint8 moments (`state1`,
    `state2`) and two fp32 `absmax` vectors of one entry per 256-element block; a smaller one
    two fp32 moments. `step` is a Python int; the two 256-entry fp32 quantisation maps
    (`qmap1`, `qmap2`) are shared by every tensor, counted once."""
    total = 0
    for n in numels:
        if n >= EIGHT_BIT_MIN_SIZE:
            total += 2 * n + 2 * 4 * -(-n // EIGHT_BIT_BLOCK)
        else:
            total += 2 * 4 * n
    return total + 2 * 256 * 4


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the tensors an optimiser keeps (AdamW: two moments and a step per tensor)."""
    return sum(v.numel() * v.element_size() for s in optimizer.state.values()
               for v in s.values() if torch.is_tensor(v))


# ----------------------------------------------------------------- the recipe, weightless


def architecture_only(overrides: list[str]) -> list[str]:
    """`overrides` plus what makes the recipe read no file: random-init teacher and
    encoder where the variant has that switch, no weight paths, no LoRA."""
    cfg = compose(list(overrides))
    extra = ["backbone.pretrained_path=null"]
    if "random_init" in registry("backbone").get(cfg.backbone.name).arguments():
        extra.append("backbone.random_init=true")
    if is_guided(cfg):
        extra += [f"teacher.{key}=null" for key in ("path", "lora", "vae_path", "clip_l_path",
                                                     "clip_g_path", "t5_path")
                  if key in cfg.teacher]
        if "random_init" in registry("teacher").get(cfg.teacher.name).arguments():
            extra.append("teacher.random_init=true")
    return [*overrides, *extra]


def gpu_speed(train_cfg: DictConfig) -> Speed:
    """The recipe's speed settings as a GPU run resolves them (`auto`: bf16 autocast and
    channels-last on), eager (compile is not modelled)."""
    speed = Speed.from_config(train_cfg, torch.device("cpu"))
    precision = group_setting(train_cfg, "train.precision")
    channels = group_setting(train_cfg, "train.channels_last")
    return replace(speed, precision="bf16" if precision == "auto" else speed.precision,
                   channels_last=True if channels == "auto" else speed.channels_last,
                   compile=False)


def architecture_key(cfg: DictConfig) -> str:
    """Recipes with the same key build the same modules (the train group only says how
    they are trained)."""
    return OmegaConf.to_yaml({k: v for k, v in cfg.items() if k not in ("train", "run")})


# ----------------------------------------------------------------- building and measuring


@dataclass
class Built:
    """A detector of one architecture, its AdamW optimiser (state present) and a batch."""

    detector: DiffusionFakeDetector
    optimizer: torch.optim.Optimizer
    batch: dict[str, Any]
    mode: FakeTensorMode | None
    encode: Breakdown | None = None  # the first epoch's VAE encode, measured once
    memory_format: torch.memory_format | None = None  # set by the first configuration

    @property
    def trainable(self) -> list[nn.Parameter]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    @property
    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.trainable)

    def inputs(self) -> list[Tensor]:
        return [self.batch[k] for k in INPUTS]

    @property
    def nets(self) -> list[nn.Module]:
        """The teacher's denoiser and the guide's networks (none without guidance)."""
        d = self.detector
        return [d.teacher.denoiser, *d.guide.nets] if d.guided else []


def build(cfg: DictConfig, fake: bool = True) -> Built:
    """The detector of `cfg` (fake tensors unless `fake=False`: real CPU tensors, for
    calibration), an AdamW optimiser whose state exists, and a synthetic batch."""
    mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else None
    quiet = logging.getLogger("ablate.model.backbone")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "random init": the point here, not news
    try:
        with mode or contextlib.nullcontext(), strong_memo(mode), real_schedulers():
            detector = build_detector(cfg)
            detector.train()
    finally:
        quiet.setLevel(level)
    with mode or contextlib.nullcontext():
        params = [p for p in detector.parameters() if p.requires_grad]
        # plain AdamW whatever the recipe says: 8-bit state is counted, not run
        optimizer = make_optimizer(_with_optimizer(cfg, "adamw"), params, fused=True)
        for p in params:  # state as after a step: moments, step, and the last gradients
            p.grad = torch.zeros_like(p)
        optimizer.step()
        batch = synthetic_batch(cfg.image_size, cfg.train.batch_size, cfg.seed)
    return Built(detector, optimizer, batch, mode)


def _with_optimizer(cfg: DictConfig, kind: str) -> DictConfig:
    out = cfg.copy()
    out.train.optimizer = kind
    return out


def measure(built: Built, cfg: DictConfig, speed: Speed) -> dict[str, Breakdown]:
    """The training phases of one row (`speed` as the step runs it): step, encode (latent
    cache on, guided), validation. The optimiser state is the recipe's (8-bit counted)."""
    d, opt = built.detector, built.optimizer
    fmt = memory_format(speed)
    if built.memory_format not in (None, fmt):
        raise RuntimeError("a fake detector keeps the memory format it was first given")
    with built.mode or contextlib.nullcontext():
        with strong_memo(built.mode), format_kept(d, built.memory_format is not None):
            configure_detector(d, speed)
        built.memory_format = fmt
        cache = WarmCache() if speed.latent_cache else None
        step = track(lambda: update(d, built.batch, opt, torch.device("cpu"),
                                    cfg.train.grad_clip, speed, cache), d, opt, *built.inputs())
        phases = {"step": step, "validation": _validation(built)}
        if speed.latent_cache and d.guided:
            if built.encode is None:
                built.encode = _encode(built)
            phases["encode"] = built.encode
    if cfg.train.optimizer == "adamw8bit":
        old = state_bytes(opt)
        new = adamw8bit_state_bytes(p.numel() for p in built.trainable)
        phases = {k: v.with_optimizer_state(old, new) for k, v in phases.items()}
    return phases


def _encode(built: Built) -> Breakdown:
    """`cached_posteriors` with nothing cached, right after the gradients are freed."""
    d, opt = built.detector, built.optimizer
    grads = [p.grad for p in built.trainable]
    opt.zero_grad(set_to_none=True)
    cpu = torch.device("cpu")
    try:
        return track(lambda: cached_posteriors(d, built.batch, ColdCache(), cpu), d, opt,
                     *built.inputs())
    finally:
        for p, g in zip(built.trainable, grads, strict=True):
            p.grad = g


def _validation(built: Built) -> Breakdown:
    """`score`'s forward of one validation batch, the weights and optimiser state still
    there; train() frees the last step's gradients before it validates."""
    classifier = built.detector.classifier
    size = built.batch["image"].shape[-1]
    images = torch.empty(VALIDATION_BATCH, 3, size, size)  # [N, 3, S, S]
    grads = [p.grad for p in built.trainable]
    built.optimizer.zero_grad(set_to_none=True)
    try:
        return track(lambda: _score_batch(classifier, images), built.detector,
                     built.optimizer, images)
    finally:
        for p, g in zip(built.trainable, grads, strict=True):
            p.grad = g


def evaluation(built: Built, batch_size: int) -> Breakdown:
    """`ablate eval`: the classifier alone (fp32, as `load_classifier` builds it, no
    autocast), one batch of `batch_size` images under no_grad."""
    classifier = built.detector.classifier
    size = built.batch["image"].shape[-1]
    grads = [p.grad for p in classifier.parameters()]
    kept = classifier.autocast_dtype
    with built.mode or contextlib.nullcontext():
        images = torch.empty(batch_size, 3, size, size)  # [N, 3, S, S]
        classifier.zero_grad(set_to_none=True)  # a loaded classifier has no gradients
        classifier.autocast_dtype = None
        try:
            return track(lambda: _score_batch(classifier, images), classifier, images)
        finally:
            classifier.autocast_dtype = kept
            for p, g in zip(classifier.parameters(), grads, strict=True):
                p.grad = g


@torch.no_grad()
def _score_batch(classifier: nn.Module, images: Tensor) -> Tensor:
    """What `ablate.scoring.score` does per batch: eval mode, sigmoid of the logits [N]."""
    was = classifier.training
    classifier.eval()
    try:
        return torch.sigmoid(classifier(images)).float()
    finally:
        classifier.train(was)


# ----------------------------------------------------------------- one recipe


def with_batch(overrides: list[str], batch: int | None) -> list[str]:
    return [*overrides, f"train.batch_size={batch}"] if batch else list(overrides)


def summarise(phases: dict[str, Breakdown], eval_: Breakdown,
              trainable: int) -> MemoryEstimate:
    """The largest training phase, and what must fit: the larger peak plus the margin."""
    phase = max(phases, key=lambda k: phases[k].peak)
    train = phases[phase]
    peak = max(train.peak, eval_.peak)
    margin = margin_bytes(peak)
    return MemoryEstimate(train=train, eval=eval_, trainable_params=trainable,
                          needs_gb=(peak + margin) / GB, phase=phase, phases=phases,
                          margin_gb=margin / GB)


def estimate_recipe(overrides: list[str], batch: int | None = None) -> MemoryEstimate:
    """The recipe as composed (no lever changes) at training batch `batch` (default: its
    train.batch_size); architecture only, no weights read. For the sweep's preflight."""
    cfg = compose(architecture_only(with_batch(list(overrides), batch)))
    built = build(cfg)
    phases = measure(built, cfg, gpu_speed(cfg.train))
    return summarise(phases, evaluation(built, VALIDATION_BATCH), built.trainable_params)
