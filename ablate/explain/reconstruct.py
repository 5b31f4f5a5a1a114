"""A guided run, loaded whole, and its teacher's reconstructions of a batch of frames.

The disagreement of a frame is the distance between its rebuilt source and rebuilt
target: root mean square of their difference, in the teacher's latent space and in
pixels ([-1, 1] scale), averaged over the sampling seeds. The paper's claim is that it is
large for fakes and small for reals; `ablate explain` reports the AUC of it as a score.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig
from safetensors.torch import load_file
from torch import Tensor

from ablate.checkpoint import (
    RECIPE,
    TRAINABLE,
    check_frozen_base,
    quiet_encoder_notes,
    rebuild_recipe,
    resolve_run,
)
from ablate.core.errors import AblateError
from ablate.core.names import RUN_INFO
from ablate.model.build import build_detector
from ablate.model.sampling import decode, guidance_of, sample_branch
from ablate.recipe import is_guided, load_yaml, recipe_hash


@dataclass
class GuidedRun:
    """A run folder's whole detector (encoder, head, filters, weights, guide, teacher)."""

    folder: Path
    cfg: DictConfig
    detector: torch.nn.Module
    info: dict = field(default_factory=dict)
    recipe: str = ""  # recipe hash with the seed set to 0: runs of one recipe share it

    @property
    def threshold(self) -> float | None:
        return (self.info.get("selection") or {}).get("threshold")


def load_guided_run(path: str | Path, device: str | torch.device = "cpu") -> GuidedRun:
    """Rebuild a guided run's detector from its recipe and trained tensors; the teacher
    comes from where the recipe says (a tiny twin is built in code)."""
    folder = resolve_run(path)
    recorded = load_yaml(folder / RECIPE)
    if not is_guided(recorded):
        raise AblateError(f"run {folder.name} is a baseline (guide=none): it has no filter, "
                          "weight module or guide, so its teacher has nothing to rebuild; "
                          "give a guided run")
    if not (folder / TRAINABLE).is_file():
        raise AblateError(f"{folder} has no {TRAINABLE} (the filters and guide); was it "
                          "written by an older ablate? Retrain it")
    cfg, base_sha = rebuild_recipe(folder)  # as load_classifier: the run's own encoder
    with quiet_encoder_notes():
        detector = build_detector(cfg)
    check_frozen_base(folder, cfg, detector.classifier, base_sha)
    state = load_file(str(folder / TRAINABLE), device="cpu")
    missing, unexpected = detector.load_state_dict(state, strict=False)
    frozen = {f"classifier.{k}" for k in detector.classifier.frozen_base_keys()}
    missing = [k for k in missing if not k.startswith("teacher.") and k not in frozen]
    if missing or unexpected:
        raise AblateError(f"{folder / TRAINABLE} does not match its recipe ({len(missing)} "
                          f"missing, {len(unexpected)} unexpected tensors); was it replaced?")
    info_file = folder / RUN_INFO
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    recorded.seed = 0
    return GuidedRun(folder, cfg, detector.to(device).eval(), info, recipe_hash(recorded))


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
                strength: float | None = None, first_frame: int = 0) -> Reconstructions:
    """Rebuild source and target of images [B, 3, H, W] in [-1, 1] once per sampling seed.

    Frame i of the batch (`first_frame` + i of its set) gets its own noise per seed, drawn
    on the CPU (the same on any device and at any batch size), shared by both branches; with
    `strength` the start is the frame's VAE posterior mean, noised (no draw)."""
    detector, teacher = run.detector, run.detector.teacher
    device = next(detector.classifier.parameters()).device
    images = images.to(device)
    size = images.shape[-1]
    guidance = guidance_of(detector, images)
    logits = detector.classifier(images).float().cpu()
    shape = (teacher.latent_channels, size // teacher.vae_factor, size // teacher.vae_factor)
    init = None if strength is None else posterior_mean(teacher, images)
    first: tuple[Tensor, Tensor] | None = None
    latent_gaps, pixel_gaps = [], []
    for seed in seeds:
        noise = torch.stack([frame_noise(shape, seed, first_frame + i)
                             for i in range(images.shape[0])]).to(device, teacher.dtype)
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


def frame_noise(shape: tuple[int, ...], seed: int, frame: int) -> Tensor:
    """The noise [C_lat, h, w] of one frame under one sampling seed."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + frame)
    return torch.randn(shape, generator=generator)


def posterior_mean(teacher, images: Tensor) -> Tensor:  # noqa: ANN001
    """Scaled VAE posterior means [B, C_lat, h, w]: SDEdit's start, with nothing drawn."""
    x = images.to(dtype=teacher.vae.dtype)
    return teacher.scale_latents(teacher.vae.encode(x).latent_dist.mode())


def _rms(diff: Tensor) -> Tensor:
    """[B, ...] -> [B] root mean square, on the CPU in float32."""
    return diff.float().flatten(1).pow(2).mean(1).sqrt().cpu()
