"""The DiffusionFake detector: encoder + linear head at inference; during training
per-branch filters and weights, a guide and a frozen teacher add the guided loss

    L = w_ce * L_ce + lambda_s * L_s + lambda_t * L_t + w_ws * L_ws + w_wt * L_wt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class LossWeights:
    """Defaults follow the paper (0.7 / 1.0); the released code uses 1 everywhere."""

    ce: float = 1.0
    source: float = 0.7
    target: float = 1.0
    weight_source: float = 1.0
    weight_target: float = 1.0


class Classifier(nn.Module):
    """What ships: encoder -> global average pool -> Linear(C, 1), logits [B]."""

    def __init__(self, backbone: nn.Module, num_features: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(num_features, 1)

    def forward(self, images: Tensor) -> Tensor:
        return self.logits(self.backbone(images))

    def logits(self, feats: Tensor) -> Tensor:
        return self.head(feats.mean(dim=(2, 3))).squeeze(1)  # [B]


class DiffusionFakeDetector(nn.Module):
    """Everything a guided training step needs; `classifier` is all that ships."""

    def __init__(
        self,
        classifier: Classifier,
        filters: tuple[nn.Module, nn.Module],
        weights: tuple[nn.Module, nn.Module],
        guide: nn.Module,
        teacher: nn.Module,
        loss_weights: LossWeights,
    ) -> None:
        super().__init__()
        self.classifier = classifier
        self.filter_source, self.filter_target = filters
        self.weight_source, self.weight_target = weights
        self.guide = guide
        self.teacher = teacher
        self.loss_weights = loss_weights

    def forward(self, images: Tensor) -> Tensor:
        """Inference: logits [B] from the encoder and head alone."""
        return self.classifier(images)

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Everything but the frozen teacher (which is stored once, elsewhere)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("teacher.")}

    def guided_losses(
        self, images: Tensor, sources: Tensor, targets: Tensor, labels: Tensor,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """images/sources/targets [B, 3, H, W] in [-1, 1], labels [B] (1 = fake)."""
        b, size = images.shape[0], images.shape[-1]
        teacher, lw = self.teacher, self.loss_weights
        feats = self.classifier.backbone(images)  # [B, C, h, w]
        ce = F.binary_cross_entropy_with_logits(self.classifier.logits(feats), labels.float())

        latents = teacher.encode(torch.cat([images, sources, targets]))  # [3B, 4, h', w']
        lat_x, lat_s, lat_t = latents.chunk(3)
        w_s, w_t = self.weight_source(feats), self.weight_target(feats)  # [B] each
        losses = {"ce": ce}
        weight_losses = []
        for key, module, w, lat in (
            ("weight_source", self.weight_source, w_s, lat_s),
            ("weight_target", self.weight_target, w_t, lat_t),
        ):
            if module.has_loss:
                cosine = F.cosine_similarity(lat_x.flatten(1), lat.flatten(1), dim=1)  # [B]
                cosine = torch.where(labels > 0, cosine, torch.ones_like(cosine))  # reals: 1
                losses[key] = F.mse_loss(w, module.target(cosine).to(w.dtype))
                weight_losses.append(getattr(lw, key) * losses[key])

        dtype = teacher.unet.dtype  # a reduced-precision teacher gets inputs in its own dtype
        cond = torch.cat([self.filter_source(feats), self.filter_target(feats)]).to(dtype)
        # cond: [2B, C0, h', w']
        noise = torch.randn(lat_s.shape, generator=generator, device=lat_s.device,
                            dtype=lat_s.dtype).repeat(2, 1, 1, 1)  # same noise, both branches
        t = torch.randint(0, teacher.scheduler.config.num_train_timesteps, (b,),
                          generator=generator, device=lat_s.device).repeat(2)  # [2B]
        clean = torch.cat([lat_s, lat_t])  # [2B, 4, h', w']
        noisy = teacher.add_noise(clean, noise, t)
        downs, mid = self.guide(noisy, t, cond, teacher.conditioning(2 * b, size))
        scale = torch.cat([
            w_s.detach() if self.weight_source.detach else w_s,
            w_t.detach() if self.weight_target.detach else w_t,
        ]).view(-1, 1, 1, 1).to(dtype)  # [2B, 1, 1, 1]
        pred = teacher.predict(noisy, t, [d * scale for d in downs], mid * scale)
        target = teacher.diffusion_target(clean, noise, t)
        per_branch = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        losses["source"], losses["target"] = per_branch[:b].mean(), per_branch[b:].mean()
        losses["total"] = (
            lw.ce * ce + lw.source * losses["source"] + lw.target * losses["target"]
            + sum(weight_losses, torch.zeros((), device=ce.device))
        )
        return losses
