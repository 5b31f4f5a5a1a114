"""SD3 / Flux teachers from single original-layout .safetensors files (`single_file`).

The tiny twins are written in the original (Stability / Black Forest Labs / ComfyUI) layout by
an inverse key map written here, then loaded through the user's path (`build("teacher", "sd3",
path=FILE)`); diffusers' own converters map them back, so a wrong inverse or a wrong load
shows as a prediction, context or latent that differs from the twin's diffusers folder. The
full-size configs are checked on the meta device: the inverse map of each embedded
architecture, fed to diffusers' converter, must give back exactly the model's keys and shapes.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel
from diffusers.loaders import single_file_utils as sfu
from safetensors.torch import load_file, save_file
from torch import Tensor

from ablate.core.errors import AblateError
from ablate.model.teachers import flux, sd3, single_file
from ablate.registry import TEACHERS, build

SIZE = 64  # px: an 8x8 latent


# ------------------------------------------------------------------ inverse key maps


def swap(t: Tensor) -> Tensor:
    """diffusers' AdaLayerNormContinuous is (scale, shift), the original (shift, scale)."""
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a])


def sd3_original(d: dict[str, Tensor], layers: int) -> dict[str, Tensor]:
    """diffusers SD3Transformer2DModel keys -> the SD3 reference (MMDiT) layout."""
    o = {"pos_embed": d["pos_embed.pos_embed"]}
    renames = {"pos_embed.proj": "x_embedder.proj", "context_embedder": "context_embedder",
               "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
               "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
               "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
               "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
               "proj_out": "final_layer.linear"}
    for new, old in renames.items():
        for p in ("weight", "bias"):
            o[f"{old}.{p}"] = d[f"{new}.{p}"]
    for p in ("weight", "bias"):
        o[f"final_layer.adaLN_modulation.1.{p}"] = swap(d[f"norm_out.linear.{p}"])
    for i in range(layers):
        b, x, c = f"transformer_blocks.{i}.", f"joint_blocks.{i}.x_block.", f"joint_blocks.{i}.context_block."
        last = i == layers - 1
        for p in ("weight", "bias"):
            o[f"{x}attn.qkv.{p}"] = torch.cat([d[f"{b}attn.to_{n}.{p}"] for n in "qkv"])
            o[f"{c}attn.qkv.{p}"] = torch.cat([d[f"{b}attn.add_{n}_proj.{p}"] for n in "qkv"])
            o[f"{x}attn.proj.{p}"] = d[f"{b}attn.to_out.0.{p}"]
            o[f"{x}adaLN_modulation.1.{p}"] = d[f"{b}norm1.linear.{p}"]
            context_norm = d[f"{b}norm1_context.linear.{p}"]
            o[f"{c}adaLN_modulation.1.{p}"] = swap(context_norm) if last else context_norm
            o[f"{x}mlp.fc1.{p}"] = d[f"{b}ff.net.0.proj.{p}"]
            o[f"{x}mlp.fc2.{p}"] = d[f"{b}ff.net.2.{p}"]
            if not last:  # the last block is context-pre-only
                o[f"{c}attn.proj.{p}"] = d[f"{b}attn.to_add_out.{p}"]
                o[f"{c}mlp.fc1.{p}"] = d[f"{b}ff_context.net.0.proj.{p}"]
                o[f"{c}mlp.fc2.{p}"] = d[f"{b}ff_context.net.2.{p}"]
            if f"{b}attn2.to_q.weight" in d:  # dual attention (SD3.5)
                o[f"{x}attn2.qkv.{p}"] = torch.cat([d[f"{b}attn2.to_{n}.{p}"] for n in "qkv"])
                o[f"{x}attn2.proj.{p}"] = d[f"{b}attn2.to_out.0.{p}"]
        for ours, theirs in (("attn.norm_q", f"{x}attn.ln_q"), ("attn.norm_k", f"{x}attn.ln_k"),
                             ("attn.norm_added_q", f"{c}attn.ln_q"),
                             ("attn.norm_added_k", f"{c}attn.ln_k"),
                             ("attn2.norm_q", f"{x}attn2.ln_q"), ("attn2.norm_k", f"{x}attn2.ln_k")):
            if f"{b}{ours}.weight" in d:  # qk-norm (SD3.5)
                o[f"{theirs}.weight"] = d[f"{b}{ours}.weight"]
    return o


