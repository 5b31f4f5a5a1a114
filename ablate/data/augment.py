"""Training-image augmentation presets, built on torchvision.transforms.v2.

One recipe setting, `data.augment`, names a preset:

- `none`: identity.
- `flip`: horizontal flip, p=0.5.
- `paper`: the paper's "flip + cutout": flip p=0.5, then one zeroed rectangle
  (v2.RandomErasing, p=0.5, area 2-20% of the image, aspect 0.3-3.3).
- `code`: the released code's albumentations pipeline (`datasets/transforms.py`,
  `create_data_transforms_alb2`), with v2 equivalents, in order:
  HorizontalFlip(p=0.5); Rotate(limit=30, p=0.5); RandomResizedCrop(scale=(0.5, 1.0), p=0.5);
  HorizontalFlip(p=0.5) (the released pipeline has it twice); ToGray(p=0.1);
  GaussNoise(p=0.1, var_limit=(10, 50) on the 0-255 scale). Differences: rotated corners are
  filled with black (albumentations reflects the border; v2 has only a constant fill), and
  the crop goes straight to the image size (the released code crops to 256, then resizes).

Every preset maps a uint8 tensor [3, S, S] to a uint8 tensor [3, S, S] and draws from
torch's global RNG, so DataLoader workers (seeded per worker by torch) differ and a
`torch.manual_seed` reproduces a run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ablate.core.errors import AblateError
from ablate.core.schema import choices

PRESETS = choices("data.augment")  # declared with the setting (ablate/core/schema.py)

Augment = Callable[[torch.Tensor], torch.Tensor]

# albumentations GaussNoise default: variance uniform in (10, 50) on the 0-255 scale
NOISE_VAR_255 = (10.0, 50.0)


class _RandomGaussianNoise(v2.Transform):
    """GaussianNoise whose sigma is drawn per call, as albumentations' GaussNoise does.

    v2.GaussianNoise has a fixed sigma; this draws the variance uniformly in `var_limit`
    (0-255 scale) and adds noise with that std to a float image in [0, 1], clipped.
    """

    def __init__(self, var_limit: tuple[float, float] = NOISE_VAR_255) -> None:
        super().__init__()
        self.var_limit = var_limit

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        var = torch.empty(()).uniform_(*self.var_limit)
        return {"sigma": float(var.sqrt()) / 255.0}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.gaussian_noise, inpt, sigma=params["sigma"], clip=True)


def _gauss_noise(p: float) -> v2.Transform:
    """uint8 -> float [0, 1] -> + noise, clipped -> uint8; only when applied (else exact)."""
    noisy = v2.Compose(
        [
            v2.ToDtype(torch.float32, scale=True),  # [3, S, S] uint8 -> float in [0, 1]
            _RandomGaussianNoise(),  # clipped to [0, 1]
            v2.ToDtype(torch.uint8, scale=True),  # [3, S, S] float -> uint8
        ]
    )
    return v2.RandomApply([noisy], p=p)


def _paper() -> v2.Transform:
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomErasing(p=0.5, scale=(0.02, 0.2), ratio=(0.3, 3.3), value=0),  # cutout
        ]
    )


def _code(image_size: int) -> v2.Transform:
    rotate = v2.RandomRotation(30, interpolation=v2.InterpolationMode.BILINEAR)
    crop = v2.RandomResizedCrop(image_size, scale=(0.5, 1.0))  # [3, S, S] -> [3, S, S]
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomApply([rotate], p=0.5),
            v2.RandomApply([crop], p=0.5),
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomGrayscale(p=0.1),  # keeps 3 channels (R = G = B)
            _gauss_noise(p=0.1),
        ]
    )


def build_augment(name: str, image_size: int) -> Augment:
    """The preset `name` as a callable uint8 [3, S, S] -> uint8 [3, S, S] (S = image_size)."""
    if not isinstance(name, str) or name not in PRESETS:
        raise AblateError(
            f"unknown augment preset {name!r}; use one of: {', '.join(PRESETS)} "
            "(booleans true/false are no longer accepted: use flip / none)"
        )
    if name == "none":
        return v2.Identity()
    if name == "flip":
        return v2.RandomHorizontalFlip(p=0.5)
    if name == "paper":
        return _paper()
    return _code(image_size)
