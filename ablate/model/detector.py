"""The DiffusionFake detector: encoder + linear head at inference; during training
per-branch filters and weights, a guide and a frozen teacher add the guided loss

    L = w_ce * L_ce + lambda_s * L_s + lambda_t * L_t + w_ws * L_ws + w_wt * L_wt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ablate.model.latent_cache import sample_latents, vae_posterior
from ablate.model.teachers.base import scale_residuals
from ablate.model.tuning import constraint_losses, freeze_batchnorm_stats
from ablate.sharding import Shard

if TYPE_CHECKING:
    from collections.abc import Callable


@dataclass(frozen=True)
class LossWeights:
    """Defaults follow the paper (0.7 / 1.0); the released code uses 1 everywhere. The last
    four are the 2025 detectors' encoder terms (0 = off; docs/method.md)."""

    ce: float = 1.0
    source: float = 0.7
    target: float = 1.0
    weight_source: float = 1.0
    weight_target: float = 1.0
    orthogonal: float = 0.0  # Effort, backbone.tuning=svd
    singular: float = 0.0  # Effort, backbone.tuning=svd
    uniformity: float = 0.0  # GenD
    alignment: float = 0.0  # GenD


class Classifier(nn.Module):
    """What ships: encoder -> pooled feature -> Linear(C, 1), logits [B].

    The pooled feature is the grid's mean, or the encoder's class token where it gives one
    (`backbone.pool=cls`), L2-normalised with `l2_normalize` (GenD). `tuning` says which
    encoder parameters train (ablate/model/tuning.py); a frozen encoder (`linear`) runs
    without gradients and in eval mode, and no mode but `full` moves BatchNorm statistics.
    """

    def __init__(self, backbone: nn.Module, num_features: int, l2_normalize: bool = False,
                 tuning: str = "full") -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(num_features, 1)
        self.l2_normalize = l2_normalize
        self.tuning = tuning
        # bf16 autocast for evaluation, set by speed.configure_classifier; not saved
        self.autocast_dtype: torch.dtype | None = None

    def forward(self, images: Tensor) -> Tensor:
        if self.autocast_dtype is None or self.training:
            return self.logits(*self.encode(images))
        with torch.autocast(images.device.type, dtype=self.autocast_dtype):
            return self.logits(*self.encode(images)).float()  # [B]

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """(grid [B, C, h, w] for the filters, token [B, C'] or None for the head)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.tuning != "linear"):
            if getattr(self.backbone, "gives_token", False):  # forward(x, token=True)
                return self.backbone(images, token=True)
            return self.backbone(images), None

    def pooled(self, grid: Tensor, token: Tensor | None = None) -> Tensor:
        """What the head reads [B, C']."""
        feats = grid.mean(dim=(2, 3)) if token is None else token
        return F.normalize(feats, dim=1) if self.l2_normalize else feats

    def logits(self, grid: Tensor, token: Tensor | None = None) -> Tensor:
        return self.head(self.pooled(grid, token)).squeeze(1)  # [B]

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if self.tuning == "linear":
            self.backbone.eval()  # a fixed feature extractor: no dropout, no drop-path
        elif self.tuning != "full":
            freeze_batchnorm_stats(self.backbone)
        return self

    @property
    def frozen_base_sha(self) -> str | None:
        """sha256 of the encoder file whose frozen part the trained tensors need; None when
        the encoder is stored whole (trained in full, or random init: no file to return to)."""
        return None if self.tuning == "full" else getattr(self.backbone, "base_sha256", None)

    def frozen_base_keys(self) -> set[str]:
        """State-dict keys (of this module) that come unchanged from the encoder's weights
        file: a run stores everything else, plus the file's hash (`frozen_base_sha`)."""
        if self.frozen_base_sha is None:
            return set()
        trained = {f"backbone.{n}" for n, p in self.backbone.named_parameters()
                   if p.requires_grad}
        return {k for k in self.state_dict() if k.startswith("backbone.") and k not in trained}


class DiffusionFakeDetector(nn.Module):
    """Everything a training step needs; `classifier` is all that ships.

    Without guidance (`guide=none`, the plain baseline) only the classifier exists:
    no teacher, VAE, guide, filter or weight module is built, and the loss is L_ce.
    """

    def __init__(
        self,
        classifier: Classifier,
        filters: tuple[nn.Module, nn.Module] | None = None,
        weights: tuple[nn.Module, nn.Module] | None = None,
        guide: nn.Module | None = None,
        teacher: nn.Module | None = None,
        loss_weights: LossWeights = LossWeights(),
    ) -> None:
        super().__init__()
        parts = (filters, weights, guide, teacher)
        if any(p is None for p in parts) and any(p is not None for p in parts):
            raise ValueError("give filters, weights, guide and teacher together, or none of them")
        self.classifier = classifier
        self.filter_source, self.filter_target = filters or (None, None)
        self.weight_source, self.weight_target = weights or (None, None)
        self.guide = guide
        self.teacher = teacher
        self.loss_weights = loss_weights
        # this process's place in a data-parallel run (ablate/sharding.py); not saved
        self.shard: Shard | None = None
        # recompute the filters' activations in backward (train.grad_checkpointing)
        self.checkpoint_filters = False
        # the part of the teacher's schedule the guided step draws timesteps from
        # (train.t_min, train.t_max; Teacher.sample_timesteps); not saved
        self.timestep_range: tuple[float, float] = (0.0, 1.0)

    @property
    def guided(self) -> bool:
        """False for the plain baseline (encoder + head, CE only)."""
        return self.guide is not None

    def forward(self, images: Tensor) -> Tensor:
        """Inference: logits [B] from the encoder and head alone."""
        return self.classifier(images)

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Everything but the frozen teacher (which is stored once, elsewhere) and the frozen
        part of an encoder that came from a weights file (`Classifier.frozen_base_keys`)."""
        frozen = {f"classifier.{k}" for k in self.classifier.frozen_base_keys()}
        return {k: v for k, v in self.state_dict().items()
                if not k.startswith("teacher.") and k not in frozen}

    def encoder_losses(self, pooled: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """The 2025 detectors' terms whose weight is not 0: Effort's constraints on the SVD
        residuals, GenD's uniformity and alignment of the head's inputs [B, C']."""
        lw, out = self.loss_weights, {}
        if lw.orthogonal or lw.singular:
            terms = constraint_losses(self.classifier.backbone)
            for key in ("orthogonal", "singular"):
                if getattr(lw, key) and key in terms:
                    out[key] = terms[key]
        if lw.uniformity:
            out["uniformity"] = uniformity(pooled)
        if lw.alignment:
            out["alignment"] = alignment(pooled, labels)
        return out

    def guided_losses(
        self, images: Tensor, sources: Tensor, targets: Tensor, labels: Tensor,
        generator: torch.Generator | None = None, posteriors: Tensor | None = None,
        batched: bool = True, clean: Tensor | None = None, backward: bool = False,
    ) -> dict[str, Tensor]:
        """images/sources/targets [B, 3, H, W] in [-1, 1], labels [B] (1 = fake).

        `images` is what the encoder sees (augmented); `clean` [B, 3, H, W] is the same
        frame un-augmented (default: `images`), from which the weight targets come, as
        the released code computes them offline. `posteriors` [3B, 2C, h', w']: VAE
        posteriors of clean images, sources and targets (mean ++ logvar, e.g. from a
        LatentCache); computed here when None. Weight targets use the posterior means
        (deterministic); the diffusion latents of sources and targets are drawn from
        their posteriors with `generator`, then one noise and one timestep [B] shared
        by both branches, the timestep within `timestep_range` (train.t_min, train.t_max):
        the same random stream, so cached and uncached steps agree.
        `batched=False` runs the two branches one after the other (the reference).
        `backward=True` (guided only) also backpropagates: each branch's loss as soon as it
        is known, so its activations are freed before the other branch runs, then the rest;
        the gradients are the joint ones, summed in another order, and the returned losses
        are detached. Without guidance only "ce" and "total" are returned.
        """
        lw = self.loss_weights
        encoded, token = self.classifier.encode(images)  # [B, C, h, w], [B, C'] or None
        backward = backward and self.guided
        # leaves that collect the branches' gradients for one encoder backward at the end
        feats = encoded.detach().requires_grad_() if backward else encoded
        token_in = token.detach().requires_grad_() if backward and token is not None else token
        pooled = self.classifier.pooled(feats, token_in)  # [B, C']
        ce = F.binary_cross_entropy_with_logits(self.classifier.head(pooled).squeeze(1),
                                                labels.float())
        extra = self.encoder_losses(pooled, labels)
        extra_total = sum((getattr(lw, k) * v for k, v in extra.items()),
                          torch.zeros((), device=ce.device))
        if not self.guided:
            return {"ce": ce, **extra, "total": lw.ce * ce + extra_total}
        b, size = images.shape[0], images.shape[-1]
        teacher = self.teacher
        if posteriors is None:
            clean = images if clean is None else clean
            posteriors = vae_posterior(teacher, torch.cat([clean, sources, targets]))
        with torch.no_grad():  # nothing below needs a gradient until the guide
            posteriors = posteriors.to(feats.device)
            mean_x, mean_s, mean_t = posteriors[:, : teacher.latent_channels].chunk(3)
            # this process's rows of global draws (one process: all of them)
            shard = self.shard or Shard(0, 1)
            latents = sample_latents(teacher, posteriors[b:], generator, shard)
            lat_s, lat_t = latents.chunk(2)  # [B, C_lat, h', w'] each
            # the same noise for both branches [B, C_lat, h', w'], timesteps [B]
            noise = shard.randn(tuple(lat_s.shape), generator, lat_s.device, lat_s.dtype)
            t = shard.timesteps(teacher, b, generator, lat_s.device, lat_s.shape[-2:],
                                self.timestep_range)
            cosines = {  # posterior means of the un-augmented x vs s (resp. t); reals: 1
                key: torch.where(labels > 0, F.cosine_similarity(
                    mean_x.flatten(1), mean.flatten(1), dim=1), 1.0)
                for key, mean in (("weight_source", mean_s), ("weight_target", mean_t))
            }
        # [B] each (a module may return [B, 1]: its contract, ablate.model.contracts)
        w_s = self.weight_source(feats).reshape(-1)
        w_t = self.weight_target(feats).reshape(-1)
        losses = {"ce": ce, **extra}
        head_terms = [extra_total]
        for key, module, w in (("weight_source", self.weight_source, w_s),
                               ("weight_target", self.weight_target, w_t)):
            if module.has_loss:
                losses[key] = F.mse_loss(w.float(), module.target(cosines[key]).float())
                head_terms.append(getattr(lw, key) * losses[key])

        scales = (w_s.detach() if self.weight_source.detach else w_s,
                  w_t.detach() if self.weight_target.detach else w_t)
        if backward:
            return self._backward_by_branch((encoded, token), (feats, token_in),
                                            (lat_s, lat_t), noise, t, scales, size, losses,
                                            head_terms)
        diffusion = self._diffusion_batched if batched else self._diffusion_sequential
        per_branch = diffusion(feats, (lat_s, lat_t), noise, t, scales, size)  # [2B]
        losses["source"], losses["target"] = per_branch[:b].mean(), per_branch[b:].mean()
        losses["total"] = (
            lw.ce * ce + lw.source * losses["source"] + lw.target * losses["target"]
            + sum(head_terms, torch.zeros((), device=ce.device))
        )
        return losses

    def _backward_by_branch(
        self, encoded: tuple[Tensor, Tensor | None], leaves_in: tuple[Tensor, Tensor | None],
        branch_latents: tuple[Tensor, Tensor],
        noise: Tensor, t: Tensor, scales: tuple[Tensor, Tensor], size: int,
        losses: dict[str, Tensor], head_terms: list[Tensor],
    ) -> dict[str, Tensor]:
        """`guided_losses(backward=True)`: branch by branch, then the heads and the encoder.

        `leaves_in` (grid, token) are leaves cut from the encoder's `encoded` outputs, and each
        branch weight enters its branch as a
        leaf too, so a branch's backward frees its own graph (filter, guide, teacher) and
        leaves the shared ones (encoder, weight heads) for one backward at the end, fed with
        the gradients the branches left on the leaves."""
        lw, b = self.loss_weights, noise.shape[0]
        feats = leaves_in[0]
        leaves = tuple(w.detach().requires_grad_(w.requires_grad) for w in scales)  # [B] each
        weights = (lw.source, lw.target)

        def release(index: int, mse: Tensor) -> None:
            _backward([weights[index] * mse.mean()])

        per_branch = self._diffusion_sequential(feats, branch_latents, noise, t, leaves, size,
                                                release)  # [2B], detached
        head = lw.ce * losses["ce"] + sum(head_terms, torch.zeros((), device=noise.device))
        outputs, grads = [head], [None]
        for w, leaf in zip(scales, leaves, strict=True):
            if leaf.grad is not None:  # a weight trained by the diffusion loss (not detached)
                outputs.append(w)
                grads.append(leaf.grad)
        _backward(outputs, grads)
        cut = [(out, leaf.grad) for out, leaf in zip(encoded, leaves_in, strict=True)
               if out is not None and out.requires_grad and leaf.grad is not None]
        if cut:  # a frozen encoder (backbone.tuning=linear) has nothing to take them
            _backward([out for out, _ in cut], [grad for _, grad in cut])
        losses = {k: v.detach() for k, v in losses.items()}
        losses["source"], losses["target"] = per_branch[:b].mean(), per_branch[b:].mean()
        losses["total"] = (head.detach() + lw.source * losses["source"]
                           + lw.target * losses["target"])
        return losses

    def filtered(self, filt: nn.Module, feats: Tensor) -> Tensor:
        """filt(feats), its activations recomputed in backward when checkpointing: the
        filters upsample to the latent grid, where their maps are the largest."""
        if self.checkpoint_filters and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(filt, feats, use_reentrant=False)
        return filt(feats)

    def _diffusion_batched(
        self, feats: Tensor, branch_latents: tuple[Tensor, Tensor], noise: Tensor, t: Tensor,
        scales: tuple[Tensor, Tensor], size: int,
    ) -> Tensor:
        """Both branches as one [2B] batch: one guide call, one teacher call. -> MSE [2B]."""
        teacher, b = self.teacher, noise.shape[0]
        # cond [2B, C0, h', w'] stays in the trained modules' precision (fp32 weights; autocast
        # decides the compute dtype): the guide casts its inputs, the teacher its residuals
        cond = torch.cat([self.filtered(self.filter_source, feats),
                          self.filtered(self.filter_target, feats)])
        with torch.no_grad():
            latents, noise2, t2 = torch.cat(branch_latents), noise.repeat(2, 1, 1, 1), t.repeat(2)
            noisy = teacher.add_noise(latents, noise2, t2)  # [2B, C_lat, h', w']
            target = teacher.diffusion_target(latents, noise2, t2)
        residuals = self.guide(noisy, t2, cond, teacher.conditioning(2 * b, size))
        pred = teacher.predict(noisy, t2, *scale_residuals(residuals, torch.cat(scales)))  # [2B]
        return F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))

    def _diffusion_sequential(
        self, feats: Tensor, branch_latents: tuple[Tensor, Tensor], noise: Tensor, t: Tensor,
        scales: tuple[Tensor, Tensor], size: int,
        release: Callable[[int, Tensor], None] | None = None,
    ) -> Tensor:
        """The same losses, one branch after the other: B-sized guide and teacher calls.
        `release(index, mse [B])` backpropagates a branch before the next runs (its MSE is
        then kept detached)."""
        teacher, b = self.teacher, noise.shape[0]
        out = []
        for index, (filt, latents, w) in enumerate(
            zip((self.filter_source, self.filter_target), branch_latents, scales, strict=True)
        ):
            cond = self.filtered(filt, feats)  # [B, C0, h', w']
            noisy = teacher.add_noise(latents, noise, t)
            target = teacher.diffusion_target(latents, noise, t)
            residuals = self.guide.branch(index, noisy, t, cond, teacher.conditioning(b, size))
            pred = teacher.predict(noisy, t, *scale_residuals(residuals, w))
            mse = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
            if release is not None:
                release(index, mse)
                mse = mse.detach()
            out.append(mse)
        return torch.cat(out)  # [2B]


