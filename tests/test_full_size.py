"""The real SD 1.5 / 2.1 / SDXL architectures (random weights, built from their
configs) complete one guided forward pass at a small latent size (8x8 latents).

Memory tricks: no gradients (torch.no_grad), batch 1, 64 px images; SDXL runs
in bfloat16 (the teacher; the trained guide keeps fp32 weights). Peak ~11 GB.
"""

import gc

import pytest
import torch

from ablate.model.build import build_detector
from ablate.recipe import compose
from tests.conftest import fixed_batch

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("family,dtype", [("sd15", "float32"), ("sd21", "float32"),
                                          ("sdxl", "bfloat16")])
def test_full_size_teacher_completes_a_guided_forward(family, dtype):
    cfg = compose([f"teacher={family}", "teacher.random_init=true", f"teacher.dtype={dtype}",
                   "backbone=tiny", "image_size=64", "guide=controlnet"])
    detector = build_detector(cfg)
    expected = {"sd15": 768, "sd21": 1024, "sdxl": 2048}[family]
    assert detector.teacher.unet.config.cross_attention_dim == expected
    assert detector.teacher.prediction_type == ("v_prediction" if family == "sd21" else "epsilon")
    assert len(detector.guide.nets[0].controlnet_down_blocks) == (12 if family != "sdxl" else 9)
    batch = fixed_batch(size=64, batch=2)
    with torch.no_grad():
        losses = detector.guided_losses(batch["image"], batch["source"], batch["target"],
                                        batch["label"])
    assert all(torch.isfinite(v) for v in losses.values()), losses
    del detector
    gc.collect()