def flux_original(d: dict[str, Tensor], layers: int, single: int) -> dict[str, Tensor]:
    """diffusers FluxTransformer2DModel keys -> Black Forest Labs' layout."""
    o = {}
    renames = {"time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
               "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
               "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
               "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
               "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
               "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
               "context_embedder": "txt_in", "x_embedder": "img_in",
               "proj_out": "final_layer.linear"}
    for i in range(layers):
        b, n = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        renames.update({f"{b}norm1.linear": f"{n}img_mod.lin",
                        f"{b}norm1_context.linear": f"{n}txt_mod.lin",
                        f"{b}ff.net.0.proj": f"{n}img_mlp.0", f"{b}ff.net.2": f"{n}img_mlp.2",
                        f"{b}ff_context.net.0.proj": f"{n}txt_mlp.0",
                        f"{b}ff_context.net.2": f"{n}txt_mlp.2",
                        f"{b}attn.to_out.0": f"{n}img_attn.proj",
                        f"{b}attn.to_add_out": f"{n}txt_attn.proj"})
        for p in ("weight", "bias"):
            o[f"{n}img_attn.qkv.{p}"] = torch.cat([d[f"{b}attn.to_{q}.{p}"] for q in "qkv"])
            o[f"{n}txt_attn.qkv.{p}"] = torch.cat([d[f"{b}attn.add_{q}_proj.{p}"] for q in "qkv"])
        for ours, theirs in (("norm_q", "img_attn.norm.query_norm"),
                             ("norm_k", "img_attn.norm.key_norm"),
                             ("norm_added_q", "txt_attn.norm.query_norm"),
                             ("norm_added_k", "txt_attn.norm.key_norm")):
            o[f"{n}{theirs}.scale"] = d[f"{b}attn.{ours}.weight"]
    for i in range(single):
        b, n = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        renames.update({f"{b}norm.linear": f"{n}modulation.lin", f"{b}proj_out": f"{n}linear2"})
        for p in ("weight", "bias"):  # q, k, v and the MLP's input fused into one linear
            o[f"{n}linear1.{p}"] = torch.cat([d[f"{b}attn.to_{q}.{p}"] for q in "qkv"]
                                             + [d[f"{b}proj_mlp.{p}"]])
        o[f"{n}norm.query_norm.scale"] = d[f"{b}attn.norm_q.weight"]
        o[f"{n}norm.key_norm.scale"] = d[f"{b}attn.norm_k.weight"]
    for new, old in renames.items():
        for p in ("weight", "bias"):
            if f"{new}.{p}" in d:
                o[f"{old}.{p}"] = d[f"{new}.{p}"]
    for p in ("weight", "bias"):
        o[f"final_layer.adaLN_modulation.1.{p}"] = swap(d[f"norm_out.linear.{p}"])
    return o


def vae_original(d: dict[str, Tensor], blocks: int) -> dict[str, Tensor]:
    """diffusers AutoencoderKL keys -> the LDM layout (conv 1x1 attention, reversed up blocks)."""
    o = {}
    for key, value in d.items():
        k = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        k = re.sub(r"down_blocks\.(\d+)\.resnets\.", r"down.\1.block.", k)
        k = re.sub(r"down_blocks\.(\d+)\.downsamplers\.0\.", r"down.\1.downsample.", k)
        k = re.sub(r"up_blocks\.(\d+)\.resnets\.(\d+)\.",
                   lambda m: f"up.{blocks - 1 - int(m[1])}.block.{m[2]}.", k)
        k = re.sub(r"up_blocks\.(\d+)\.upsamplers\.0\.",
                   lambda m: f"up.{blocks - 1 - int(m[1])}.upsample.", k)
        k = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", k)
        if "mid_block.attentions.0." in k:
            k = k.replace("mid_block.attentions.0.", "mid.attn_1.")
            for ours, theirs in (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"),
                                 ("to_v", "v"), ("to_out.0", "proj_out")):
                k = k.replace(f"attn_1.{ours}.", f"attn_1.{theirs}.")
            if value.ndim == 2:
                value = value[:, :, None, None]  # [C, C] -> conv 1x1 [C, C, 1, 1]
        o[k] = value
    return o


