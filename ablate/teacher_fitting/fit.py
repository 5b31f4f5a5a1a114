"""`ablate teachers fit`: train a tiny twin's VAE, then its UNet, on a dataset's real faces.

Why: a random tiny teacher cannot rebuild anything, so on CPU the guided loss asks the encoder
to steer a model that knows no faces. A few minutes of fitting on the real training frames
gives the twin a face prior, and the CPU default then behaves more like the paper's setup.

Order, as in Stable Diffusion: the VAE first (reconstruction + a small KL), its latent scale
re-estimated as 1/std of the latents (how SD's 0.18215 was chosen), then the UNet on those
latents with the teacher's own objective (epsilon or v) under the empty-prompt conditioning.
The result is a diffusers `save_pretrained` folder plus `ablate_teacher.json`; the same
teacher + data + settings reuse it.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ablate.core.errors import AblateError
from ablate.model.teachers import (
    FITTED_META,
    TEACHERS_DIR,
    Teacher,
    denoiser_fingerprint,
)
from ablate.registry import build

FIT_VERSION = 1  # bump when the procedure changes: older fits then no longer count as cached
TINY = ("tiny-sd15", "tiny-sd21", "tiny-sdxl", "tiny-sd3", "tiny-flux")


@dataclass(frozen=True)
class FitSettings:
    """Everything that defines a fit (its cache key); defaults take ~2-3 min on 2 CPU cores."""

    teacher: str = "tiny-sd15"
    data: str = "synth-blend"
    steps: int = 800  # UNet denoising steps
    vae_steps: int = 400
    batch_size: int = 16
    image_size: int = 64
    lr: float = 1e-3  # UNet
    vae_lr: float = 1e-3
    kl_weight: float = 1e-4  # on the per-element KL; SD's VAE also keeps it tiny
    seed: int = 0  # the twin's initial weights and the fit's sampling
    max_frames: int = 4000  # a seeded subset of larger datasets (frames are held in memory)


@dataclass
class FitResult:
    folder: Path
    reused: bool
    meta: dict[str, Any]
    teacher: Teacher | None = field(default=None, repr=False)  # None when reused


# --- data ----------------------------------------------------------------------------------------


def real_rows(data: str, max_frames: int, seed: int) -> pd.DataFrame:
    """The real (label 0) frames of the train split: the faces a teacher may learn from."""
    # lazy: loads torchvision only when called
    from ablate.data.loader import resolve_dataset

    table = resolve_dataset(data)
    rows = table[(table["label"] == 0) & (table["split"] == "train")]
    if rows.empty:
        raise AblateError(f"dataset {data} has no real train frames to fit a teacher on")
    if len(rows) > max_frames:
        rows = rows.sample(max_frames, random_state=seed)
    return rows.sort_values("path").reset_index(drop=True)


def rows_digest(rows: pd.DataFrame) -> str:
    """Which frames were used (their paths), for cache keys."""
    return hashlib.sha256("\n".join(rows["path"].astype(str)).encode()).hexdigest()[:16]


def load_images(rows: pd.DataFrame, image_size: int) -> Tensor:
    """Decoded frames [N, 3, S, S] in [-1, 1]."""
    # lazy: loads torchvision only when called
    from ablate.data.dataset import ManifestDataset

    dataset = ManifestDataset(rows, image_size)
    return torch.stack([dataset[i]["image"] for i in range(len(dataset))])


def random_batch(images: Tensor, batch_size: int, generator: torch.Generator) -> Tensor:
    """A random batch [B, ...] with horizontal flips (p=0.5), sampled on CPU."""
    index = torch.randint(len(images), (batch_size,), generator=generator)
    batch = images[index]
    flip = torch.rand(batch_size, generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), batch.flip(-1), batch)


@dataclass
class LatentBank:
    """Posterior mean/std of every frame [N, C, h, w]; samples are drawn fresh each step."""

    mean: Tensor
    std: Tensor
    scale: float
    shift: float = 0.0  # the VAE's shift_factor (SD3 / Flux VAEs): latents = (z - shift) * scale

    def sample(self, batch_size: int, generator: torch.Generator) -> Tensor:
        """Scaled latents [B, C, h, w] (random frames, flips, posterior samples)."""
        index = torch.randint(len(self.mean), (batch_size,), generator=generator)
        eps = torch.randn(self.mean[index].shape, generator=generator)
        z = (self.mean[index] + self.std[index] * eps - self.shift) * self.scale
        flip = torch.rand(batch_size, generator=generator) < 0.5
        return torch.where(flip.view(-1, 1, 1, 1), z.flip(-1), z)  # flipped latent ~ flipped face


@torch.no_grad()
def encode_bank(teacher: Teacher, images: Tensor, device: torch.device, chunk: int = 32) -> LatentBank:
    means, stds = [], []
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].to(device, teacher.vae.dtype)
        dist = teacher.vae.encode(x).latent_dist
        means.append(dist.mean.float().cpu())
        stds.append(dist.std.float().cpu())
    return LatentBank(torch.cat(means), torch.cat(stds), teacher.latent_scale, teacher.latent_shift)


# --- training ------------------------------------------------------------------------------------


def _schedule(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over 5% of the steps, then cosine decay."""
    warm = max(1, steps // 20)

    def factor(step: int) -> float:
        return min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * step / max(steps, 1)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _step(loss: Tensor, optimizer: torch.optim.Optimizer,
          schedule: torch.optim.lr_scheduler.LRScheduler, params: list) -> None:
    """One clipped optimiser step (the VAE and the UNet fits share it)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    schedule.step()


def denoising_loss(teacher: Teacher, latents: Tensor, generator: torch.Generator) -> Tensor:
    """MSE of the teacher's own objective (epsilon, v or flow velocity) at the timesteps of its
    family's training law, empty prompt."""
    device = teacher.device
    noise = torch.randn(latents.shape, generator=generator).to(device)
    t = teacher.sample_timesteps(len(latents), generator, device, latents.shape[-2:])
    z0 = latents.to(device, teacher.dtype)
    noisy = teacher.add_noise(z0, noise.to(z0.dtype), t)  # [B, C, h, w]
    target = teacher.diffusion_target(z0, noise.to(z0.dtype), t)
    return F.mse_loss(teacher.predict(noisy, t).float(), target.float())


def train_denoiser(
    teacher: Teacher,
    bank: LatentBank,
    params: Iterable[nn.Parameter],
    steps: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    progress: bool = False,
    desc: str = "unet",
) -> list[float]:
    """Train `params` (the whole UNet, or LoRA weights) on the denoising loss; returns losses."""
    params = list(params)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = _schedule(optimizer, steps)
    losses: list[float] = []
    bar = tqdm(range(steps), desc=desc, unit="step", disable=not progress)
    try:
        for _ in bar:
            loss = denoising_loss(teacher, bank.sample(batch_size, generator), generator)
            _step(loss, optimizer, schedule, params)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{_smooth(losses):.4f}", refresh=False)
    finally:
        for p in params:
            p.requires_grad_(False)
            p.grad = None
    return losses


def train_vae(
    teacher: Teacher,
    images: Tensor,
    steps: int,
    batch_size: int,
    lr: float,
    kl_weight: float,
    generator: torch.Generator,
    progress: bool = False,
) -> list[float]:
    """Reconstruction (L1) + kl_weight * per-element KL; returns the reconstruction losses."""
    vae, device = teacher.vae, teacher.device
    params = list(vae.parameters())
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = _schedule(optimizer, steps)
    losses: list[float] = []
    bar = tqdm(range(steps), desc="vae", unit="step", disable=not progress)
    try:
        for _ in bar:
            x = random_batch(images, batch_size, generator).to(device, vae.dtype)  # [B,3,S,S]
            posterior = vae.encode(x).latent_dist
            eps = torch.randn(posterior.mean.shape, generator=generator).to(device, vae.dtype)
            z = posterior.mean + posterior.std * eps  # [B, 4, S/8, S/8]
            reconstruction = vae.decode(z).sample
            rec = F.l1_loss(reconstruction.float(), x.float())
            kl = posterior.kl().mean() / z[0].numel()
            loss = rec + kl_weight * kl
            _step(loss, optimizer, schedule, params)
            losses.append(rec.item())
            bar.set_postfix(l1=f"{_smooth(losses):.4f}", kl=f"{kl.item():.2f}", refresh=False)
    finally:
        for p in params:
            p.requires_grad_(False)
            p.grad = None
    return losses


@torch.no_grad()
def rescale_latents(teacher: Teacher, bank: LatentBank) -> float:
    """Set the VAE's scaling factor to 1/std of its latents (and, for VAEs with a shift factor,
    the shift to their mean), so scaled latents have zero mean and unit std, as the real
    families' factors were chosen."""
    sample = bank.mean + bank.std * torch.randn(bank.mean.shape, generator=torch.Generator().manual_seed(0))
    scale = float(1.0 / sample.std().clamp_min(1e-6))
    teacher.vae.register_to_config(scaling_factor=scale)
    teacher.latent_scale = scale
    bank.scale = scale
    if teacher.vae.config.get("shift_factor") is not None:
        shift = float(sample.mean())
        teacher.vae.register_to_config(shift_factor=shift)
        teacher.latent_shift = bank.shift = shift
    return scale


def _smooth(values: list[float], n: int = 20) -> float:
    tail = values[-n:]
    return sum(tail) / len(tail)


def loss_ends(values: list[float], n: int = 20) -> dict[str, float | None]:
    if not values:
        return {"first": None, "last": None}
    return {"first": sum(values[:n]) / len(values[:n]), "last": _smooth(values, n)}


# --- the command ---------------------------------------------------------------------------------


def family_of_tiny(name: str) -> str:
    if name not in TINY:
        raise AblateError(
            f"teacher {name!r} cannot be fitted: `ablate teachers fit` trains the tiny twins "
            f"({', '.join(TINY)}); adapt real teachers with `ablate teachers adapt`"
        )
    return name.removeprefix("tiny-")


def slug(data: str) -> str:
    """A folder-safe dataset label: a benchmark/config name, or a manifest file's stem."""
    path = Path(data)
    name = path.stem if path.suffix in (".csv", ".parquet") else data
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise AblateError(f"device {device} requested but CUDA is not available; use --device cpu")
    return torch.device(device)


def check_settings(steps: int, batch_size: int, image_size: int, max_frames: int) -> None:
    if min(steps, batch_size, max_frames) < 1:
        raise AblateError("steps, batch size and max frames must be positive")
    if image_size < 8 or image_size % 8:
        raise AblateError(f"image size {image_size} must be a positive multiple of 8 (VAE factor)")


def cached(out: Path, meta_name: str, key: str, force: bool) -> dict[str, Any] | None:
    """The stored metadata when `out` holds this very result; None when it must be (re)made."""
    meta_file = out / meta_name
    if not out.exists() or force:
        return None
    if not meta_file.is_file():
        raise AblateError(f"{out} exists but holds no {meta_name}; choose another --out or pass --force")
    meta = json.loads(meta_file.read_text())
    if meta.get("key") == key:
        return meta
    raise AblateError(
        f"{out} holds a result made with other settings or data (key {meta.get('key')}, now {key}); "
        "pass --force to replace it or --out to keep both"
    )


def publish(staging: Path, out: Path) -> None:
    """Replace `out` by the finished staging folder (never a half-written `out`)."""
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)


