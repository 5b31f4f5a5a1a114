import os

import pytest
import torch

os.environ.setdefault("ABLATE_CACHE", "results")  # one benchmark build shared by all tests
torch.set_num_threads(2)

TINY_TEACHERS = ["tiny-sd15", "tiny-sd21", "tiny-sdxl"]


@pytest.fixture(scope="session")
def tiny_teachers():
    """Each tiny twin built once per session (they are frozen, so sharing is safe)."""
    from ablate.registry import build

    return {name: build("teacher", name) for name in TINY_TEACHERS}


def fixed_batch(size: int = 64, batch: int = 4, seed: int = 0) -> dict:
    """A fixed batch of images/sources/targets in [-1, 1] and mixed labels."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    labels = torch.tensor([0.0, 1.0] * (batch // 2))
    sources = torch.where(labels.view(-1, 1, 1, 1) > 0,
                          torch.rand(batch, 3, size, size, generator=g) * 2 - 1, images)
    targets = torch.where(labels.view(-1, 1, 1, 1) > 0, images.flip(-1), images)
    return {"image": images, "source": sources, "target": targets, "label": labels,
            "video_id": [f"v{i}" for i in range(batch)], "path": [f"p{i}" for i in range(batch)]}