def text_original(folder: Path, sub: str) -> dict[str, Tensor]:
    """A diffusers folder's text encoder as ComfyUI's files hold it: transformers' layout with
    `text_model.` kept (newer transformers drop it from CLIPTextModel), T5's tied embedding
    once (`shared.weight`)."""
    state = load_file(str(folder / sub / "model.safetensors"))
    out = {}
    for key, value in state.items():
        if key.endswith("position_ids") or key == "encoder.embed_tokens.weight":
            continue
        clip_body = key.startswith(("embeddings.", "encoder.layers.", "final_layer_norm."))
        out[f"text_model.{key}" if clip_body else key] = value
    return out


def prefixed(prefix: str, state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {prefix + k: v for k, v in state.items()}


def save(path: Path, state: dict[str, Tensor]) -> Path:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """Each twin saved as a diffusers folder and loaded back through `teacher.path` (the
    reference: its context is the folder's tiny text encoders' embedding of "")."""
    out = {}
    for family in ("sd3", "flux"):
        folder = tmp_path_factory.mktemp(f"tiny-{family}")
        twin = build("teacher", f"tiny-{family}")
        twin.save_pretrained(folder)
        out[family] = (twin, folder, build("teacher", family, path=str(folder), dtype="float32"))
    return out


@pytest.fixture(scope="module")
def files(twins, tmp_path_factory):
    """Original-layout files of both twins: SD3 all in one (Stability's sd3_medium_incl_clips
    layout) and split (SD3.5 releases: model.diffusion_model.* + separate encoders), Flux bare
    (BFL's flux1-dev.safetensors) with ae / clip_l / t5xxl files, and ComfyUI all-in-one."""
    root = tmp_path_factory.mktemp("single")
    _, folder, teacher = twins["sd3"]
    transformer = sd3_original(teacher.transformer.state_dict(), sd3.TINY["num_layers"])
    vae = vae_original(teacher.vae.state_dict(), 4)
    texts = {"clip_l": text_original(folder, "text_encoder"),
             "clip_g": text_original(folder, "text_encoder_2"),
             "t5xxl": text_original(folder, "text_encoder_3")}
    whole = {**prefixed("model.diffusion_model.", transformer),
             **prefixed("first_stage_model.", vae)}
    for name, state in texts.items():
        whole.update(prefixed(f"text_encoders.{name}.transformer.", state))
    paths = {
        "sd3": save(root / "sd3_incl_clips_t5.safetensors", whole),
        "sd3_transformer": save(root / "sd3.5_tiny.safetensors",
                                prefixed("model.diffusion_model.", transformer)),
        "sd3_vae": save(root / "sd3_vae.safetensors", vae),
        **{f"sd3_{name}": save(root / f"sd3_{name}.safetensors", state)
           for name, state in texts.items()},
    }
    _, folder, teacher = twins["flux"]
    transformer = flux_original(teacher.transformer.state_dict(), flux.TINY["num_layers"],
                                flux.TINY["num_single_layers"])
    vae = vae_original(teacher.vae.state_dict(), 4)
    clip_l, t5 = text_original(folder, "text_encoder"), text_original(folder, "text_encoder_2")
    paths.update({
        "flux": save(root / "flux1-tiny.safetensors", transformer),
        "flux_ae": save(root / "ae.safetensors", vae),
        "flux_clip_l": save(root / "clip_l.safetensors", clip_l),
        "flux_t5xxl": save(root / "t5xxl_fp16.safetensors", t5),
        "flux_comfy": save(root / "flux1-tiny-comfy.safetensors", {
            **prefixed("model.diffusion_model.", transformer), **prefixed("vae.", vae),
            **prefixed("text_encoders.clip_l.transformer.", clip_l),
            **prefixed("text_encoders.t5xxl.transformer.", t5)}),
    })
    return paths


def _inputs(teacher, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h = SIZE // teacher.vae_factor
    latents = torch.randn(2, teacher.latent_channels, h, h, generator=g)
    return latents, torch.tensor([0.2, 0.7])


def assert_same_teacher(loaded, reference, twin) -> None:
    """The loaded teacher computes what the twin's diffusers folder computes: transformer
    (called directly, on the twin's own inputs), empty-prompt context, VAE, scheduler."""
    assert type(loaded) is type(reference) and loaded.name == reference.family
    z, sigmas = _inputs(loaded)
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        text = twin.text_kwargs(2)  # the twin's stand-in context, so the transformer alone counts
        if isinstance(loaded, sd3.SD3Teacher):
            call = {"timestep": sigmas * 1000, **text}
            mine = SD3Transformer2DModel.forward(loaded.transformer, z, **call).sample
            theirs = SD3Transformer2DModel.forward(twin.transformer, z, **call).sample
        else:
            from ablate.model.teachers.packing import image_ids, pack, text_ids

            call = {"timestep": sigmas, "img_ids": image_ids(8, 8, z.device, z.dtype),
                    "txt_ids": text_ids(text["encoder_hidden_states"].shape[1], z.device, z.dtype),
                    "guidance": torch.full((2,), 3.5), **text}
            mine = FluxTransformer2DModel.forward(loaded.transformer, pack(z), **call).sample
            theirs = FluxTransformer2DModel.forward(twin.transformer, pack(z), **call).sample
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6)
        torch.testing.assert_close(loaded.context, reference.context, rtol=0, atol=1e-6)
        torch.testing.assert_close(loaded.pooled, reference.pooled, rtol=0, atol=1e-6)
        torch.testing.assert_close(loaded.predict(z, sigmas), reference.predict(z, sigmas),
                                   rtol=0, atol=1e-6)
        mean = lambda t: t.vae.encode(images).latent_dist.mean  # noqa: E731
        torch.testing.assert_close(mean(loaded), mean(reference), rtol=0, atol=1e-6)
        torch.testing.assert_close(loaded.vae.decode(z).sample, reference.vae.decode(z).sample,
                                   rtol=0, atol=1e-6)
    assert (loaded.latent_scale, loaded.latent_shift) == (reference.latent_scale,
                                                          reference.latent_shift)
    settings = lambda t: {k: v for k, v in t.scheduler.config.items() if not k.startswith("_")}  # noqa: E731
    assert settings(loaded) == settings(reference)
    assert loaded.law == reference.law


# ------------------------------------------------------------------ round trips


def test_sd3_file_with_everything_in_it_loads_as_the_folder(files, twins):
    twin, _, reference = twins["sd3"]
    loaded = build("teacher", "sd3", path=str(files["sd3"]), dtype="float32")
    assert_same_teacher(loaded, reference, twin)
    assert loaded.context.shape == (1, 77 + sd3.TINY_T5_LENGTH, sd3.TINY["joint_attention_dim"])


def test_sd3_transformer_file_with_separate_encoder_files(files, twins):
    twin, _, reference = twins["sd3"]
    loaded = build("teacher", "sd3", path=str(files["sd3_transformer"]), dtype="float32",
                   vae_path=str(files["sd3_vae"]), clip_l_path=str(files["sd3_clip_l"]),
                   clip_g_path=str(files["sd3_clip_g"]), t5_path=str(files["sd3_t5xxl"]))
    assert_same_teacher(loaded, reference, twin)


def test_sd3_file_without_t5_embeds_zeros_in_its_place(files, twins):
    _, _, reference = twins["sd3"]
    args = dict(path=str(files["sd3_transformer"]), dtype="float32",
                vae_path=str(files["sd3_vae"]), clip_l_path=str(files["sd3_clip_l"]),
                clip_g_path=str(files["sd3_clip_g"]))
    with pytest.raises(AblateError, match=r"holds no T5-XXL; set teacher.t5_path=.*"
                                          r"or teacher.t5=false") as err:
        build("teacher", "sd3", **args)
    assert "\n" not in str(err.value)
    loaded = build("teacher", "sd3", t5=False, **args)
    assert torch.count_nonzero(loaded.context[:, 77:]) == 0
    torch.testing.assert_close(loaded.context[:, :77], reference.context[:, :77], rtol=0, atol=1e-6)


@pytest.mark.parametrize("layout", ["bare", "comfy"])
def test_flux_file_loads_as_the_folder(layout, files, twins):
    twin, _, reference = twins["flux"]
    if layout == "bare":  # BFL's release: the transformer alone, encoders beside it
        loaded = build("teacher", "flux", path=str(files["flux"]), dtype="float32",
                       vae_path=str(files["flux_ae"]), clip_l_path=str(files["flux_clip_l"]),
                       t5_path=str(files["flux_t5xxl"]))
    else:
        loaded = build("teacher", "flux", path=str(files["flux_comfy"]), dtype="float32")
    assert_same_teacher(loaded, reference, twin)
    assert loaded.guidance == 3.5


def test_a_separate_vae_file_in_diffusers_layout_is_taken_as_is(files, twins, tmp_path):
    twin, folder, reference = twins["flux"]
    vae = folder / "vae" / "diffusion_pytorch_model.safetensors"
    loaded = build("teacher", "flux", path=str(files["flux"]), dtype="float32",
                   vae_path=str(vae), clip_l_path=str(files["flux_clip_l"]),
                   t5_path=str(files["flux_t5xxl"]))
    assert_same_teacher(loaded, reference, twin)


def test_a_bf16_single_file_teacher_computes_in_bf16(files):
    loaded = build("teacher", "flux", path=str(files["flux_comfy"]), dtype="bfloat16")
    assert loaded.dtype == torch.bfloat16 and loaded.vae.dtype == torch.bfloat16
    z, sigmas = _inputs(loaded)
    with torch.no_grad():
        assert torch.isfinite(loaded.predict(z, sigmas)).all()


def test_empty_prompt_ids_are_the_pipelines_tokenizers(twins):
    """The handwritten ids equal what the tokenizers of a folder give for "" (the twins'
    vocab), and the real ids are the known CLIP / T5 ones."""
    from transformers import AutoTokenizer, CLIPTokenizer

    from ablate.model.teachers.text import clip_ids, t5_ids

    _, folder, _ = twins["sd3"]
    for sub, pad in (("tokenizer", "clip"), ("tokenizer_2", "open_clip")):
        tokenizer = CLIPTokenizer.from_pretrained(str(folder / sub))
        assert torch.equal(single_file.clip_prompt_ids(pad, tiny=True), clip_ids(tokenizer))
    t5 = AutoTokenizer.from_pretrained(str(folder / "tokenizer_3"))
    assert torch.equal(single_file.t5_prompt_ids(16, tiny=True), t5_ids(t5, 16))
    real_l, real_g = (single_file.clip_prompt_ids(p, tiny=False)[0] for p in ("clip", "open_clip"))
    assert real_l[:3].tolist() == [49406, 49407, 49407] and real_l.shape == (77,)
    assert real_g[:3].tolist() == [49406, 49407, 0]
    real_t5 = single_file.t5_prompt_ids(256)[0]  # T5's tokenizer appends </s> (1) to ""
    assert real_t5.shape == (256,) and real_t5[:2].tolist() == [1, 0] and real_t5[1:].sum() == 0


# ------------------------------------------------------------------ bad input, one line each


def one_line(message: str, **args) -> str:
    family = args.pop("family", "sd3")
    with pytest.raises(AblateError, match=message) as err:
        build("teacher", family, dtype="float32", **args)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_a_unet_checkpoint_names_its_teacher(tmp_path):
    sd15 = save(tmp_path / "v1-5.safetensors", {
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3),
        "model.diffusion_model.output_blocks.11.0.skip_connection.weight": torch.zeros(8, 8, 1, 1)})
    sdxl = save(tmp_path / "sdxl.safetensors", {
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3),
        "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": torch.zeros(8)})
    for family in ("sd3", "flux"):
        one_line(r"holds an sd15 UNet checkpoint.*use teacher=sd15", family=family, path=str(sd15))
    one_line(r"holds an sdxl UNet checkpoint.*use teacher=sdxl", path=str(sdxl))


