"""A guided run, loaded whole, and its teacher's reconstructions of a batch of frames.

The disagreement of a frame is the distance between its rebuilt source and rebuilt
target: root mean square of their difference, in the teacher's latent space and in
pixels ([-1, 1] scale), averaged over the sampling seeds. The paper's claim is that it is
large for fakes and small for reals; `ablate explain` reports the AUC of it as a score.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig
from safetensors.torch import load_file
from torch import Tensor

from ablate.checkpoint import RECIPE, TRAINABLE, resolve_run
from ablate.core.errors import AblateError
from ablate.core.names import RUN_INFO
from ablate.model.build import build_detector
from ablate.model.sampling import decode, guidance_of, sample_branch
from ablate.recipe import is_guided, load_yaml


@dataclass
class GuidedRun:
    """A run folder's whole detector (encoder, head, filters, weights, guide, teacher)."""

    folder: Path
    cfg: DictConfig
    detector: torch.nn.Module
    info: dict = field(default_factory=dict)

    @property
    def threshold(self) -> float | None:
        return (self.info.get("selection") or {}).get("threshold")


def load_guided_run(path: str | Path, device: str | torch.device = "cpu") -> GuidedRun:
    """Rebuild a guided run's detector from its recipe and trained tensors; the teacher
    comes from where the recipe says (a tiny twin is built in code)."""
    folder = resolve_run(path)
    cfg = load_yaml(folder / RECIPE)
    if not is_guided(cfg):
        raise AblateError(f"run {folder.name} is a baseline (guide=none): it has no filter, "
                          "weight module or guide, so its teacher has nothing to rebuild; "
                          "give a guided run")
    if not (folder / TRAINABLE).is_file():
        raise AblateError(f"{folder} has no {TRAINABLE} (the filters and guide); was it "
                          "written by an older ablate? Retrain it")
    logger = logging.getLogger("ablate.model.backbone")
    level = logger.level
    logger.setLevel(logging.ERROR)  # the encoder's "random init" note: the file overwrites it
    try:
        detector = build_detector(cfg)
    finally:
        logger.setLevel(level)
    state = load_file(str(folder / TRAINABLE), device="cpu")
    missing, unexpected = detector.load_state_dict(state, strict=False)
    frozen = {f"classifier.{k}" for k in detector.classifier.frozen_base_keys()}
    missing = [k for k in missing if not k.startswith("teacher.") and k not in frozen]
    if missing or unexpected:
        raise AblateError(f"{folder / TRAINABLE} does not match its recipe ({len(missing)} "
                          f"missing, {len(unexpected)} unexpected tensors); was it replaced?")
    info_file = folder / RUN_INFO
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    return GuidedRun(folder, cfg, detector.to(device).eval(), info)


@dataclass
class Reconstructions:
    """One batch of B frames: images of the first sampling seed, gaps over all seeds."""

    source: Tensor  # [B, 3, H, W] in [-1, 1], rebuilt under the source branch
    target: Tensor  # [B, 3, H, W]
    weight_source: Tensor  # [B] W_s
    weight_target: Tensor  # [B] W_t
    latent_gap: Tensor  # [B] RMS(z_s - z_t), mean over seeds
    pixel_gap: Tensor  # [B] RMS(x_s - x_t), mean over seeds
    logits: Tensor  # [B] the classifier's


@torch.no_grad()
def reconstruct(run: GuidedRun, images: Tensor, seeds: list[int], steps: int,
                strength: float | None = None) -> Reconstructions:
    """Rebuild source and target of images [B, 3, H, W] in [-1, 1] once per sampling seed.

    Each seed draws one noise [B, C_lat, h, w] on the CPU (the same on any device), shared
    by both branches; with `strength` the start is the frame's own VAE latent, noised."""
    detector, teacher = run.detector, run.detector.teacher
    device = next(detector.classifier.parameters()).device
    images = images.to(device)
    size = images.shape[-1]
    guidance = guidance_of(detector, images)
    logits = detector.classifier(images).float().cpu()
    shape = (images.shape[0], teacher.latent_channels, size // teacher.vae_factor,
             size // teacher.vae_factor)
    first: tuple[Tensor, Tensor] | None = None
    latent_gaps, pixel_gaps = [], []
    for seed in seeds:
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(shape, generator=generator).to(device, teacher.dtype)
        init = None if strength is None else teacher.encode(images, generator=generator)
        branches = [sample_branch(detector, i, guidance, noise, steps, size, init, strength)
                    for i in (0, 1)]  # [B, C_lat, h, w] each
        pictures = [decode(teacher, z) for z in branches]  # [B, 3, H, W] each
        latent_gaps.append(_rms(branches[0] - branches[1]))
        pixel_gaps.append(_rms(pictures[0] - pictures[1]))
        if first is None:
            first = (pictures[0].cpu(), pictures[1].cpu())
    assert first is not None, "at least one sampling seed"
    return Reconstructions(
        first[0], first[1], guidance.weights[0].cpu(), guidance.weights[1].cpu(),
        torch.stack(latent_gaps).mean(0), torch.stack(pixel_gaps).mean(0), logits,
    )


def _rms(diff: Tensor) -> Tensor:
    """[B, ...] -> [B] root mean square, on the CPU in float32."""
    return diff.float().flatten(1).pow(2).mean(1).sqrt().cpu()
