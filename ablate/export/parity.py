"""The exported file against the PyTorch classifier it came from: the same logits on a
seeded batch, within a tolerance, at two batch sizes (the batch axis is dynamic)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ablate.export.load import ExportedModel

# max |Δlogit| / max(1, |logit|): absolute for logits within ±1, relative beyond, where a
# trained detector's logits (tens, on confident frames) carry float32 reordering errors
# of ~1e-6 of their size that an absolute 1e-4 would mistake for a broken export
TOLERANCE = 1e-4
# neither is the batch the exporters saw (EXAMPLE_BATCH): the axis is dynamic; 1 is what
# predict sends for a single image, and what torch.export specialises apart
BATCHES = (3, 1)
EXAMPLE_BATCH = 2  # the batch the exporters see (not 1: torch.export specialises 0 and 1)


@dataclass(frozen=True)
class Parity:
    max_diff: float  # inf when shapes differ or an output is not finite
    images: int
    runtime: str
    tolerance: float = TOLERANCE

    @property
    def ok(self) -> bool:
        return self.max_diff <= self.tolerance  # NaN never passes

    def line(self) -> str:
        sign = "≤" if self.ok else ">"
        return (f"parity: max |Δlogit| / max(1, |logit|) {self.max_diff:.1e} {sign} "
                f"{self.tolerance:.0e} on {self.images} images ({self.runtime})")


def example(image_size: int, batch: int = EXAMPLE_BATCH, seed: int = 1) -> torch.Tensor:
    """Seeded images [batch, 3, S, S] in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, image_size, image_size, generator=g) * 2 - 1


def reference(classifier: nn.Module, image_size: int,
              seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """BATCHES of seeded images (other draws than the export's example) with the
    classifier's logits on them, taken before export: whatever an exporter does to the
    module (its mode, hooks) cannot reach what the file is compared with."""
    batches = []
    for index, batch in enumerate(BATCHES):
        images = example(image_size, batch, seed=1000 + 10 * seed + index)
        with torch.no_grad():
            batches.append((images, classifier(images).float()))
    return batches


def check_parity(model: ExportedModel,
                 batches: list[tuple[torch.Tensor, torch.Tensor]]) -> Parity:
    """Max |Δlogit| / max(1, |logit|) of the file against `reference`'s logits."""
    worst = 0.0
    for images, want in batches:
        got = model(images)
        if got.shape != want.shape:
            worst = math.inf
            continue
        diff = float(((got - want).abs() / want.abs().clamp(min=1.0)).max())
        worst = max(worst, diff if math.isfinite(diff) else math.inf)
    return Parity(worst, sum(len(images) for images, _ in batches), model.runtime)
