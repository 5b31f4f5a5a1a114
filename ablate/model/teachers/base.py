"""The one interface every frozen diffusion teacher offers the detector, the guides and
`ablate teachers fit / adapt`, whatever its family (UNet or diffusion transformer).

A training step asks a teacher, in this order:

    latents   = teacher.encode(images)                        # VAE posterior sample, scaled
    t         = teacher.sample_timesteps(B, generator, dev, size, t_range)  # family's law
    noisy     = teacher.add_noise(latents, noise, t)
    target    = teacher.diffusion_target(latents, noise, t)   # eps, v or flow velocity
    residuals = guide(noisy, t, cond, teacher.conditioning(B, image_size))
    pred      = teacher.predict(noisy, t, *scale_residuals(residuals, w))

`residuals` is a tuple whose layout only the teacher and its guides know (UNet: down-block
list and mid tensor; SD3: one list per transformer block; Flux: double- and single-block
lists); the detector only multiplies every tensor in it by the branch weight of its sample.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import is_fake

from ablate.core.errors import AblateError, first_line

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}

# The whole training schedule, as a fraction (`train.t_min`, `train.t_max`): the default
# range of the guided step's timesteps, at which every family draws exactly its own law.
FULL_RANGE: tuple[float, float] = (0.0, 1.0)


class Teacher(nn.Module):
    """Frozen denoiser + VAE + noise rule + empty-prompt conditioning (abstract).

    Frozen means: no parameter requires grad and the module stays in eval mode (dropout
    off) even when a parent module calls `.train()`. Gradients still flow *through* it to
    the residuals, which is how the guide learns. Subclasses set `denoiser` (the network
    that predicts: a UNet or a transformer) and implement the methods below.
    """

    family: str = ""
    denoiser_name: str = ""  # the denoiser's attribute and LoRA prefix: "unet" | "transformer"

    def __init__(self, name: str, family: str, denoiser: nn.Module, vae: nn.Module,
                 text_source: Path | None = None) -> None:
        super().__init__()
        self.name, self.family = name, family
        self.add_module(self.denoiser_name, denoiser)
        self.vae = vae
        self.latent_scale = float(vae.config.scaling_factor)
        self.latent_shift = float(vae.config.get("shift_factor") or 0.0)
        self.vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.latent_channels = int(vae.config.latent_channels)
        self._text_source = text_source  # a folder or file to copy text encoders from on save

    def freeze(self) -> None:
        """Call at the end of a subclass's __init__ (after its buffers exist)."""
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> Teacher:
        """Stay in eval mode whatever the parent asks: the teacher is frozen."""
        return super().train(False)

    @property
    def denoiser(self) -> nn.Module:
        """The network that predicts (UNet or transformer): what LoRA adapts, fit trains."""
        return getattr(self, self.denoiser_name)

    @property
    def dtype(self) -> torch.dtype:
        return self.denoiser.dtype

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    # --- the interface ---------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Images [B,3,H,W] in [-1,1] -> latents sampled from the VAE posterior, as the
        denoiser was trained on them: (z - shift_factor) * scaling_factor."""
        x = images.to(device=self.device, dtype=self.vae.dtype)
        latents = self.vae.encode(x).latent_dist.sample(generator=generator)  # [B,C,H/f,W/f]
        return self.scale_latents(latents)

    def scale_latents(self, latents: Tensor) -> Tensor:
        return ((latents - self.latent_shift) * self.latent_scale).to(self.dtype)

    @property
    def guide_channels(self) -> int:
        """Channels the feature filter must output at the latent grid for this teacher."""
        raise NotImplementedError

    @property
    def size_multiple(self) -> int:
        """An image side must be a multiple of this (VAE factor x patch size)."""
        return self.vae_factor

    def sample_timesteps(self, batch: int, generator: torch.Generator | None,
                         device: torch.device, latent_size: tuple[int, int] = (32, 32),
                         t_range: tuple[float, float] = FULL_RANGE) -> Tensor:
        """Training timesteps [batch] under the family's own law, restricted to `t_range`
        (t_min, t_max): fractions of the training schedule, 0 = clean, 1 = pure noise
        (`train.t_min`, `train.t_max`). At `FULL_RANGE` the draws are the law's own, bit for
        bit; each family says how it restricts (UNet: integers in [floor(t_min T),
        ceil(t_max T)); flow: its sigmas mapped affinely into [t_min, t_max])."""
        raise NotImplementedError

    def add_noise(self, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        raise NotImplementedError

    def diffusion_target(self, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        raise NotImplementedError

    def conditioning(self, batch_size: int, image_size: int | tuple[int, int]) -> dict[str, Any]:
        """Keyword arguments for the denoiser (and its ControlNet copy): the empty prompt."""
        raise NotImplementedError

    def predict(self, noisy_latents: Tensor, timesteps: Tensor, *residuals: Any) -> Tensor:
        """Denoiser prediction [B, C, h, w] with the guide's residuals (none: the plain call);
        no `no_grad`, so the residuals get gradients."""
        raise NotImplementedError

    def controlnet(self, **args: Any) -> nn.Module:
        """A trainable ControlNet-style copy of the denoiser's first blocks, zero-initialised
        outputs: net(noisy, t, cond, conditioning) -> residuals. `args`: the guide's
        structure keys the family takes (`layers` for transformers; UNets: `blocks`,
        `inject`, `zero_init`); the guide passes a UNet-only key only to a UNet teacher."""
        raise NotImplementedError

    def adapter(self, width: int, **args: Any) -> nn.Module:
        """A light zero-initialised net: net(cond) -> residuals shaped like `controlnet`'s
        (UNets also take `depth` and `zero_init`)."""
        raise NotImplementedError

    def save_pretrained(self, folder: str | Path) -> None:
        raise NotImplementedError

    def check_image_size(self, image_size: int) -> None:
        message = image_size_error(self, image_size)
        if message:
            raise AblateError(message)


def image_size_error(teacher: Teacher, image_size: int) -> str | None:
    """Why `image_size` does not fit the teacher (or None): it must divide into latents (and
    into the transformer's patches)."""
    f = teacher.size_multiple
    if image_size > 0 and image_size % f == 0:
        return None
    lower = max(f, image_size // f * f)
    options = sorted({lower, lower + f} - {image_size})
    what = "VAE factor" if f == teacher.vae_factor else "VAE factor x patch size"
    return (
        f"image_size {image_size} does not fit teacher {teacher.name}: it must be a multiple of "
        f"its {what} {f}; nearest sizes that work: {' or '.join(map(str, options))}"
    )


def scale_residuals(residuals: Any, weight: Tensor) -> Any:
    """Every tensor of a residual tuple/list times its sample's weight (`weight` [N])."""
    if isinstance(residuals, Tensor):
        return residuals * weight.view(-1, *([1] * (residuals.ndim - 1)))
    return type(residuals)(scale_residuals(r, weight) for r in residuals)


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise AblateError(f"teacher.dtype {name!r} is unknown; valid: {', '.join(DTYPES)}")
    return DTYPES[name]


def on_meta(cls: type, config: dict[str, Any], dtype: torch.dtype) -> Any:
    """Construct without initialising (meta), then allocate uninitialised CPU storage."""
    with torch.device("meta"):
        model = cls(**config)
    nn.Module.to(model, dtype)  # plain cast: diffusers' `to` warns about fp32-kept modules
    return model.to_empty(device="cpu")


_POOL_SIZE = 1_000_003  # prime, so tiled rows do not line up


@torch.no_grad()
def fill_random(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Seeded weights ~ N(0, 1/fan_in), biases 0, norm scales 1.

    One normal pool is tiled (with a random shift) over each weight: a 2.6B-parameter SDXL UNet
    fills in seconds instead of the ~25 s of per-tensor `normal_` on two cores.
    A module of fake tensors (shapes only: `ablate bench --estimate-memory` builds under
    FakeTensorMode) has no values to fill, and drawing the shifts would need real ones.
    """
    if any(is_fake(p) for p in module.parameters()):
        return module.eval()
    pool = torch.randn(_POOL_SIZE, generator=generator)
    for name, p in module.named_parameters():
        if p.ndim < 2:
            p.fill_(0.0 if name.endswith("bias") else 1.0)
            continue
        shift = int(torch.randint(_POOL_SIZE, (1,), generator=generator))
        n, std = p.numel(), p[0].numel() ** -0.5
        src = (pool.roll(shift)[: min(n, _POOL_SIZE)] * std).to(p.dtype)
        flat = p.view(-1)
        full = n // _POOL_SIZE * _POOL_SIZE
        if full:
            flat[:full].view(-1, _POOL_SIZE).copy_(src.expand(full // _POOL_SIZE, -1))
        flat[full:].copy_(src[: n - full])
    for buf in module.buffers():  # none in SD UNets/VAEs today; keep them finite anyway
        buf.zero_()
    return module.eval()


def load_part(folder: Path, sub: str, loader: Any, **kwargs: Any) -> Any:
    """One component of a diffusers-layout folder, local files only; a failure is one line
    naming the folder and the component."""
    try:
        return loader(str(folder / sub), local_files_only=True, **kwargs)
    except (OSError, ValueError) as err:
        raise AblateError(f"teacher folder {folder}: cannot load {sub}/: {first_line(err)}") from None


def load_weights(folder: Path, sub: str, cls: Any, **kwargs: Any) -> Any:
    """A weights component (`cls.from_pretrained`), in the variant the folder holds."""
    return load_part(folder, sub, cls.from_pretrained, variant=weights_variant(folder / sub),
                     **kwargs)


def weights_variant(folder: Path) -> str | None:
    """ "fp16" when a component folder only holds fp16-variant weight files."""
    weights = [p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin")]
    return "fp16" if weights and all(".fp16" in name for name in weights) else None


def missing_parts(folder: Path, needed: list[str]) -> list[str]:
    return [n for n in needed if not (folder / n).exists()]


TRANSFORMER_FAMILIES = {"SD3Transformer2DModel": "sd3", "FluxTransformer2DModel": "flux"}


def transformer_family(folder: Path) -> str | None:
    """sd3 / flux for a diffusers folder whose transformer/ is one of theirs, else None."""
    import json

    config = folder / "transformer/config.json"
    if not config.is_file():
        return None
    try:
        return TRANSFORMER_FAMILIES.get(json.loads(config.read_text()).get("_class_name"))
    except (OSError, ValueError):
        return None
