"""Diffusion-transformer teachers (SD3 / SD3.5, Flux) and their guides, checked against
diffusers' own classes called directly: the transformers' controlnet-aware forwards, the
ControlNet models' forwards, the flow-matching scheduler and FluxPipeline's packing."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch
from conftest import fixed_batch
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    FluxControlNetModel,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3ControlNetModel,
    SD3Transformer2DModel,
)
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

from ablate.core.errors import AblateError
from ablate.model.build import build_detector
from ablate.model.teachers import flow, scale_residuals
from ablate.recipe import compose
from ablate.registry import build

DIT = ["tiny-sd3", "tiny-flux"]
SIZE = 64  # px: an 8x8 latent, 16 image tokens


@pytest.fixture(scope="module")
def dit_teachers():
    return {name: build("teacher", name) for name in DIT}


def _detector(teacher: str, guide: str, teachers: dict, *extra: str):
    cfg = compose([f"teacher={teacher}", f"guide={guide}", "backbone=tiny",
                   f"image_size={SIZE}", "train=cpu", *extra])
    return build_detector(cfg, teacher=teachers[teacher])


def _inputs(teacher, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h = SIZE // teacher.vae_factor
    latents = torch.randn(batch, teacher.latent_channels, h, h, generator=g)
    noise = torch.randn(latents.shape, generator=g)
    sigmas = torch.tensor([0.15, 0.8])[:batch]
    cond = torch.randn(batch, teacher.guide_channels, h, h, generator=g)
    return latents, noise, sigmas, cond


# ------------------------------------------------------------------ flow matching


def test_flow_matching_noise_and_target_by_hand():
    x0 = torch.tensor([[[[1.0, -2.0]]], [[[0.5, 4.0]]]])  # [2, 1, 1, 2]
    n = torch.tensor([[[[0.0, 2.0]]], [[[-1.0, 1.0]]]])
    sigma = torch.tensor([0.25, 0.5])
    expected = torch.tensor([[[[0.75, -1.0]]], [[[-0.25, 2.5]]]])  # (1-s) x0 + s n, by hand
    torch.testing.assert_close(flow.add_noise(x0, n, sigma), expected)
    torch.testing.assert_close(flow.velocity(x0, n), torch.tensor([[[[-1.0, 4.0]]], [[[-1.5, -3.0]]]]))


def test_noise_rule_is_the_flow_match_schedulers():
    """x_t equals FlowMatchEulerDiscreteScheduler.scale_noise at its own timesteps."""
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    g = torch.Generator().manual_seed(0)
    x0, n = torch.randn(2, 16, 4, 4, generator=g), torch.randn(2, 16, 4, 4, generator=g)
    for index in (10, 500, 990):
        t = scheduler.timesteps[index].repeat(2)
        sigma = scheduler.sigmas[index].repeat(2)
        torch.testing.assert_close(flow.add_noise(x0, n, sigma), scheduler.scale_noise(x0, t, n))


def test_sd3_shift_and_flux_time_shift_are_diffusers():
    u = torch.linspace(0.001, 0.999, 50)
    # SD3: the scheduler's own shifted sigmas over its training grid
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    grid = torch.from_numpy(np.linspace(1, 1000, 1000)[::-1].copy()).float() / 1000
    torch.testing.assert_close(flow.shift_sigmas(grid, 3.0), scheduler.sigmas[: len(grid)], atol=1e-6, rtol=0)
    # Flux: mu from FluxPipeline.calculate_shift, then the scheduler's exponential time shift
    dynamic = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    law = flow.TimestepLaw(density="uniform", shift=None)
    for tokens in (16, 256, 1024, 4096):
        mu = calculate_shift(tokens, 256, 4096, 0.5, 1.15)
        assert law.mu(tokens) == pytest.approx(mu)
        torch.testing.assert_close(law.shifted(u, tokens), dynamic.time_shift(mu, 1.0, u))


def test_logit_normal_law_by_its_quantiles():
    """u = sigmoid(N(0, 1)): its median is 1/2 and its quartiles sigmoid(+-0.6745)."""
    law = flow.TimestepLaw(density="logit_normal", shift=1.0)
    u = law.sample(200_000, 16, torch.Generator().manual_seed(0), torch.device("cpu"))
    q = torch.quantile(u, torch.tensor([0.25, 0.5, 0.75]))
    expected = torch.sigmoid(torch.tensor([-0.6745, 0.0, 0.6745]))
    torch.testing.assert_close(q, expected, atol=3e-3, rtol=0)
    shifted = flow.TimestepLaw(density="logit_normal", shift=3.0).sample(
        200_000, 16, torch.Generator().manual_seed(0), torch.device("cpu"))
    torch.testing.assert_close(shifted, 3 * u / (1 + 2 * u))  # same draws, then SD3's shift


# ------------------------------------------------------------------ Flux packing


def test_packing_and_position_ids_are_flux_pipelines():
    from ablate.model.teachers import packing

    x = torch.randn(2, 16, 6, 8)
    packed = packing.pack(x)
    torch.testing.assert_close(packed, FluxPipeline._pack_latents(x, 2, 16, 6, 8))
    torch.testing.assert_close(packing.unpack(packed, 6, 8),
                               FluxPipeline._unpack_latents(packed, 48, 64, 8))
    ids = FluxPipeline._prepare_latent_image_ids(2, 3, 4, "cpu", torch.float32)
    torch.testing.assert_close(packing.image_ids(6, 8, torch.device("cpu"), torch.float32), ids)


# ------------------------------------------------------------------ guided steps


@pytest.mark.parametrize("weight", ["paper", "code", "constant", "none"])
@pytest.mark.parametrize("guide", ["controlnet", "adapter"])
@pytest.mark.parametrize("teacher", DIT)
def test_every_teacher_guide_weight_takes_a_guided_step(teacher, guide, weight, dit_teachers):
    det = _detector(teacher, guide, dit_teachers, f"weight={weight}")
    b = fixed_batch(size=SIZE, batch=2)
    opt = torch.optim.AdamW([p for p in det.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(2):  # step 1 moves the zero projections, then gradients reach the filter
        opt.zero_grad()
        losses = det.guided_losses(b["image"], b["source"], b["target"], b["label"],
                                   generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(losses["total"]) and losses["source"] > 0 and losses["target"] > 0
        losses["total"].backward()
        opt.step()
    grads = [p.grad for p in det.filter_source.parameters() if p.grad is not None]
    assert grads and any(torch.count_nonzero(g) for g in grads)  # the filter learns
    assert not any(p.requires_grad for p in det.teacher.parameters())


@pytest.mark.parametrize("guide", ["controlnet", "adapter"])
def test_sd3_guide_starts_as_the_plain_transformer(guide, dit_teachers):
    det = _detector("tiny-sd3", guide, dit_teachers)
    t = det.teacher
    z, noise, sigmas, cond = _inputs(t)
    noisy = t.add_noise(z, noise, sigmas)
    with torch.no_grad():
        residuals = det.guide(noisy, sigmas, cond, t.conditioning(2, SIZE))
        assert all(torch.count_nonzero(r) == 0 for r in residuals[0])
        guided = t.predict(noisy, sigmas, *residuals)
        plain = SD3Transformer2DModel.forward(  # diffusers' transformer, called directly
            t.transformer, noisy, encoder_hidden_states=t.context.repeat(2, 1, 1),
            pooled_projections=t.pooled.repeat(2, 1), timestep=sigmas * 1000).sample
    torch.testing.assert_close(guided, plain, rtol=0, atol=1e-6)


@pytest.mark.parametrize("guide", ["controlnet", "adapter"])
def test_flux_guide_starts_as_the_plain_transformer(guide, dit_teachers):
    det = _detector("tiny-flux", guide, dit_teachers)
    t = det.teacher
    z, noise, sigmas, cond = _inputs(t)
    noisy = t.add_noise(z, noise, sigmas)
    h = noisy.shape[-1]
    with torch.no_grad():
        residuals = det.guide(noisy, sigmas, cond, t.conditioning(2, SIZE))
        assert all(torch.count_nonzero(r) == 0 for group in residuals for r in group)
        guided = t.predict(noisy, sigmas, *residuals)
        tokens = FluxTransformer2DModel.forward(
            t.transformer, FluxPipeline._pack_latents(noisy, 2, 16, h, h),
            encoder_hidden_states=t.context.repeat(2, 1, 1),
            pooled_projections=t.pooled.repeat(2, 1), timestep=sigmas,
            img_ids=FluxPipeline._prepare_latent_image_ids(2, h // 2, h // 2, "cpu", torch.float32),
            txt_ids=torch.zeros(t.context.shape[1], 3), guidance=torch.full((2,), 3.5)).sample
        plain = FluxPipeline._unpack_latents(tokens, SIZE, SIZE, t.vae_factor)
    torch.testing.assert_close(guided, plain, rtol=0, atol=1e-6)


def _perturb_zero_projections(net: torch.nn.Module, seed: int) -> None:
    """Give the zero-initialised output projections non-zero weights (as after training)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.startswith(("controlnet_blocks", "controlnet_single_blocks")):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


