"""The real SD 1.5 / 2.1 / SDXL / SD3.5 Medium architectures (random weights, built from
their configs) complete one guided forward pass at a small latent size (8x8 latents);
Flux.1-dev does so on the meta device, and at its full width but 1 + 1 blocks for real.

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
def test_full_size_teacher_completes_a_guided_forward(family, dtype, one_heavy_test_at_a_time):
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


def test_full_size_sd35_medium_guided_forward_and_folder_round_trip(tmp_path,
                                                                   one_heavy_test_at_a_time):
    """SD3.5 Medium's transformer (2.2B, random weights, bf16) under a 2-block ControlNet
    copy (guide.layers=2 keeps the fp32 copy at ~0.2B params instead of 12 blocks' 1.1B),
    one guided forward at 64 px; then saved as a diffusers folder and loaded back through
    teacher.path, the path a user's weights take. Peak ~10 GB."""
    from ablate.model.teachers import denoiser_fingerprint
    from ablate.registry import build

    cfg = compose(["teacher=sd3", "teacher.random_init=true", "teacher.dtype=bfloat16",
                   "backbone=tiny", "image_size=64", "guide=controlnet", "guide.layers=2"])
    detector = build_detector(cfg)
    config = detector.teacher.transformer.config
    assert (config.num_layers, config.num_attention_heads, config.qk_norm) == (24, 24, "rms_norm")
    assert tuple(config.dual_attention_layers) == tuple(range(13))
    assert detector.teacher.context.shape == (1, 77 + 256, 4096)
    batch = fixed_batch(size=64, batch=2)
    with torch.no_grad():
        losses = detector.guided_losses(batch["image"], batch["source"], batch["target"],
                                        batch["label"])
    assert all(torch.isfinite(v) for v in losses.values()), losses
    teacher = detector.teacher
    teacher.save_pretrained(tmp_path / "sd35")
    expected = denoiser_fingerprint(teacher.transformer)
    del detector, teacher
    gc.collect()
    loaded = build("teacher", "sd3", path=str(tmp_path / "sd35"), dtype="bfloat16", t5=True)
    assert denoiser_fingerprint(loaded.transformer) == expected
    assert loaded.transformer.config.num_layers == 24 and loaded.latent_shift == 0.0609
    del loaded
    gc.collect()


def test_full_size_flux_dev_guided_forward_on_the_meta_device():
    """Flux.1-dev (12B; 24 GB in bf16, more than this machine has) is built and run on the
    meta device: every shape of a guided step with the default ControlNet copy (4 double +
    10 single blocks) is checked, no value is computed. Posteriors are given (meta tensors
    have no autocast for the VAE)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    from ablate.model.teachers import flux

    with torch.device("meta"):
        transformer = FluxTransformer2DModel(**flux.FLUX_DEV)
        vae = AutoencoderKL(**flux.VAE)
        context, pooled = torch.zeros(1, flux.T5_LENGTH, 4096), torch.zeros(1, 768)
    scheduler = FlowMatchEulerDiscreteScheduler(**flux.SCHEDULER)
    teacher = flux.FluxTeacher("flux", "flux", transformer, vae, scheduler, context, pooled,
                               flux.law("uniform", None, scheduler))
    assert sum(p.numel() for p in transformer.parameters()) > 11.9e9
    cfg = compose(["teacher=flux", "backbone=tiny", "image_size=64", "guide=controlnet"])
    with torch.device("meta"):
        detector = build_detector(cfg, teacher=teacher)
        x = torch.zeros(2, 3, 64, 64)
        posteriors = torch.zeros(6, 32, 8, 8)  # [3B, 2 x 16, h, w]
    net = detector.guide.nets[0]
    assert (len(net.transformer_blocks), len(net.single_transformer_blocks)) == (4, 10)
    with torch.no_grad():
        losses = detector.guided_losses(x, x, x, torch.ones(2, device="meta"),
                                        posteriors=posteriors)
    assert all(v.shape == () and v.device.type == "meta" for v in losses.values())


def test_full_width_flux_computes_a_guided_forward_and_loads_back_from_its_folder(
        tmp_path, one_heavy_test_at_a_time):
    """Flux.1-dev's full width (3072 hidden, 4096 T5 context, 768 pooled, guidance input, 512
    T5 tokens) at 1 double + 1 single block of its 19 + 38 (random weights, bf16; ~0.6B
    params, where the whole 12B would not fit this machine): one real-valued guided forward
    at 64 px under a 1 + 1 block ControlNet copy, then saved as a diffusers folder and loaded
    back through teacher.path, the path a user's Flux folder takes. Peak ~5 GB."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    from ablate.model.teachers import denoiser_fingerprint, flux
    from ablate.model.teachers.base import fill_random, on_meta
    from ablate.registry import build

    generator = torch.Generator().manual_seed(0)
    config = dict(flux.FLUX_DEV, num_layers=1, num_single_layers=1)
    transformer = fill_random(on_meta(FluxTransformer2DModel, config, torch.bfloat16), generator)
    vae = fill_random(on_meta(flux.AutoencoderKL, flux.VAE, torch.bfloat16), generator)
    context = torch.randn(1, flux.T5_LENGTH, 4096, generator=generator)
    pooled = torch.randn(1, 768, generator=generator)
    scheduler = FlowMatchEulerDiscreteScheduler(**flux.SCHEDULER)
    teacher = flux.FluxTeacher("flux", "flux", transformer, vae, scheduler, context, pooled,
                               flux.law("uniform", None, scheduler))
    cfg = compose(["teacher=flux", "backbone=tiny", "image_size=64", "guide=controlnet",
                   "guide.layers=1"])
    detector = build_detector(cfg, teacher=teacher)
    net = detector.guide.nets[0]
    assert (len(net.transformer_blocks), len(net.single_transformer_blocks)) == (1, 1)
    batch = fixed_batch(size=64, batch=2)
    with torch.no_grad():
        losses = detector.guided_losses(batch["image"], batch["source"], batch["target"],
                                        batch["label"])
    assert all(torch.isfinite(v) for v in losses.values()), losses
    teacher.save_pretrained(tmp_path / "flux")
    expected = denoiser_fingerprint(teacher.transformer)
    del detector, teacher, transformer, vae
    gc.collect()
    loaded = build("teacher", "flux", path=str(tmp_path / "flux"), dtype="bfloat16")
    assert denoiser_fingerprint(loaded.transformer) == expected
    loaded_config = loaded.transformer.config
    assert (loaded_config.joint_attention_dim, loaded_config.guidance_embeds) == (4096, True)
    assert loaded.context.shape == (1, flux.T5_LENGTH, 4096)  # dev's 512 T5 tokens
    assert loaded.pooled.shape == (1, 768)
    assert loaded.latent_shift == flux.VAE["shift_factor"]
    del loaded
    gc.collect()
