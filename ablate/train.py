"""`ablate train`: one recipe in, one trained detector (a run folder) out."""

from __future__ import annotations

import logging
import random
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from ablate.checkpoint import BASE_SHA, save_run
from ablate.core.errors import AblateError
from ablate.core.schema import setting
from ablate.core.selection import PROXY_CURVE, VAL_CURVE, proxy_name, rule, unused_proxy
from ablate.data.loader import make_loader, train_val_proxy
from ablate.device import host_peak_mb, pick_device, reset_host_peak, supports_dtype
from ablate.model.build import build_detector
from ablate.model.detector import DiffusionFakeDetector
from ablate.model.latent_cache import LatentCache
from ablate.model.speed import (
    Speed,
    autocast,
    configure_detector,
    memory_format,
    tune_kernels,
)
from ablate.model.teachers import parse_dtype as teacher_dtype
from ablate.recipe import is_guided, recipe_hash
from ablate.schedule import eval_every_steps, total_steps
from ablate.scoring import Selection, score, validation_point
from ablate.sharding import Shard, average_gradients, average_terms, same_start, sync_batch_norm
from ablate.tracking import write_curves
from ablate.train_state import TrainState, capture_rng, load_state, restore_rng, save_state

log = logging.getLogger(__name__)


class TrainingDiverged(AblateError):
    """A loss went NaN or infinite: recorded as the run's failure, not a crash."""


@dataclass
class RunResult:
    folder: Path
    steps: int
    wall_s: float
    step_time_s: float
    params_trainable: int
    params_inference: int
    peak_mem_mb: float
    curves: list[tuple[int, str, float]] = field(default_factory=list)
    selection: dict | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


OPTIMIZERS = ("adam", "adamw", "adamw8bit")


