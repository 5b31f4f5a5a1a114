"""Weight modules: a per-sample scalar in (0, 1) saying how much of one branch
(source or target) the encoder's features should be able to rebuild.

Trained towards the similarity between the VAE latents of the input and of that
branch's image: `cos01` = (cos + 1) / 2 (released code), `cos` = plain cosine
(paper). Real images rebuild themselves, so their target is 1.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ablate.core.errors import AblateError
from ablate.registry import WEIGHTS

TARGETS = ("cos01", "cos")
POOLS = ("mean", "max")  # how the feature grid becomes one vector: both sources use the mean


class WeightModule(nn.Module):
    """Base: `forward(feats [B, C, h, w]) -> [B]`, plus how it is trained."""

    has_loss: bool = True

    def __init__(self, target: str = "cos01", detach: bool = False, pool: str = "mean") -> None:
        super().__init__()
        if target not in TARGETS:
            raise AblateError(f"weight.target must be one of {', '.join(TARGETS)}, not {target!r}")
        if pool not in POOLS:
            raise AblateError(f"weight.pool must be one of {', '.join(POOLS)}, not {pool!r}")
        self.target_kind = target
        self.detach = detach  # detach W where it scales the guide's residuals
        self.pool = pool

    def pooled(self, x: Tensor) -> Tensor:
        """[B, C, h, w] -> [B, C]: the grid's mean (paper, released code) or max."""
        return x.mean(dim=(2, 3)) if self.pool == "mean" else x.amax(dim=(2, 3))

    def target(self, cosine: Tensor) -> Tensor:
        """Regression target from the cosine similarity of latents, [B]."""
        return (cosine + 1) / 2 if self.target_kind == "cos01" else cosine


@WEIGHTS.register("code", "3 convs (no activations) -> GAP -> FC -> FC -> sigmoid (released code)")
class ConvWeight(WeightModule):
    def __init__(
        self,
        in_channels: int,
        widths: tuple[int, ...] = (1024, 512, 256),
        hidden: int = 128,
        target: str = "cos01",
        detach: bool = False,
        pool: str = "mean",
    ) -> None:
        super().__init__(target, detach, pool)
        chans = [in_channels, *widths]
        self.convs = nn.Sequential(
            *[nn.Conv2d(a, b, 3, padding=1) for a, b in zip(chans[:-1], chans[1:], strict=True)]
        )
        self.fc = nn.Sequential(nn.Linear(chans[-1], hidden), nn.Linear(hidden, 1))

    def forward(self, feats: Tensor) -> Tensor:
        x = self.pooled(self.convs(feats))  # [B, widths[-1]]
        return self.fc(x).squeeze(1).sigmoid()  # [B]


@WEIGHTS.register("paper", "global pool -> 5-layer MLP -> sigmoid (paper)")
class MLPWeight(WeightModule):
    def __init__(
        self,
        in_channels: int,
        widths: tuple[int, ...] = (512, 256, 128, 64),
        target: str = "cos",
        detach: bool = False,
        pool: str = "mean",
    ) -> None:
        super().__init__(target, detach, pool)
        chans = [in_channels, *widths, 1]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(chans[:-1], chans[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < len(chans) - 2:
                layers.append(nn.ReLU(inplace=True))
        self.mlp = nn.Sequential(*layers)  # len(widths) + 1 linear layers

    def forward(self, feats: Tensor) -> Tensor:
        return self.mlp(self.pooled(feats)).squeeze(1).sigmoid()  # [B]


@WEIGHTS.register("constant", "a fixed weight for every sample; nothing to train")
class ConstantWeight(WeightModule):
    has_loss = False

    def __init__(self, in_channels: int, value: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= value <= 1.0:
            raise AblateError(f"weight.value must lie in [0, 1], not {value}")
        self.value = value

    def forward(self, feats: Tensor) -> Tensor:
        return torch.full((feats.shape[0],), self.value, device=feats.device, dtype=feats.dtype)


@WEIGHTS.register("none", "no weight module: residuals enter the teacher unscaled (weight 1)")
class NoWeight(ConstantWeight):
    def __init__(self, in_channels: int) -> None:
        super().__init__(in_channels, value=1.0)