def test_the_other_familys_file_says_which_teacher(files):
    one_line(r"holds a Flux.1 transformer, not SD3; use teacher=flux", path=str(files["flux"]))
    one_line(r"holds an SD3 transformer, not Flux.1; use teacher=sd3", family="flux",
             path=str(files["sd3"]))
    one_line(r"holds no SD3 transformer \(it looks like a VAE: give it as teacher.vae_path\)",
             path=str(files["sd3_vae"]))
    one_line(r"looks like a T5 encoder: give it as teacher.t5_path", family="flux",
             path=str(files["flux_t5xxl"]))


def test_a_missing_part_names_the_setting_to_give(files):
    one_line(r"holds no VAE; set teacher.vae_path=/path/to/ae.safetensors", family="flux",
             path=str(files["flux"]))
    one_line(r"holds no CLIP-L; set teacher.clip_l_path=", family="flux", path=str(files["flux"]),
             vae_path=str(files["flux_ae"]))
    one_line(r"holds no CLIP-G; set teacher.clip_g_path=/path/to/clip_g.safetensors",
             path=str(files["sd3_transformer"]), vae_path=str(files["sd3_vae"]),
             clip_l_path=str(files["sd3_clip_l"]))
    one_line(r"teacher.clip_l_path .*: its CLIP-L does not fit the architecture: size mismatch",
             family="flux", path=str(files["flux"]), vae_path=str(files["flux_ae"]),
             clip_l_path=str(files["sd3_clip_l"]), t5_path=str(files["flux_t5xxl"]))