def test_sd3_controlnet_residuals_match_diffusers_controlnet_then_transformer(dit_teachers):
    """pred = SD3Transformer(z_t, block residuals * w) with residuals from diffusers'
    SD3ControlNetModel.forward on the same copy, fed embed(z_t) + embed'(f)."""
    det = _detector("tiny-sd3", "controlnet", dit_teachers)
    t, net = det.teacher, det.guide.nets[0]
    _perturb_zero_projections(net, 1)
    z, noise, sigmas, cond = _inputs(t)
    noisy = t.add_noise(z, noise, sigmas)
    w = torch.tensor([0.3, 0.9])
    text = {"encoder_hidden_states": t.context.repeat(2, 1, 1),
            "pooled_projections": t.pooled.repeat(2, 1)}
    with torch.no_grad():
        residuals = det.guide(noisy, sigmas, cond, t.conditioning(2, SIZE))
        pred = t.predict(noisy, sigmas, *scale_residuals(residuals, w))
        blocks = SD3ControlNetModel.forward(net, noisy, cond, timestep=sigmas * 1000,
                                            **text).controlnet_block_samples
        expected = SD3Transformer2DModel.forward(
            t.transformer, noisy, timestep=sigmas * 1000, **text,
            block_controlnet_hidden_states=[r * w.view(-1, 1, 1) for r in blocks]).sample
        plain = SD3Transformer2DModel.forward(t.transformer, noisy, timestep=sigmas * 1000,
                                              **text).sample
    assert len(blocks) == 2 and blocks[0].shape == (2, 16, 32)  # 2 copied blocks, 16 tokens
    torch.testing.assert_close(pred, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(pred, plain, atol=1e-3)  # the residuals did something


def test_flux_controlnet_residuals_match_diffusers_controlnet_then_transformer(dit_teachers):
    det = _detector("tiny-flux", "controlnet", dit_teachers)
    t, net = det.teacher, det.guide.nets[0]
    _perturb_zero_projections(net, 2)
    z, noise, sigmas, cond = _inputs(t)
    noisy = t.add_noise(z, noise, sigmas)
    h = noisy.shape[-1]
    w = torch.tensor([0.6, 0.2])
    common = {
        "encoder_hidden_states": t.context.repeat(2, 1, 1),
        "pooled_projections": t.pooled.repeat(2, 1), "timestep": sigmas,
        "img_ids": FluxPipeline._prepare_latent_image_ids(2, h // 2, h // 2, "cpu", torch.float32),
        "txt_ids": torch.zeros(t.context.shape[1], 3), "guidance": torch.full((2,), 3.5)}
    packed = FluxPipeline._pack_latents(noisy, 2, 16, h, h)
    with torch.no_grad():
        residuals = det.guide(noisy, sigmas, cond, t.conditioning(2, SIZE))
        pred = t.predict(noisy, sigmas, *scale_residuals(residuals, w))
        out = FluxControlNetModel.forward(net, packed, FluxPipeline._pack_latents(cond, 2, 16, h, h),
                                          **common)
        tokens = FluxTransformer2DModel.forward(
            t.transformer, packed, **common,
            controlnet_block_samples=[r * w.view(-1, 1, 1) for r in out.controlnet_block_samples],
            controlnet_single_block_samples=[
                r * w.view(-1, 1, 1) for r in out.controlnet_single_block_samples]).sample
    assert len(out.controlnet_block_samples) == 2 and len(out.controlnet_single_block_samples) == 2
    torch.testing.assert_close(pred, FluxPipeline._unpack_latents(tokens, SIZE, SIZE, 8),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("teacher", DIT)
def test_controlnet_copy_starts_from_the_teacher(teacher, dit_teachers):
    """Blocks are the teacher's; f enters through the teacher's patch projection, no bias."""
    det = _detector(teacher, "controlnet", dit_teachers)
    net, tr = det.guide.nets[0], det.teacher.transformer
    for a, b in zip(net.transformer_blocks.parameters(),
                    tr.transformer_blocks[: len(net.transformer_blocks)].parameters(), strict=True):
        assert torch.equal(a, b)
    embed, teacher_embed = ((net.pos_embed_input.proj, tr.pos_embed.proj) if teacher == "tiny-sd3"
                            else (net.controlnet_x_embedder, tr.x_embedder))
    assert torch.equal(embed.weight, teacher_embed.weight)
    assert torch.count_nonzero(embed.bias) == 0
    assert all(p.dtype == torch.float32 and p.requires_grad for p in net.parameters())


def test_guide_layers_sets_the_copied_blocks_and_refuses_what_the_teacher_lacks(dit_teachers):
    det = _detector("tiny-flux", "controlnet", dit_teachers, "guide.layers=1")
    assert len(det.guide.nets[0].transformer_blocks) == 1
    with pytest.raises(AblateError, match=r"guide.layers=5: the teacher has 2 transformer blocks"):
        _detector("tiny-sd3", "controlnet", dit_teachers, "guide.layers=5")
    with pytest.raises(AblateError, match="copies its whole UNet encoder"):
        cfg = compose(["teacher=tiny-sd15", "guide.layers=2", "backbone=tiny", "image_size=32"])
        build_detector(cfg)


# ------------------------------------------------------------------ folders and bad input


@pytest.fixture(scope="module")
def saved(tmp_path_factory, dit_teachers):
    folders = {}
    for name, teacher in dit_teachers.items():
        folders[name] = tmp_path_factory.mktemp(name)
        teacher.save_pretrained(folders[name])
    return folders


@pytest.mark.parametrize("name,family", [("tiny-sd3", "sd3"), ("tiny-flux", "flux")])
def test_saved_folder_loads_back_through_the_users_path(name, family, saved, dit_teachers):
    teacher = build("teacher", family, path=str(saved[name]), dtype="float32")
    original = dit_teachers[name]
    for a, b in zip(teacher.transformer.state_dict().values(),
                    original.transformer.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert (teacher.latent_scale, teacher.latent_shift) == (original.latent_scale, original.latent_shift)
    assert teacher.context.shape[-1] == original.context.shape[-1]
    assert teacher.pooled.shape == original.pooled.shape


def test_sd3_without_t5_embeds_zeros_in_its_place(saved, tmp_path):
    folder = tmp_path / "no-t5"
    shutil.copytree(saved["tiny-sd3"], folder)
    shutil.rmtree(folder / "text_encoder_3")
    with pytest.raises(AblateError, match=r"has no T5 .*teacher.t5=false"):
        build("teacher", "sd3", path=str(folder), dtype="float32")
    teacher = build("teacher", "sd3", path=str(folder), dtype="float32", t5=False)
    with_t5 = build("teacher", "sd3", path=str(saved["tiny-sd3"]), dtype="float32")
    assert torch.count_nonzero(teacher.context[:, 77:]) == 0
    torch.testing.assert_close(teacher.context[:, :77], with_t5.context[:, :77])  # CLIP part
    torch.testing.assert_close(teacher.pooled, with_t5.pooled)


def test_bad_teacher_folders_are_one_line(saved, tmp_path):
    from ablate.model.teachers import unet_variants as unet

    unet_folder = tmp_path / "sd15"
    unet.tiny_teacher("sd15").save_pretrained(unet_folder)
    cases = [
        (("sd3", unet_folder), r"is not an SD3 layout: it holds a UNet model"),
        (("flux", unet_folder), r"is not a Flux layout: it holds a UNet model"),
        (("sd3", saved["tiny-flux"]), r"holds a FluxTransformer2DModel.*use teacher=flux"),
        (("flux", saved["tiny-sd3"]), r"holds a SD3Transformer2DModel.*use teacher=sd3"),
    ]
    for (family, folder), message in cases:
        with pytest.raises(AblateError, match=message) as err:
            build("teacher", family, path=str(folder), dtype="float32")
        assert "\n" not in str(err.value)
    with pytest.raises(AblateError, match=r"holds a sd3 transformer, not a sd15 UNet; use "
                                          r"teacher=sd3"):
        build("teacher", "sd15", path=str(saved["tiny-sd3"]))
    no_clip_g = tmp_path / "no-clip-g"
    shutil.copytree(saved["tiny-sd3"], no_clip_g)
    shutil.rmtree(no_clip_g / "text_encoder_2")
    with pytest.raises(AblateError, match=r"lacks text_encoder_2.*CLIP-G"):
        build("teacher", "sd3", path=str(no_clip_g), dtype="float32")


@pytest.mark.parametrize("teacher", DIT)
def test_an_image_size_the_patch_grid_cannot_take_is_one_line(teacher, dit_teachers):
    t = dit_teachers[teacher]
    t.check_image_size(48)
    with pytest.raises(AblateError, match=r"image_size 40 .* multiple of its VAE factor x "
                                          r"patch size 16; nearest sizes that work: 32 or 48"):
        t.check_image_size(40)  # a multiple of the VAE's 8, not of 8 x 2


def test_sd3_image_larger_than_its_position_table_is_one_line(dit_teachers):
    with pytest.raises(AblateError, match="larger than teacher tiny-sd3's position embedding"):
        dit_teachers["tiny-sd3"].check_image_size(1024)


def test_timestep_laws_are_the_families_defaults(dit_teachers):
    sd3, fl = dit_teachers["tiny-sd3"], dit_teachers["tiny-flux"]
    assert (sd3.law.density, sd3.law.shift) == ("logit_normal", 3.0)
    assert (fl.law.density, fl.law.shift) == ("uniform", None)
    g = torch.Generator().manual_seed(0)
    sigmas = fl.sample_timesteps(4096, g, torch.device("cpu"), (8, 8))  # 16 tokens
    u = torch.rand(4096, generator=torch.Generator().manual_seed(0)).clamp(1e-5, 1 - 1e-5)
    mu = calculate_shift(16, 256, 4096, 0.5, 1.15)
    torch.testing.assert_close(sigmas, math.exp(mu) / (math.exp(mu) + 1 / u - 1))


# ------------------------------------------------------------------ fit, adapt, LoRA of another base


@pytest.fixture(scope="module")
def sd3_adapter(tmp_path_factory):
    from ablate.teacher_fitting.adapt import AdaptSettings, adapt_teacher

    settings = AdaptSettings(teacher="tiny-sd3", rank=4, steps=4, batch_size=4, image_size=32,
                             lr=1e-2, max_frames=16)
    return adapt_teacher(settings, out=tmp_path_factory.mktemp("a") / "lora", progress=False)


def test_a_lora_on_the_transformer_changes_it_and_fuses_back(sd3_adapter, dit_teachers):
    from safetensors import safe_open

    from ablate.model.teachers import ADAPTER_WEIGHTS

    with safe_open(str(sd3_adapter.folder / ADAPTER_WEIGHTS), "pt") as handle:
        keys = list(handle.keys())
    assert keys and all(k.startswith("transformer.") and ".lora_" in k for k in keys)
    adapted = {k.split(".lora_")[0].removeprefix("transformer.") for k in keys}
    assert all(k.endswith(("to_q", "to_k", "to_v", "to_out.0")) for k in adapted)
    blocks = {k.split(".attn")[0] for k in adapted}  # every joint block, dual attention too
    assert blocks == {f"transformer_blocks.{i}" for i in range(3)}
    assert any(".attn2." in k for k in adapted)
    fused = build("teacher", "tiny-sd3", lora=str(sd3_adapter.folder))
    z, noise, sigmas, _ = _inputs(fused)
    with torch.no_grad():
        base = dit_teachers["tiny-sd3"].predict(z, sigmas)
        torch.testing.assert_close(fused.predict(z, sigmas), sd3_adapter.teacher.predict(z, sigmas),
                                   rtol=0, atol=1e-5)
    assert not torch.allclose(fused.predict(z, sigmas), base, atol=1e-4)


def test_a_lora_of_another_base_is_one_line(sd3_adapter):
    lora = str(sd3_adapter.folder)
    cases = [(("tiny-sd3", {"seed": 1}), "other transformer weights"),
             (("tiny-flux", {}), "trained for sd3 teachers"),
             (("tiny-sd15", {}), "trained for sd3 teachers")]
    for (name, args), message in cases:
        with pytest.raises(AblateError, match=message) as err:
            build("teacher", name, lora=lora, **args)
        assert "\n" not in str(err.value) and "use teacher=tiny-sd3" in str(err.value)


def test_fitting_a_flux_twin_sets_its_latent_shift_and_scale(tmp_path):
    from ablate.teacher_fitting.fit import FitSettings, fit_teacher

    result = fit_teacher(FitSettings(teacher="tiny-flux", steps=2, vae_steps=1, batch_size=4,
                                     image_size=32, max_frames=16), out=tmp_path / "fit",
                         progress=False)
    teacher = build("teacher", "tiny-flux", path=str(result.folder))
    latents = teacher.encode(fixed_batch(size=32, batch=4)["image"],
                             torch.Generator().manual_seed(0))
    assert teacher.latent_shift == pytest.approx(result.meta["latent_shift"])
    assert teacher.latent_shift != flow_default_shift()
    assert abs(float(latents.mean())) < 0.5 and 0.5 < float(latents.std()) < 2  # ~N(0, 1)


def flow_default_shift() -> float:
    from ablate.model.teachers import flux

    return flux.VAE["shift_factor"]


def test_a_schnell_scheduler_gives_unshifted_sigmas():
    """Flux.1 schnell's scheduler_config.json: shift 1.0, no dynamic shifting."""
    from ablate.model.teachers import flux

    schnell = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    law = flux.law("uniform", None, schnell)
    u = torch.linspace(0.01, 0.99, 9)
    torch.testing.assert_close(law.shifted(u, 4096), u)
    dev = flux.law("uniform", None, FlowMatchEulerDiscreteScheduler(**flux.SCHEDULER))
    assert dev.shift is None and not torch.allclose(dev.shifted(u, 4096), u)


@pytest.mark.parametrize("teacher", DIT)
def test_separate_guides_per_branch_give_the_batched_and_the_sequential_loss(teacher, dit_teachers):
    det = _detector(teacher, "controlnet", dit_teachers, "guide.shared=false")
    assert len(det.guide.nets) == 2
    for net in det.guide.nets:
        _perturb_zero_projections(net, 3)
    b = fixed_batch(size=SIZE, batch=2)
    with torch.no_grad():
        batched, sequential = (det.guided_losses(
            b["image"], b["source"], b["target"], b["label"],
            generator=torch.Generator().manual_seed(0), batched=mode) for mode in (True, False))
    for key in ("source", "target", "total"):
        torch.testing.assert_close(batched[key], sequential[key], rtol=1e-4, atol=1e-5)


def test_fitting_a_transformer_twin_at_a_size_its_patches_cannot_take_is_one_line(tmp_path):
    from ablate.teacher_fitting.fit import FitSettings, fit_teacher

    with pytest.raises(AblateError, match=r"image_size 72 .* multiple of its VAE factor x patch"):
        fit_teacher(FitSettings(teacher="tiny-sd3", steps=1, vae_steps=0, batch_size=2,
                                image_size=72, max_frames=4), out=tmp_path / "f", progress=False)
    assert not (tmp_path / "f").exists()


def test_frozen_params_count_one_weights_variant(saved, tmp_path):
    """A diffusers folder with fp16 variants beside the plain weights counts each tensor once."""
    from ablate.teacher_fitting.catalog import frozen_params

    folder = tmp_path / "variants"
    shutil.copytree(saved["tiny-sd3"], folder)
    for sub in ("transformer", "vae"):
        plain = folder / sub / "diffusion_pytorch_model.safetensors"
        shutil.copy(plain, plain.with_name("diffusion_pytorch_model.fp16.safetensors"))
    teacher = build("teacher", "sd3", path=str(folder), dtype="float32")
    expected = sum(p.numel() for m in (teacher.transformer, teacher.vae) for p in m.parameters())
    assert frozen_params({"name": "sd3", "path": str(folder)}) == expected
    assert frozen_params({"name": "tiny-sd3"}) == expected  # the meta-device count agrees
    assert frozen_params(None) == 0


@pytest.mark.parametrize("teacher", DIT)
def test_a_bf16_transformer_teacher_trains_fp32_guides(teacher):
    """The frozen twin computes in bf16 (teacher.dtype), the guide keeps fp32 master weights
    and its gradients are fp32 and finite."""
    teachers = {teacher: build("teacher", teacher, dtype="bfloat16")}
    det = _detector(teacher, "controlnet", teachers)
    assert det.teacher.dtype == torch.bfloat16 and det.teacher.context.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in det.guide.parameters())
    b = fixed_batch(size=SIZE, batch=2)
    losses = det.guided_losses(b["image"], b["source"], b["target"], b["label"],
                               generator=torch.Generator().manual_seed(0))
    losses["total"].backward()
    grads = [p.grad for p in det.guide.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert any(torch.count_nonzero(g) for g in grads)