def _backward(outputs: list[Tensor], grads: list[Tensor | None] | None = None) -> None:
    """Backward outside autocast, as torch advises: `guided_losses(backward=True)` runs
    inside the step's autocast region. [outputs], [their gradients] (None: scalars)."""
    with torch.autocast(outputs[0].device.type, enabled=False):
        torch.autograd.backward(outputs, grads)


def uniformity(feats: Tensor, t: float = 2.0) -> Tensor:
    """Wang & Isola's uniformity of unit features [B, C]: log mean over pairs i != j of
    exp(-t ||f_i - f_j||^2); lower = spread over the sphere (GenD's regulariser)."""
    b = feats.shape[0]
    if b < 2:
        return feats.sum() * 0
    dist = torch.cdist(feats.float(), feats.float()).pow(2)  # [B, B]
    off = ~torch.eye(b, dtype=torch.bool, device=feats.device)
    return torch.log(torch.exp(-t * dist[off]).mean())


def alignment(feats: Tensor, labels: Tensor) -> Tensor:
    """Mean squared distance between features [B, C] of the same label (pairs i < j); 0
    when no two share a label."""
    same = labels[:, None] == labels[None, :]  # [B, B]
    pairs = torch.triu(same, diagonal=1)
    if not pairs.any():
        return feats.sum() * 0
    return torch.cdist(feats.float(), feats.float()).pow(2)[pairs].mean()
