"""Flow matching, the training objective of SD3 / SD3.5 and Flux (rectified flow).

For clean latents x0, noise n and sigma in (0, 1):

    x_t    = (1 - sigma) * x0 + sigma * n       (FlowMatchEulerDiscreteScheduler.scale_noise)
    target = n - x0                             (the velocity the transformer predicts)

Training sigmas follow the family's own law (`TimestepLaw`): a density for u in (0, 1),
then a shift toward noise:

- SD3 / SD3.5: u ~ logit-normal(0, 1) (the SD3 paper's rf/lognorm), shifted by the
  scheduler's `shift` (3.0 in SD3's scheduler_config.json), sigma = s*u / (1 + (s-1)*u),
  as diffusers' SD3 training scripts draw them through the shifted scheduler;
- Flux: u ~ U(0, 1), shifted by the resolution-dependent exponential time shift Flux
  samples with, sigma = e^mu / (e^mu + 1/u - 1), mu linear in the image's token count
  from base_shift at 256 tokens to max_shift at 4096 (FluxPipeline.calculate_shift).

Both branches of a guided step share one sigma per sample and one noise tensor. A recipe's
`train.t_min` / `train.t_max` map the law's sigmas affinely into that part of (0, 1)
(`restrict`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from torch import Tensor, nn

from ablate.core.errors import AblateError
from ablate.model.teachers.base import FULL_RANGE, Teacher

DENSITIES = ("logit_normal", "uniform")


@dataclass(frozen=True)
class TimestepLaw:
    """How training sigmas are drawn: `density` of u, then `shift` (a number) or, with
    `shift=None`, Flux's resolution-dependent shift between `base_shift` and `max_shift`."""

    density: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float | None = 3.0
    base_shift: float = 0.5
    max_shift: float = 1.15
    base_tokens: int = 256
    max_tokens: int = 4096

    def __post_init__(self) -> None:
        if self.density not in DENSITIES:
            raise AblateError(f"teacher.timesteps={self.density!r} is unknown; use one of "
                              f"{', '.join(DENSITIES)}")

    def mu(self, tokens: int) -> float:
        """Flux's shift exponent for an image of `tokens` transformer tokens."""
        slope = (self.max_shift - self.base_shift) / (self.max_tokens - self.base_tokens)
        return self.base_shift + slope * (tokens - self.base_tokens)

    def sample(self, batch: int, tokens: int, generator: torch.Generator | None,
               device: torch.device) -> Tensor:
        """sigmas [batch] in (0, 1), drawn where the generator lives, then moved."""
        where = generator.device if generator is not None else device
        if self.density == "logit_normal":
            z = torch.randn(batch, generator=generator, device=where)
            u = torch.sigmoid(self.logit_mean + self.logit_std * z)
        else:
            u = torch.rand(batch, generator=generator, device=where)
        u = u.clamp(1e-5, 1 - 1e-5)  # a sigma of exactly 0 or 1 is a degenerate target
        return self.shifted(u, tokens).to(device)

    def shifted(self, u: Tensor, tokens: int) -> Tensor:
        if self.shift is not None:
            return shift_sigmas(u, self.shift)
        return exponential_time_shift(u, self.mu(tokens))


def restrict(sigmas: Tensor, t_range: tuple[float, float] = FULL_RANGE) -> Tensor:
    """The law's sigmas mapped into [t_min, t_max] (`train.t_min`, `train.t_max`):
    t_min + (t_max - t_min) * sigma.

    An affine map of the draws, not a truncation or a re-draw: the family's law keeps its
    shape (logit-normal bulk, resolution shift) squeezed into the range, every draw stays
    one draw (the generator's stream is the same whatever the range, so shards and seeds
    line up), and a narrow range does not pile up at an end. At the full range it is skipped
    (no arithmetic), so the draws are the law's own, bit for bit."""
    if tuple(t_range) == FULL_RANGE:
        return sigmas
    t_min, t_max = t_range
    return t_min + (t_max - t_min) * sigmas


def shift_sigmas(u: Tensor, shift: float) -> Tensor:
    """SD3's static shift: s*u / (1 + (s - 1)*u)."""
    return shift * u / (1 + (shift - 1) * u)


def exponential_time_shift(u: Tensor, mu: float) -> Tensor:
    """Flux's time shift: e^mu / (e^mu + 1/u - 1)."""
    return math.exp(mu) / (math.exp(mu) + (1 / u - 1))


def add_noise(latents: Tensor, noise: Tensor, sigmas: Tensor) -> Tensor:
    """x_t = (1 - sigma) x0 + sigma n, sigma [B] broadcast over [B, C, h, w]."""
    s = sigmas.to(latents.dtype).view(-1, *([1] * (latents.ndim - 1)))
    return (1 - s) * latents + s * noise


def velocity(latents: Tensor, noise: Tensor) -> Tensor:
    """The flow-matching target n - x0."""
    return noise - latents


class FlowTeacher(Teacher):
    """What SD3 and Flux share: a transformer trained by flow matching on 16-channel VAE
    latents (shift and scale), an empty-prompt context [1, L, D] and pooled text [1, P].
    Timesteps are sigmas in (0, 1); each family turns them into what its transformer takes."""

    denoiser_name = "transformer"

    def __init__(self, name: str, family: str, transformer: nn.Module, vae: nn.Module,
                 scheduler: FlowMatchEulerDiscreteScheduler, context: Tensor, pooled: Tensor,
                 law: TimestepLaw, text_source: Path | None = None) -> None:
        super().__init__(name, family, transformer, vae, text_source)
        self.scheduler = scheduler
        self.law = law
        self.prediction_type = "flow_velocity"
        self.patch = int(transformer.config.patch_size)
        self.register_buffer("context", context.detach().to(transformer.dtype), persistent=False)
        self.register_buffer("pooled", pooled.detach().to(transformer.dtype), persistent=False)
        self.freeze()

    @property
    def guide_channels(self) -> int:
        """The filter maps features to latent-shaped input (C_lat at the latent grid): it
        enters through a copy of the patch embedding, the DiT analogue of conv_in(z) + f."""
        return self.latent_channels

    def vae_dtype(self, dtype: torch.dtype) -> torch.dtype:
        return dtype

    def tokens(self, latent_size: tuple[int, int]) -> int:
        """Image tokens of a latent [h, w] (`patch` x `patch` latent patches)."""
        return (latent_size[0] // self.patch) * (latent_size[1] // self.patch)

    def sample_timesteps(self, batch: int, generator: torch.Generator | None,
                         device: torch.device, latent_size: tuple[int, int] = (32, 32),
                         t_range: tuple[float, float] = FULL_RANGE) -> Tensor:
        """Training sigmas [batch] in (0, 1) under the family's law (`teacher.timesteps`),
        mapped into `t_range` (`restrict`)."""
        return restrict(self.law.sample(batch, self.tokens(latent_size), generator, device),
                        t_range)

    def add_noise(self, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        return add_noise(latents, noise, timesteps)

    def diffusion_target(self, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        return velocity(latents, noise)

    def text_kwargs(self, batch_size: int) -> dict[str, Tensor]:
        dtype = self.dtype
        return {
            "encoder_hidden_states": self.context.to(dtype).expand(batch_size, -1, -1),  # [B,L,D]
            "pooled_projections": self.pooled.to(dtype).expand(batch_size, -1),  # [B, P]
        }