def fit_teacher(
    settings: FitSettings,
    out: str | Path | None = None,
    force: bool = False,
    device: str = "cpu",
    progress: bool = True,
) -> FitResult:
    """Fit a tiny twin on `settings.data`'s real frames and save it (or reuse a cached fit)."""
    family = family_of_tiny(settings.teacher)
    check_settings(settings.steps, settings.batch_size, settings.image_size, settings.max_frames)
    if settings.vae_steps < 0:
        raise AblateError("--vae-steps must be 0 or more")
    rows = real_rows(settings.data, settings.max_frames, settings.seed)
    digest = rows_digest(rows)
    blob = json.dumps({**asdict(settings), "frames": digest, "v": FIT_VERSION}, sort_keys=True)
    key = hashlib.sha256(blob.encode()).hexdigest()[:16]
    out = Path(out).expanduser() if out else TEACHERS_DIR / f"{settings.teacher}-{slug(settings.data)}"
    meta = cached(out, FITTED_META, key, force)
    if meta is not None:
        return FitResult(out, True, meta)

    start = time.perf_counter()
    torch_device = resolve_device(device)
    images = load_images(rows, settings.image_size)  # [N, 3, S, S]
    staging = out.parent / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    # Start from the seeded twin written as a folder, so the empty-prompt context the UNet is
    # fitted under is the one every later load of the folder computes (its tiny text encoder).
    twin = build("teacher", settings.teacher, seed=settings.seed)
    twin.check_image_size(settings.image_size)  # transformer twins: multiples of 16
    twin.save_pretrained(staging)
    teacher = build("teacher", settings.teacher, path=str(staging)).to(torch_device)
    generator = torch.Generator().manual_seed(settings.seed)
    vae_losses = train_vae(
        teacher, images, settings.vae_steps, settings.batch_size, settings.vae_lr,
        settings.kl_weight, generator, progress,
    )
    bank = encode_bank(teacher, images, torch_device)
    scale = rescale_latents(teacher, bank)
    unet_losses = train_denoiser(
        teacher, bank, teacher.denoiser.parameters(), settings.steps, settings.batch_size,
        settings.lr, generator, progress,
    )
    teacher.to("cpu")
    teacher.save_pretrained(staging)
    meta = {
        "kind": "fitted",
        "teacher": settings.teacher,
        "family": family,
        "data": settings.data,
        "frames": len(images),
        "frames_digest": digest,
        "settings": asdict(settings),
        "key": key,
        "fit_version": FIT_VERSION,
        "latent_scale": scale,
        "latent_shift": teacher.latent_shift,
        "prediction_type": teacher.prediction_type,
        "losses": {"vae_l1": loss_ends(vae_losses), "denoise": loss_ends(unet_losses)},
        "wall_s": round(time.perf_counter() - start, 1),
        "device": str(torch_device),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "unet": denoiser_fingerprint(teacher.denoiser),
    }
    (staging / FITTED_META).write_text(json.dumps(meta, indent=2) + "\n")
    publish(staging, out)
    teacher._text_source = out  # the staging folder it was loaded from is gone
    teacher.origin = {"path": str(out), "fit": key}
    return FitResult(out, False, meta, teacher)