def test_an_unknown_shape_is_refused_with_what_the_file_holds(files, tmp_path):
    state = {k: v for k, v in load_file(str(files["sd3_transformer"])).items()
             if ".joint_blocks.2." not in k}
    odd = save(tmp_path / "two-blocks.safetensors", state)
    message = one_line(r"SD3 transformer of no known shape \(joint blocks 2, width 32",
                       path=str(odd))
    assert "supported: SD3 Medium, SD3.5 Medium, SD3.5 Large" in message


class _Trap:
    """Unpickling this creates a file: proof that a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickles_are_never_unpickled_and_bad_paths_are_one_line(files, tmp_path):
    marker = tmp_path / "executed"
    trap = tmp_path / "sd3_medium.ckpt"
    trap.write_bytes(pickle.dumps({"state_dict": _Trap(marker)}))
    one_line(r"cannot read teacher.path .*sd3_medium.ckpt: it holds more than tensors.*teachers "
             r"read pickles as tensors only", path=str(trap))
    one_line(r"cannot read teacher.clip_l_path .*: it holds more than tensors", family="flux",
             path=str(files["flux"]), vae_path=str(files["flux_ae"]), clip_l_path=str(trap))
    assert not marker.exists()
    one_line(r"teacher.path .*nowhere.safetensors does not exist",
             path=str(tmp_path / "nowhere.safetensors"))
    one_line(r"teacher.vae_path .*no-ae.safetensors does not exist", family="flux",
             path=str(files["flux"]), vae_path=str(tmp_path / "no-ae.safetensors"))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    one_line(r"cannot read teacher.path .*garbage.safetensors", path=str(garbage))
    scaled = save(tmp_path / "t5xxl_fp8_e4m3fn_scaled.safetensors",
                  {"scaled_fp8": torch.zeros(0), "shared.weight": torch.zeros(2, 2)})
    one_line(r"teacher.t5_path .* is a scaled fp8 checkpoint \(scaled_fp8\)", family="flux",
             path=str(files["flux_comfy"]), t5_path=str(scaled))


@pytest.mark.parametrize(("family", "key", "suffix"), [("sd3", "sd3", ".pt"),
                                                     ("flux", "flux_comfy", ".pth")])
def test_a_torch_saved_file_is_read_as_sd15_reads_its_ckpt(family, key, suffix, files, twins,
                                                           tmp_path):
    """One pickle policy for every family (`loading.WeightsFile`): a twin's original-layout
    state dict saved with torch.save is read by torch.load(weights_only=True), as an SD 1.5
    .ckpt is, and computes what its .safetensors file computes; sd15 reads the same file past
    that reader, so what stops it is its family check, not the file's format."""
    twin, _, reference = twins[family]
    pickled = tmp_path / f"{family}{suffix}"
    torch.save({"state_dict": load_file(str(files[key])), "global_step": 1}, pickled)
    assert_same_teacher(build("teacher", family, path=str(pickled), dtype="float32"),
                        reference, twin)
    one_line(rf"teacher file .*{suffix} is not a sd15 checkpoint; use teacher={family}",
             family="sd15", path=str(pickled))