def make_optimizer(
    cfg: DictConfig, params: list[torch.nn.Parameter], fused: bool = False
) -> torch.optim.Optimizer:
    """`fused`: the same update as one kernel per step instead of a loop over tensors.

    `adamw8bit` keeps both Adam moments as blockwise-quantised uint8 (bitsandbytes): 2 bytes
    per parameter instead of 8, e.g. ~2.2 GB less for the released recipe's 725 M trainable
    parameters. It changes the numbers (quantisation), so it is a result setting.
    """
    kind = cfg.train.optimizer
    if kind not in OPTIMIZERS:
        raise AblateError(f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, not {kind!r}")
    lr, decay = cfg.train.lr, cfg.train.weight_decay
    if kind == "adamw8bit":
        return adamw_8bit(params, lr, decay)
    optim = torch.optim.Adam if kind == "adam" else torch.optim.AdamW
    return optim(params, lr=lr, weight_decay=decay, fused=fused or None)


def adamw_8bit(params: list[torch.nn.Parameter], lr: float,
               weight_decay: float) -> torch.optim.Optimizer:
    """bitsandbytes' AdamW8bit; tensors under 4096 elements keep fp32 moments (its default)."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise AblateError("train.optimizer=adamw8bit needs bitsandbytes: pip install "
                          "'ablate[8bit]' (or use train.optimizer=adamw)") from None
    return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay)


def cycle(loader, done: int = 0) -> Iterator[dict]:  # noqa: ANN001
    """Endless batches; each pass over the loader is one epoch. The first `done` batches
    (what a resumed run already trained on) are skipped without loading them."""
    first = _first_pass(loader, done)
    while True:
        empty = True
        for batch in first:
            empty = False
            yield batch
        if empty:
            raise AblateError("the training set is empty; check data settings")
        first = loader


def _first_pass(loader, done: int) -> Iterable:  # noqa: ANN001
    """What is left of the epoch in which batch `done` + 1 falls: a loader with `seek`
    (make_loader's) moves its sampler there, a list is sliced."""
    if hasattr(loader, "seek"):
        loader.seek(done)  # also for done=0: a loader reused by a second run starts over
        return loader
    if not done:
        return loader
    if isinstance(loader, Sequence) and len(loader):
        return loader[done % len(loader):]
    raise AblateError(f"cannot resume on a {type(loader).__name__}: it cannot skip to batch "
                      f"{done + 1}; build the loader with ablate.data.loader.make_loader")


def count_params(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def train_step(
    detector: DiffusionFakeDetector, batch: dict, optimizer: torch.optim.Optimizer,
    device: torch.device, grad_clip: float | None, speed: Speed | None = None,
    cache: LatentCache | None = None, generator: torch.Generator | None = None,
    shard: Shard | None = None,
) -> dict[str, float]:
    """One optimiser step on one batch; returns each loss term as a float.

    `speed` (precision, memory format, batched branches) and `cache` (teacher
    latents) only change how fast the step runs; without them the step runs as
    configured on the modules, fp32, with a fresh VAE encode. With a `shard` (a
    data-parallel run) the gradients and the returned terms are means over all processes.
    """
    losses = update(detector, batch, optimizer, device, grad_clip, speed, cache, generator,
                    shard, check=raise_if_diverged)
    terms = {k: float(v.detach()) for k, v in losses.items()}
    return terms if shard is None else average_terms(terms, shard.world, device)


def update(
    detector: DiffusionFakeDetector, batch: dict, optimizer: torch.optim.Optimizer,
    device: torch.device, grad_clip: float | None, speed: Speed | None = None,
    cache: LatentCache | None = None, generator: torch.Generator | None = None,
    shard: Shard | None = None, check: Callable[[dict[str, torch.Tensor]], None] | None = None,
) -> dict[str, torch.Tensor]:
    """`train_step` without reading a value on the host: forward, `check(losses)` (a
    diverged loss moves no weight), backward, clip, optimiser step; returns the losses.

    Split out so that `ablate bench --estimate-memory` runs the very same step on fake
    tensors (shapes only), where the finiteness check and the float conversions, which
    need values, cannot run."""
    fmt = memory_format(speed)
    # the un-augmented frame feeds the weight targets; batches without one are un-augmented
    clean = batch.get("clean", batch["image"])
    names = ("image", "source", "target") if detector.guided else ("image",)
    moved = [batch[k].to(device, non_blocking=True).contiguous(memory_format=fmt) for k in names]
    images, sources, targets = moved if detector.guided else (moved[0], None, None)
    labels = batch["label"].to(device)
    # the last step's gradients go now, not after the forward: a model's worth less at peak
    optimizer.zero_grad(set_to_none=True)
    posteriors = None
    if cache is not None and detector.guided:
        posteriors = cached_posteriors(detector, batch, cache, device)  # [3B, 2C, h', w']
    # train.branch_backward: the losses come back backpropagated, each branch freed early
    by_branch = speed is not None and speed.branch_backward and detector.guided
    with autocast(device, speed):
        losses = detector.guided_losses(images, sources, targets, labels, generator,
                                        posteriors=posteriors,
                                        batched=speed.batched if speed is not None else True,
                                        clean=clean.to(device) if posteriors is None
                                        and detector.guided else None, backward=by_branch)
    if check is not None:
        check(losses)
    if not by_branch:
        losses["total"].backward()
    params = ([p for g in optimizer.param_groups for p in g["params"]]
              if shard is not None or grad_clip else [])
    if shard is not None:
        average_gradients(params, shard.world)
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    return losses


def raise_if_diverged(losses: dict[str, torch.Tensor]) -> None:
    """A NaN or infinite total loss ends the run before the optimiser moves a weight
    (one host sync per step)."""
    total = losses["total"]
    if not torch.isfinite(total):
        raise TrainingDiverged(
            f"loss became {total.item()} ({', '.join(f'{k}={v.item():.3g}' for k, v in losses.items())}); "
            "lower train.lr or enable train.grad_clip"
        )


def cached_posteriors(detector: DiffusionFakeDetector, batch: dict, cache: LatentCache,
                      device: torch.device) -> torch.Tensor:
    """The teacher's VAE posteriors [3B, 2C, h', w'] of a batch's un-augmented frames, sources
    and targets, through `cache` (keys hash the CPU tensors, before they move)."""
    clean = batch.get("clean", batch["image"])
    return cache.posteriors(detector.teacher,
                            torch.cat([clean, batch["source"], batch["target"]]), device)


def latent_cache_for(speed: Speed) -> LatentCache | None:
    """The run's teacher-latent cache, if the recipe wants one."""
    if not speed.latent_cache:
        return None
    return LatentCache(speed.latent_cache_dir, max_memory_mb=speed.latent_cache_mb)


def run_name(cfg: DictConfig) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return cfg.run.name or f"{stamp}-{recipe_hash(cfg)}"


def train(
    cfg: DictConfig, loader=None, val=None, progress: bool = True,  # noqa: ANN001
    on_eval: Callable[[int, float], None] | None = None,
    on_checkpoint: Callable[[int, float, Path], None] | None = None,
    resume_from: str | Path | None = None, shard: Shard | None = None,
    on_follow: Callable[[int], None] | None = None,
    on_step: Callable[[int, int, dict[str, float]], None] | None = None,
    proxy=None,  # noqa: ANN001
) -> RunResult:
    """Train `cfg` and save a run folder.

    Default data: the train split of `data.train` (guided) and its val split, on which the
    decision threshold is chosen, and on which, or on `train.proxy`'s val split, the exported
    checkpoint is chosen by the rule `train.select` (ablate/core/selection.py). Tests may
    pass `loader` (and optionally `val` and `proxy`) directly. `on_eval(step, signal)` is
    called after each validation with the value the rule compares steps by (the proxy's AUC
    under `proxy`, else the source val AUC): a sweep reports it to its scheduler.

    `on_checkpoint(step, signal, state_dir)` is called after `on_eval` with a temporary
    folder holding the full training state at `step` (ablate/train_state.py); it is
    deleted when the call returns, so copy it. `resume_from` (a copy of such a folder,
    of this recipe and seed) continues at step + 1; on the CPU the run then ends exactly
    as the uninterrupted one (same weights, curves and selection) with `train.latent_cache`
    off, and equal up to float rounding with it on (the in-memory cache dies with the
    process; images it held are encoded again, in other batches). Callbacks must not draw
    from torch's global RNG (the saved state does not see those draws).

    `shard`: this process's place in a data-parallel run (`ablate.sharding`, which starts
    the processes): it trains on its slice of each global batch; only process 0 validates,
    calls the callbacks and writes the run folder (the others return it unsaved). The
    others call `on_follow(step)` where process 0 validates (Ray Train's reports are
    collective: every process makes each one). `on_step(step, steps, loss_terms)` follows
    each optimiser step (a data-parallel launcher draws its progress bar from it).
    """
    seed_everything(cfg.seed)
    device = pick_device(cfg.train.device)
    check_teacher_precision(cfg, device)
    speed = Speed.from_config(cfg.train, device)
    if loader is None:
        train_set, val, proxy = train_val_proxy(cfg)
        loader = make_loader(train_set, cfg.train.batch_size, shuffle=True, seed=cfg.seed,
                             workers=speed.loader_workers, pin_memory=speed.pin_memory,
                             shard=shard)
    detector = build_detector(cfg)
    lead = shard is None or shard.rank == 0  # validates, selects, reports and saves
    if shard is not None:
        detector.shard = shard
        detector.classifier = sync_batch_norm(detector.classifier, device)
        if not lead:  # follows process 0's validation points, validates nothing
            on_eval, on_checkpoint = None, None
    detector = detector.to(device)
    if shard is not None:
        same_start(detector)  # on the device: NCCL broadcasts GPU tensors
    configure_detector(detector, speed)
    tune_kernels(device)
    cache = latent_cache_for(speed) if detector.guided else None
    params = [p for p in detector.parameters() if p.requires_grad]
    optimizer = make_optimizer(cfg, params, speed.fused_optimizer)
    steps = total_steps(cfg, len(loader))
    every = eval_every_steps(cfg.train, len(loader))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_host_peak()

    detector.train()
    identity = recipe_hash(cfg)
    selector = ValidationSelector(detector, val, cfg, device, proxy)
    unused = unused_proxy(cfg)
    if lead and unused:
        log.warning(unused)
    state = None
    if resume_from is not None:
        state = load_state(resume_from, identity, cfg.seed)
        resume(state, detector, optimizer, selector, len(loader))
    done = state.step if state else 0
    curves: list[tuple[int, str, float]] = list(state.curves) if state else []
    step_times: list[float] = list(state.step_times) if state else []
    wall_before = state.wall_s if state else 0.0
    batches = cycle(loader, done)
    bar = tqdm(range(done + 1, steps + 1), desc="train", unit="step", disable=not progress,
               initial=done, total=steps)
    if state is not None:  # last: nothing may draw between here and step done + 1
        restore_rng(state.rng)
        if shard is not None and device.type == "cuda" and state.rng.get("cuda"):
            # process 0 drew on its node's first GPU; every process draws as it did
            torch.cuda.set_rng_state(state.rng["cuda"][0], device)
    start = time.perf_counter()
    for step in bar:
        batch = next(batches)
        tick = time.perf_counter()
        terms = train_step(detector, batch, optimizer, device, cfg.train.grad_clip, speed, cache,
                           shard=shard)
        step_times.append(time.perf_counter() - tick)
        bar.set_postfix({k: f"{v:.3f}" for k, v in terms.items()}, refresh=False)
        if on_step is not None:
            on_step(step, steps, terms)
        if step % max(cfg.train.log_every, 1) == 0 or step == steps:
            curves += [(step, f"loss/{k}", v) for k, v in terms.items()]
        if val is not None and ((every and step % every == 0) or step == steps):
            # the next step zeroes them anyway: a model's worth of gradients freed while
            # validation runs (2.9 GB for official_code: 725 M trained fp32 parameters)
            optimizer.zero_grad(set_to_none=True)
            if not lead:
                if on_follow is not None:
                    on_follow(step)
                continue
            point = selector.evaluate(step)
            curves += eval_curves(point)
            if on_eval is not None:
                on_eval(step, point.signal)
            if on_checkpoint is not None:
                checkpoint(on_checkpoint, step, point.signal, identity, cfg.seed, TrainState(
                    step, len(loader), detector.trainable_state_dict(), optimizer.state_dict(),
                    selector.best_state, selector.selection, list(curves), list(step_times),
                    wall_before + time.perf_counter() - start, capture_rng(),
                    detector.classifier.frozen_base_sha))
    wall = wall_before + time.perf_counter() - start

    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:  # the process's peak resident memory since this run began: an upper bound
        peak = host_peak_mb()
    result = RunResult(
        folder=Path(cfg.run.out_dir) / run_name(cfg),
        steps=steps,
        wall_s=wall,
        step_time_s=float(np.median(step_times)),
        params_trainable=count_params(detector, trainable_only=True),
        params_inference=count_params(detector.classifier),
        peak_mem_mb=peak,
        curves=curves,
    )
    info = {k: v for k, v in result.__dict__.items() if k != "folder"}
    info.update(recipe_hash=identity, seed=cfg.seed, device=str(device),
                speed=speed.as_dict(),
                # what a teacher path/adapter held when trained (fit key, adapter base)
                teacher_origin=getattr(detector.teacher, "origin", None),
                selection=selector.selection.as_dict() if selector.selection else None,
                checkpoint_step=selector.selection.step if selector.selection else steps,
                tuning=detector.classifier.tuning)
    if detector.classifier.frozen_base_sha:  # the run stores the trained part only
        info[BASE_SHA] = detector.classifier.frozen_base_sha
    result.selection = info["selection"]
    if not lead:
        return result
    trainable = selector.best_state or detector.trainable_state_dict()
    save_run(result.folder, cfg, trainable, classifier_state(trainable), info)
    write_curves(result.folder, curves)  # tensorboard --logdir results/runs
    return result


def checkpoint(on_checkpoint: Callable[[int, float, Path], None], step: int, signal: float,
               identity: str, seed: int, state: TrainState) -> None:
    """Hand `state` to `on_checkpoint` in a folder that exists only during the call."""
    with tempfile.TemporaryDirectory(prefix=f"ablate-state-{step}-") as tmp:
        folder = save_state(Path(tmp) / "state", state, identity, seed)
        on_checkpoint(step, signal, folder)


def resume(state: TrainState, detector: DiffusionFakeDetector, optimizer: torch.optim.Optimizer,
           selector: ValidationSelector, batches_per_epoch: int) -> None:
    """Put the trained modules, optimiser and selection back as they were at `state.step`
    (the RNGs are restored by the caller, right before the next step)."""
    if state.batches_per_epoch != batches_per_epoch:
        raise AblateError(
            f"the saved state had {state.batches_per_epoch} batches per epoch, this training "
            f"set has {batches_per_epoch}: the data changed; resume on the data it was saved on")
    base = detector.classifier.frozen_base_sha
    if state.encoder_base_sha256 != base:
        raise AblateError(
            f"the saved state trained part of an encoder whose weights file had sha256 "
            f"{str(state.encoder_base_sha256)[:12]}..., this recipe's backbone.pretrained_path "
            f"has {str(base)[:12]}...: resume on the file it was saved on")
    expected = set(detector.trainable_state_dict())
    if set(state.trainable) != expected:
        raise AblateError(
            f"the saved state's modules do not match this recipe's "
            f"({len(expected - set(state.trainable))} missing, "
            f"{len(set(state.trainable) - expected)} unexpected tensors); was the code changed?")
    detector.load_state_dict(state.trainable, strict=False)  # copies into the live tensors
    optimizer.load_state_dict(state.optimizer)
    selector.best_state, selector.selection = state.best_state, state.selection


def classifier_state(trainable: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder + head part of a trainable state dict, keyed as `Classifier` keys it."""
    prefix = "classifier."
    return {k[len(prefix):]: v for k, v in trainable.items() if k.startswith(prefix)}


def check_teacher_precision(cfg: DictConfig, device: torch.device) -> None:
    """A reduced-precision teacher needs a device that computes in it natively."""
    name = str(setting(cfg, "teacher.dtype")) if is_guided(cfg) else "float32"
    dtype = teacher_dtype(name)  # unknown names: a one-line error listing the valid ones
    if not supports_dtype(device, dtype):
        raise AblateError(
            f"teacher.dtype={name} but this {device.type} has no native {name} compute "
            "(it would be emulated, far slower); use teacher.dtype=float32 here"
        )


def eval_curves(point: Selection) -> list[tuple[int, str, float]]:
    """A validation's curve points: val/auc, and proxy/auc where a proxy was scored."""
    out = [(point.step, VAL_CURVE, point.val_auc)]
    if point.proxy_auc is not None:
        out.append((point.step, PROXY_CURVE, point.proxy_auc))
    return out


class ValidationSelector:
    """Keeps the trainable state of the step the rule `train.select` chooses (never on a test
    set): `best_val` the best source-val AUC, `proxy` the best AUC on the proxy's val split,
    `last` the final step. Both saved checkpoints (trainable and inference) come from that
    one step, and the decision threshold is the source val split's at that step."""

    def __init__(self, detector: DiffusionFakeDetector, val, cfg: DictConfig,  # noqa: ANN001
                 device: torch.device, proxy=None) -> None:  # noqa: ANN001
        self.detector, self.val, self.cfg, self.device = detector, val, cfg, device
        self.proxy, self.rule = proxy, rule(cfg)
        self.proxy_label = (proxy_name(cfg) or "proxy") if proxy is not None else None
        if self.rule == "proxy" and val is not None and proxy is None:
            raise AblateError("train.select=proxy but no proxy set to score: set train.proxy "
                              "(or pass proxy= with loader= and val=)")
        self.best_state: dict[str, torch.Tensor] | None = None
        self.selection: Selection | None = None

    def evaluate(self, step: int) -> Selection:
        """Score the source val split (and the proxy) now; keep this step if the rule says.
        Returns this step's point (kept or not), its `signal` what the rule compares."""
        scores = score(self.detector.classifier, self.val, device=self.device, progress=False)
        auc, threshold = validation_point(scores)
        proxy_auc, proxy_frames = None, None
        if self.proxy is not None:
            proxy_scores = score(self.detector.classifier, self.proxy, device=self.device,
                                 progress=False)
            proxy_auc, proxy_frames = validation_point(proxy_scores)[0], len(proxy_scores)
        found = Selection(step, auc, threshold, len(scores), str(self.cfg.data.train),
                          self.rule, self.proxy_label, proxy_auc, proxy_frames)
        if self._keeps(found):
            self.selection = found
            # `last` keeps the live weights (the final step is always evaluated); the others
            # a CPU copy: the selected step must not change as training goes on
            self.best_state = None if self.rule == "last" else {
                k: v.detach().to("cpu", copy=True)
                for k, v in self.detector.trainable_state_dict().items()}
        return found

    def _keeps(self, found: Selection) -> bool:
        """`last`: every evaluation replaces the kept one, so the final step's stays; else a
        strictly better signal (of equal ones, the earliest step stays)."""
        if self.rule == "last" or self.selection is None:
            return True
        return found.signal > self.selection.signal
