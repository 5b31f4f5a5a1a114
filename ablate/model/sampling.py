"""Guided sampling: the frozen teacher rebuilds a frame's source and target faces from the
trained encoder's features, the picture the DiffusionFake paper shows (Fig. 1 and 5).

Training only ever asks the teacher for one denoising step; here the same guided call
(filter -> guide residuals x branch weight -> teacher.predict) runs inside the teacher's
own sampler from diffusers:

- UNet teachers (SD 1.5 / 2.1 / SDXL): DDIM, built from the teacher's DDPM schedule, so
  epsilon and v-prediction teachers step as they were trained;
- flow teachers (SD3, Flux): the flow-matching Euler sampler, with Flux's resolution
  shift `mu` where the scheduler shifts dynamically.

Two starts: from pure noise (`strength=None`), or SDEdit-style from the input's own latent
noised to `strength` in (0, 1] of the schedule. Both branches share one noise tensor per
seed, as in training, so the only difference between the two reconstructions is what
the encoder's features ask for.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler
from torch import Tensor

from ablate.core.errors import AblateError
from ablate.model.teachers.base import scale_residuals

BRANCHES = ("source", "target")


@dataclass
class Guidance:
    """What the trained modules give the teacher for a batch: per-branch conditions
    [B, C0, h', w'] and weights [B] (W_s, W_t)."""

    conds: tuple[Tensor, Tensor]
    weights: tuple[Tensor, Tensor]


def sampling_scheduler(teacher) -> DDIMScheduler | FlowMatchEulerDiscreteScheduler:  # noqa: ANN001
    """A fresh sampler from the teacher's own training schedule (never its training object,
    whose state a sampler would change)."""
    config = teacher.scheduler.config
    if teacher.prediction_type == "flow_velocity":
        return FlowMatchEulerDiscreteScheduler.from_config(config)
    # the DDIM Stable Diffusion ships with: its last step ends at alpha_0, not at 1
    return DDIMScheduler.from_config(config, set_alpha_to_one=False)


def set_steps(scheduler, teacher, steps: int, latent_size: tuple[int, int]) -> Tensor:  # noqa: ANN001
    """scheduler.set_timesteps(steps) (Flux: with its shift for this image size); -> timesteps."""
    if steps < 1:
        raise AblateError(f"--steps must be at least 1, got {steps}")
    if getattr(scheduler.config, "use_dynamic_shifting", False):
        scheduler.set_timesteps(steps, mu=teacher.law.mu(teacher.tokens(latent_size)))
    else:
        scheduler.set_timesteps(steps)
    return scheduler.timesteps


def model_time(teacher, t: Tensor, batch: int, num_train: int) -> Tensor:  # noqa: ANN001
    """What the teacher's `predict` (and the guide) take for a sampler timestep t, [batch]:
    the integer step for UNets, sigma = t / num_train in (0, 1] for flow teachers."""
    t = t.reshape(1).expand(batch)
    return t / num_train if teacher.prediction_type == "flow_velocity" else t


@torch.no_grad()
def guidance_of(detector, images: Tensor) -> Guidance:  # noqa: ANN001
    """Run the trained encoder, filters and weight modules on images [B, 3, H, W] in [-1, 1]."""
    feats, _ = detector.classifier.encode(images)  # [B, C, h, w]
    conds = (detector.filter_source(feats), detector.filter_target(feats))  # [B, C0, h', w']
    weights = (detector.weight_source(feats).reshape(-1).float(),  # [B]
               detector.weight_target(feats).reshape(-1).float())
    return Guidance(conds, weights)


@torch.no_grad()
def sample_branch(
    detector, index: int, guidance: Guidance | None, noise: Tensor, steps: int,  # noqa: ANN001
    image_size: int, init: Tensor | None = None, strength: float | None = None,
) -> Tensor:
    """Latents [B, C_lat, h, w] the teacher reaches from `noise` [B, C_lat, h, w] under
    branch `index`'s guidance (None: the teacher alone, no residuals).

    `init` [B, C_lat, h, w] with `strength` in (0, 1]: SDEdit, start from `init` noised to
    the schedule's step at `strength` and run the remaining steps."""
    teacher = detector.teacher
    scheduler = sampling_scheduler(teacher)
    timesteps = set_steps(scheduler, teacher, steps, tuple(noise.shape[-2:]))
    num_train = int(scheduler.config.num_train_timesteps)
    batch = noise.shape[0]
    latents = noise
    if init is not None:
        if strength is None or not 0 < strength <= 1:
            raise AblateError(f"--strength must be in (0, 1] (1 = from noise), got {strength}")
        start = steps - max(1, round(steps * strength))
        timesteps = timesteps[start:]
        latents = teacher.add_noise(init, noise, model_time(teacher, timesteps[0], batch,
                                                           num_train).to(init.device))
    elif getattr(scheduler, "init_noise_sigma", 1.0) != 1.0:
        latents = noise * scheduler.init_noise_sigma
    conditioning = teacher.conditioning(batch, image_size)
    for t in timesteps:
        when = model_time(teacher, t, batch, num_train).to(latents.device)
        if guidance is None:
            pred = teacher.predict(latents, when)
        else:
            residuals = detector.guide.branch(index, latents, when, guidance.conds[index],
                                              conditioning)
            pred = teacher.predict(latents, when,
                                   *scale_residuals(residuals, guidance.weights[index]))
        latents = scheduler.step(pred, t, latents).prev_sample.to(noise.dtype)
    return latents


@torch.no_grad()
def decode(teacher, latents: Tensor) -> Tensor:  # noqa: ANN001
    """Teacher latents [B, C_lat, h, w] -> images [B, 3, H, W] in [-1, 1] (the inverse of
    `Teacher.scale_latents`, then the VAE decoder)."""
    z = latents.to(teacher.vae.dtype) / teacher.latent_scale + teacher.latent_shift
    return teacher.vae.decode(z).sample.float().clamp(-1, 1)