def test_every_family_refuses_a_pickle_of_objects_with_the_same_line(tmp_path):
    marker = tmp_path / "executed"
    trap = tmp_path / "model.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": _Trap(marker)}, trap)
    messages = {one_line(r"cannot read teacher.path .*model.pt: it holds more than tensors "
                         r"\(Unsupported global: GLOBAL \S*open\)", family=family, path=str(trap))
                for family in ("sd15", "sd21", "sdxl", "sd3", "flux")}
    assert len(messages) == 1 and not marker.exists()


def test_part_settings_only_go_with_a_single_file(twins, files):
    _, folder, _ = twins["sd3"]
    one_line(r"teacher.vae_path only complete a single-file teacher.path; folder .* drop it",
             path=str(folder), vae_path=str(files["sd3_vae"]))
    one_line(r"teacher.t5_path only complete a single-file teacher.path; drop it with "
             r"random_init=true", family="flux", random_init=True, t5_path=str(files["flux_t5xxl"]))
    one_line(r"teacher.t5_path names a T5 file but teacher.t5=false skips T5",
             path=str(files["sd3"]), t5=False, t5_path=str(files["sd3_t5xxl"]))


def test_a_single_file_teacher_refuses_to_save_made_up_text_encoders(files, tmp_path):
    loaded = build("teacher", "flux", path=str(files["flux_comfy"]), dtype="float32")
    with pytest.raises(AblateError, match="loaded from the single file"):
        loaded.save_pretrained(tmp_path / "out")


