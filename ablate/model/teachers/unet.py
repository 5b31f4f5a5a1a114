"""The UNet teacher (SD 1.5, SD 2.1, SDXL and their tiny twins): UNet + VAE + DDPM schedule +
an empty-prompt context.

The detector's guide injects ControlNet-style residuals into the teacher's UNet and is trained
so that the frozen teacher can rebuild the source / target latents (METHOD.md, sections 5-6).
The teacher itself never trains, is never saved inside a detector checkpoint, and its text
encoders are used once, at build time, to embed the empty prompt "".

Where its weights come from is `loading`'s rule; what each family is, `unet_families`; the
registry entries, `unet_variants`; diffusers folders, `unet_folder` (read) and `unet_save`
(written); single files, `unet_file`; text encoders outside a folder, `unet_text`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from torch import Tensor, nn

from ablate.core.errors import AblateError
from ablate.model.teachers import unet_families
from ablate.model.teachers.base import FULL_RANGE, Teacher
from ablate.model.teachers.unet_save import save_folder


class UNetTeacher(Teacher):
    """Frozen SD UNet + VAE + DDPM schedule; `predict` takes ControlNet residuals
    (down-block list, mid tensor)."""

    denoiser_name = "unet"

    def __init__(
        self,
        name: str,
        family: str,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        scheduler: DDPMScheduler,
        context: Tensor,
        pooled: Tensor | None = None,
        text_source: Path | None = None,
    ) -> None:
        super().__init__(name, family, unet, vae, text_source)
        self.scheduler = scheduler
        self.prediction_type: str = scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise AblateError(
                f"teacher {name}: prediction_type {self.prediction_type!r} is not supported; "
                "use an epsilon or v_prediction Stable Diffusion model"
            )
        self.context_dim = int(unet.config.cross_attention_dim)
        # Empty-prompt embedding, computed once; not persistent (rebuilt from the source).
        self.register_buffer("context", context.detach().to(unet.dtype), persistent=False)
        pooled = None if pooled is None else pooled.detach().to(unet.dtype)
        self.register_buffer("pooled", pooled, persistent=False)  # [1, 1280] (SDXL) or None
        self.freeze()

    @property
    def guide_channels(self) -> int:
        """conv_in's width: the ControlNet input is conv_in(z_noisy) + filtered features."""
        return int(self.unet.config.block_out_channels[0])

    def vae_dtype(self, dtype: torch.dtype) -> torch.dtype:
        return unet_families.vae_dtype(self.family, dtype)

    # --- diffusion -----------------------------------------------------------------------------

    def sample_timesteps(self, batch: int, generator: torch.Generator | None,
                         device: torch.device, latent_size: tuple[int, int] = (32, 32),
                         t_range: tuple[float, float] = FULL_RANGE) -> Tensor:
        """Uniform integer timesteps [batch] over the training schedule (t ~ U[0, 1000)), or
        over its part `t_range` (`timestep_bounds`), drawn where the generator lives, then
        moved. One `randint` call whatever the range: at the full range it is the call (and
        the draws) of before the range existed."""
        where = generator.device if generator is not None else device
        low, high = self.timestep_bounds(t_range)
        return torch.randint(low, high, (batch,), generator=generator, device=where).to(device)

    def timestep_bounds(self, t_range: tuple[float, float] = FULL_RANGE) -> tuple[int, int]:
        """[low, high) of the integer timesteps a range of the schedule's T steps holds:
        floor(t_min T), ceil(t_max T), every step the range touches (full range: 0, T).
        Products are rounded to 9 decimals first: 0.07 x 100 is 7.000000000000001 in floats,
        whose ceiling would add step 7. A range holding no integer step is one line."""
        steps = int(self.scheduler.config.num_train_timesteps)
        t_min, t_max = t_range
        low, high = math.floor(round(t_min * steps, 9)), math.ceil(round(t_max * steps, 9))
        if not 0 <= low < high <= steps:
            raise AblateError(f"train.t_min={t_min}, train.t_max={t_max} hold no integer "
                              f"timestep of teacher {self.name}'s {steps} steps; use 0 <= "
                              "train.t_min < train.t_max <= 1")
        return low, high

    def conditioning(self, batch_size: int, image_size: int | tuple[int, int]) -> dict[str, Any]:
        """UNet keyword arguments for the empty prompt (and SDXL micro-conditioning)."""
        dtype = self.unet.dtype
        cond: dict[str, Any] = {
            "encoder_hidden_states": self.context.to(dtype).expand(batch_size, -1, -1)  # [B,L,D]
        }
        if self.pooled is not None:
            h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
            # original size, crop top-left, target size
            ids = torch.tensor([h, w, 0, 0, h, w], dtype=dtype, device=self.context.device)
            cond["added_cond_kwargs"] = {
                "text_embeds": self.pooled.to(dtype).expand(batch_size, -1),  # [B, 1280]
                "time_ids": ids.expand(batch_size, -1),  # [B, 6]
            }
        return cond

    def add_noise(self, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        return self.scheduler.add_noise(latents, noise, timesteps)

    def diffusion_target(self, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """What the UNet must predict: the noise, or the velocity for v-prediction teachers."""
        if self.prediction_type == "v_prediction":
            return self.scheduler.get_velocity(latents, noise, timesteps)
        return noise

    def predict(
        self,
        noisy_latents: Tensor,
        timesteps: Tensor,
        down_residuals: list[Tensor] | tuple[Tensor, ...] | None = None,
        mid_residual: Tensor | None = None,
    ) -> Tensor:
        """UNet prediction with ControlNet residuals; no `no_grad`, so the residuals get grads."""
        if (down_residuals is None) != (mid_residual is None):
            # diffusers treats down residuals alone as T2I-Adapter residuals: a different model
            raise ValueError("pass both down_residuals and mid_residual, or neither")
        dtype = self.unet.dtype
        b, _, h, w = noisy_latents.shape
        extra: dict[str, Any] = {}
        if down_residuals is not None and mid_residual is not None:
            extra["down_block_additional_residuals"] = [r.to(dtype) for r in down_residuals]
            extra["mid_block_additional_residual"] = mid_residual.to(dtype)
        cond = self.conditioning(b, (h * self.vae_factor, w * self.vae_factor))
        return self.unet(noisy_latents.to(dtype), timesteps, **cond, **extra).sample  # [B,C,h,w]

    # --- guides --------------------------------------------------------------------------------

    def controlnet(self, layers: int | None = None, blocks: int | None = None,
                   inject: Any = "all", zero_init: bool = True) -> nn.Module:
        """The copy of the UNet encoder; `blocks`, `inject`, `zero_init`: its structure
        (`ablate.model.guide.structure`; the defaults: the whole encoder, every residual)."""
        # lazy: that module imports this one
        from ablate.model.guide import UNetControlNet

        if layers is not None:
            raise AblateError(f"guide.layers={layers} is for transformer teachers (sd3, flux): "
                              f"the ControlNet of {self.name} copies its whole UNet encoder "
                              "(guide.blocks: fewer down blocks); set guide.layers=null")
        return UNetControlNet.copy_of(self.unet, blocks, inject, zero_init)

    def adapter(self, width: int, depth: int = 1, zero_init: bool = True) -> nn.Module:
        # lazy: that module imports this one
        from ablate.model.guide import ConvPyramid

        return ConvPyramid(self.unet, width, depth, zero_init)

    # --- saving --------------------------------------------------------------------------------

    def save_pretrained(self, folder: str | Path) -> None:
        """Write a diffusers-layout folder that `sd15/sd21/sdxl(path=folder)` loads back.

        Text encoders come from the source folder or file; a teacher without one (tiny twin,
        random_init) gets tiny random CLIP encoders, so the reloaded context differs.
        """
        save_folder(self, Path(folder).expanduser())