# ------------------------------------------------------------------ full-size configs, on meta


def meta_state(cls: type, config: dict) -> dict[str, Tensor]:
    with torch.device("meta"):
        return dict(cls(**config).state_dict())


def same_keys_and_shapes(converted: dict[str, Tensor], model: dict[str, Tensor]) -> None:
    assert set(converted) == set(model), sorted(set(converted) ^ set(model))[:5]
    wrong = [k for k in model if tuple(converted[k].shape) != tuple(model[k].shape)]
    assert not wrong, wrong[:5]


FULL_SD3 = [("SD3 Medium", sd3.SD3_MEDIUM, "sd3"), ("SD3.5 Medium", sd3.SD35_MEDIUM, "sd35_medium"),
            ("SD3.5 Large", sd3.SD35_LARGE, "sd35_large")]
FULL_FLUX = [("Flux.1 dev", flux.FLUX_DEV, "flux-dev"),
             ("Flux.1 schnell", flux.FLUX_SCHNELL, "flux-schnell")]


@pytest.mark.parametrize("label,config,model_type", FULL_SD3)
def test_full_size_sd3_configs_match_diffusers_converter_on_meta(label, config, model_type):
    """The original-layout keys of each embedded SD3 config (our inverse map, on meta) are what
    diffusers calls that model (infer_diffusers_model_type), what our shapes test picks, and
    convert back onto exactly the model's keys and shapes."""
    model = meta_state(SD3Transformer2DModel, config)
    original = sd3_original(model, config["num_layers"])
    assert sfu.infer_diffusers_model_type(prefixed("model.diffusion_model.", original)) == model_type
    assert single_file.sd3_variant({k: tuple(v.shape) for k, v in original.items()}).label == label
    same_keys_and_shapes(single_file.convert_sd3(dict(original)), model)


@pytest.mark.parametrize("label,config,model_type", FULL_FLUX)
def test_full_size_flux_configs_match_diffusers_converter_on_meta(label, config, model_type):
    """As for SD3; Flux.1's width 3072 takes diffusers' own single-block split."""
    model = meta_state(FluxTransformer2DModel, config)
    original = flux_original(model, config["num_layers"], config["num_single_layers"])
    assert sfu.infer_diffusers_model_type(original) == model_type
    variant = single_file.flux_variant({k: tuple(v.shape) for k, v in original.items()})
    assert variant.label == label
    assert variant.t5_length == (512 if label.endswith("dev") else 256)
    assert variant.scheduler["use_dynamic_shifting"] == label.endswith("dev")
    same_keys_and_shapes(single_file.convert_flux(dict(original)), model)


@pytest.mark.parametrize("config", [sd3.VAE, flux.VAE], ids=["sd3", "flux"])
def test_full_size_vae_configs_match_diffusers_converter_on_meta(config):
    model = meta_state(AutoencoderKL, config)
    original = vae_original(model, len(config["block_out_channels"]))
    same_keys_and_shapes(sfu.convert_ldm_vae_checkpoint(original, config), model)


def test_full_size_text_encoders_have_their_known_sizes():
    """CLIP-L, OpenCLIP bigG (text towers with projection) and the T5 v1.1 XXL encoder, as
    built for single files, have the parameter counts of the released encoders."""
    def count(build_model) -> int:
        with torch.device("meta"):
            return sum(p.numel() for p in build_model().parameters())

    from transformers import T5Config, T5EncoderModel

    from ablate.model.teachers.unet_families import _CLIP_L, _OPEN_CLIP_BIGG

    clip = lambda params: (lambda: single_file.real_clip(params, True))  # noqa: E731
    assert count(clip(_CLIP_L)) == 123_650_304  # 123.06M text tower + 768 x 768 projection
    assert count(clip(_OPEN_CLIP_BIGG)) == 694_659_840
    assert count(lambda: T5EncoderModel(T5Config(**single_file.T5_XXL))) == 4_762_310_656


# ------------------------------------------------------------------ recipes


def test_unset_part_settings_leave_recipe_hashes_and_teacher_digests_as_they_were(
        monkeypatch, tmp_path):
    from omegaconf import open_dict

    from ablate.recipe import compose, recipe_hash
    from ablate.reuse_key import teacher_fingerprint

    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path))
    for family, keys in (("sd3", ("vae_path", "clip_l_path", "clip_g_path", "t5_path")),
                         ("flux", ("vae_path", "clip_l_path", "t5_path"))):
        cfg = compose([f"teacher={family}"])
        before = cfg.copy()  # the recipe as it was before these settings existed
        with open_dict(before):
            for key in keys:
                assert before.teacher.pop(key) is None
        assert recipe_hash(cfg) == recipe_hash(before)
        assert teacher_fingerprint(cfg) == teacher_fingerprint(before)
        assert recipe_hash(compose([f"teacher={family}", "teacher.vae_path=/m/ae.safetensors"])) \
            != recipe_hash(cfg)


def test_config_files_name_every_argument_of_the_registry_entries():
    import yaml

    from ablate.recipe import config_dir

    for name in ("sd3", "flux"):
        config = yaml.safe_load((config_dir() / "teacher" / f"{name}.yaml").read_text())
        assert config.pop("name") == name
        assert set(config) == set(TEACHERS.get(name).arguments())


def test_a_sweeps_preflight_takes_a_single_file_and_checks_its_part_files(files, tmp_path):
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from ablate.space.assets import _check_real_teacher

    def problems(**teacher) -> list[str]:
        check = SimpleNamespace(space=SimpleNamespace(source_path="space.yaml", name="s"),
                                problems=[])
        check.problem = check.problems.append
        _check_real_teacher(check, OmegaConf.create({"teacher": teacher}))
        return check.problems

    assert problems(name="flux", path=str(files["flux"]), vae_path=str(files["flux_ae"])) == []
    missing = problems(name="sd3", path=str(files["sd3"]), t5_path=str(tmp_path / "t5.safetensors"))
    assert len(missing) == 1 and missing[0].startswith("teacher.t5_path ")
    # the pre-check takes what the loaders take, the same for every family (docs/teachers.md)
    ckpt = tmp_path / "sd3.ckpt"
    ckpt.write_bytes(b"x")
    assert problems(name="sd3", path=str(ckpt)) == problems(name="sd15", path=str(ckpt)) == []
    onnx = tmp_path / "sd3.onnx"
    onnx.write_bytes(b"x")
    for name in ("sd3", "sd15"):
        assert ("a diffusers-layout folder or a .safetensors or .ckpt/.pt/.pth/.bin file"
                in problems(name=name, path=str(onnx))[0])
