"""SD3 / SD3.5 and Flux.1 teachers from single original-layout weights files (the Stability AI
and Black Forest Labs .safetensors releases, ComfyUI checkpoints), built into the same
`SD3Teacher` / `FluxTeacher` a diffusers folder gives.

Where each part is read from (a setting, when given, wins over the main file):

    part           setting       in the main file (teacher.path)
    transformer    -             model.diffusion_model.* or bare joint_blocks.* / double_blocks.*
    VAE            vae_path      first_stage_model.* or vae.*
    CLIP-L         clip_l_path   text_encoders.clip_l.transformer.*
    CLIP-G (SD3)   clip_g_path   text_encoders.clip_g.transformer.*
    T5-XXL         t5_path       text_encoders.t5xxl.transformer.*

The separate files are the ComfyUI-style ones: ae.safetensors (LDM layout; a diffusers-layout
VAE file works too), clip_l.safetensors, clip_g.safetensors, t5xxl_fp16.safetensors
(transformers' layout). Keys are converted by diffusers' own single-file converters. The
architecture is picked by matching the file's shapes (blocks, width, dual-attention blocks,
qk-norm, position table, guidance input) against embedded configs: SD3 Medium, SD3.5 Medium,
SD3.5 Large, Flux.1 dev and schnell, and the tiny twins (so that tests can round-trip them).
Nothing is downloaded; every file, the main one and each part, is read by
`loading.WeightsFile`, the one reading policy of every family (pickles as tensors only).

A single file carries no tokenizer, so the empty prompt's ids are built here, as the
pipelines' tokenizers give them: CLIP [BOS 49406, EOS 49407, padding] to 77, padded with 49407
by CLIP-L's tokenizer and with 0 ("!") by SD3's CLIP-G tokenizer; T5 [EOS 1, padding 0] to the
family's length (SD3 256, Flux dev 512, schnell 256). They are embedded by the same functions
the folder path uses (`sd3.embed_empty_prompt`, `sd3.embed_t5`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
)
from torch import Tensor, nn

from ablate.core.errors import AblateError
from ablate.model.teachers import flux, sd3
from ablate.model.teachers.base import on_meta
from ablate.model.teachers.loading import (
    DIFFUSION_PREFIX,
    FLUX_KEY,
    SD3_KEY,
    WeightsFile,
    file_family,
)
from ablate.model.teachers.text import BOS, EOS, PAD_ID, TEXT_LENGTH, TINY_VOCAB, tiny_clip, tiny_t5
from ablate.model.teachers.unet_families import _CLIP_L, _OPEN_CLIP_BIGG

log = logging.getLogger(__name__)

Shapes = Mapping[str, tuple[int, ...]]

# the transformer's own keys in a bare file (one that may hold other parts unprefixed)
SD3_ROOTS = ("joint_blocks.", "x_embedder.", "pos_embed", "t_embedder.", "y_embedder.",
             "context_embedder.", "final_layer.")
FLUX_ROOTS = ("double_blocks.", "single_blocks.", "img_in.", "txt_in.", "time_in.", "vector_in.",
              "guidance_in.", "final_layer.")
DIFFUSERS_VAE_KEY = "encoder.down_blocks.0.resnets.0.conv1.weight"  # a VAE file already converted
FLUX_WIDTH = 3072  # the width diffusers' Flux converter splits single blocks at (hard-coded)
T5_EOS, T5_PAD = 1, 0
# google/t5-v1_1-xxl's encoder: SD3's text_encoder_3/config.json, Flux's text_encoder_2/
T5_XXL: dict[str, Any] = dict(
    vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
    relative_attention_num_buckets=32, relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, tie_word_embeddings=False,
    pad_token_id=T5_PAD, eos_token_id=T5_EOS, decoder_start_token_id=0,
)


# --- what a file can hold ------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One architecture a single file can hold, with what the file does not say: the
    diffusers configs, the scheduler and the T5 context length."""

    label: str
    transformer: dict[str, Any]
    vae: dict[str, Any]
    scheduler: dict[str, Any]
    t5_length: int
    tiny: bool = False  # the twins' tiny text encoders and handwritten vocab


SD3_SCHEDULER: dict[str, Any] = dict(shift=sd3.SHIFT)
SD3_VARIANTS = (
    Variant("SD3 Medium", sd3.SD3_MEDIUM, sd3.VAE, SD3_SCHEDULER, sd3.T5_LENGTH),
    Variant("SD3.5 Medium", sd3.SD35_MEDIUM, sd3.VAE, SD3_SCHEDULER, sd3.T5_LENGTH),
    Variant("SD3.5 Large", sd3.SD35_LARGE, sd3.VAE, SD3_SCHEDULER, sd3.T5_LENGTH),
    Variant("tiny-sd3", sd3.TINY, sd3.TINY_VAE, SD3_SCHEDULER, sd3.TINY_T5_LENGTH, tiny=True),
)
FLUX_VARIANTS = (
    Variant("Flux.1 dev", flux.FLUX_DEV, flux.VAE, flux.SCHEDULER, flux.T5_LENGTH),
    Variant("Flux.1 schnell", flux.FLUX_SCHNELL, flux.VAE, flux.SCHNELL_SCHEDULER,
            flux.SCHNELL_T5_LENGTH),
    Variant("tiny-flux", flux.TINY, flux.TINY_VAE, flux.SCHEDULER, flux.TINY_T5_LENGTH, tiny=True),
)


@dataclass(frozen=True)
class Part:
    """A part that may sit in the main file under one of `prefixes` or in its own file."""

    label: str
    setting: str
    prefixes: tuple[str, ...]
    example: str


VAE_PART = Part("VAE", "vae_path", ("first_stage_model.", "vae."), "ae.safetensors")
CLIP_L = Part("CLIP-L", "clip_l_path", ("text_encoders.clip_l.transformer.",), "clip_l.safetensors")
CLIP_G = Part("CLIP-G", "clip_g_path", ("text_encoders.clip_g.transformer.",), "clip_g.safetensors")
T5 = Part("T5-XXL", "t5_path", ("text_encoders.t5xxl.transformer.",), "t5xxl_fp16.safetensors")


@dataclass(frozen=True)
class Source:
    """Where one part's tensors are: a file and the prefix they sit under."""

    checkpoint: WeightsFile
    prefix: str

    @property
    def where(self) -> str:
        return self.checkpoint.where

    def state(self) -> dict[str, Tensor]:
        return self.checkpoint.part(self.prefix)


def locate(part: Part, main: WeightsFile, files: Mapping[str, str | None],
           hint: str = "") -> Source:
    """The part's own file when its setting is given, else the main file's; a part found in
    neither is one line naming the setting to give."""
    given = files.get(part.setting)
    if given:
        own = WeightsFile(Path(given).expanduser(), f"teacher.{part.setting}")
        return Source(own, own.prefix(part.prefixes) or "")
    prefix = main.prefix(part.prefixes)
    if prefix is None:
        raise AblateError(f"{main.where} holds no {part.label}; set teacher.{part.setting}="
                          f"/path/to/{part.example}{hint}")
    return Source(main, prefix)


# --- which transformer --------------------------------------------------------------------------


NAMES = {"sd3": ("SD3", "an SD3"), "flux": ("Flux.1", "a Flux.1")}  # label, with its article
MARKERS = {"sd3": SD3_KEY, "flux": FLUX_KEY}


def transformer_prefix(main: WeightsFile, family: str) -> str:
    """The transformer's key prefix in the main file, after checking it is `family`'s; another
    family's file is one line saying which teacher takes it."""
    label, a_label = NAMES[family]
    found = file_family(main.shapes)
    if found == family:
        return DIFFUSION_PREFIX if DIFFUSION_PREFIX + MARKERS[family] in main.shapes else ""
    if found in NAMES:
        raise AblateError(f"{main.where} holds {NAMES[found][1]} transformer, not {label}; "
                          f"use teacher={found}")
    if found is not None:
        raise AblateError(f"{main.where} holds an {found} UNet checkpoint, not {a_label} "
                          f"transformer; use teacher={found}")
    raise AblateError(f"{main.where} holds no {label} transformer ({describe(main.shapes)}); "
                      f"point teacher.path at {a_label} .safetensors file")


def describe(shapes: Shapes) -> str:
    """What a file without a transformer seems to be, with the setting that takes it."""
    keys = list(shapes)
    if any(k.startswith(("encoder.down.", "decoder.up.", "first_stage_model.")) for k in keys):
        return "it looks like a VAE: give it as teacher.vae_path"
    if any(k.startswith(("text_model.", "text_encoders.clip_")) for k in keys):
        return "it looks like a CLIP text encoder: give it as teacher.clip_l_path / clip_g_path"
    if any(k.startswith(("encoder.block.", "shared.")) for k in keys):
        return "it looks like a T5 encoder: give it as teacher.t5_path"
    return f"e.g. key {keys[0]!r}" if keys else "it is empty"


def shape(shapes: Shapes, key: str, where: str) -> tuple[int, ...]:
    if key not in shapes:
        raise AblateError(f"{where}: its transformer lacks {key}; is the file complete?")
    return shapes[key]


def block_ids(shapes: Shapes, prefix: str, inner: str = "") -> set[int]:
    """Indices i of keys `{prefix}{i}.…{inner}…`."""
    return {int(k[len(prefix):].split(".", 1)[0]) for k in shapes
            if k.startswith(prefix) and inner in k}


def sd3_signature(shapes: Shapes, where: str) -> dict[str, Any]:
    """What the file's shapes say of an SD3 architecture (keys without the model prefix)."""
    embed = shape(shapes, "x_embedder.proj.weight", where)  # [width, 16, patch, patch]
    return {
        "joint blocks": len(block_ids(shapes, "joint_blocks.")),
        "width": embed[0],
        "dual-attention blocks": tuple(sorted(block_ids(shapes, "joint_blocks.", ".attn2."))),
        "qk-norm": any(".attn.ln_q." in k for k in shapes),
        "position table": shape(shapes, "pos_embed", where)[1],  # [1, size^2, width]
        "context width": shape(shapes, "context_embedder.weight", where)[1],
        "pooled width": shape(shapes, "y_embedder.mlp.0.weight", where)[1],
        "latent channels": embed[1],
        "patch": embed[2],
    }


def sd3_config_signature(c: dict[str, Any]) -> dict[str, Any]:
    """The same facts read from a diffusers SD3Transformer2DModel config."""
    return {
        "joint blocks": c["num_layers"],
        "width": c["num_attention_heads"] * c["attention_head_dim"],
        "dual-attention blocks": tuple(c.get("dual_attention_layers", ())),
        "qk-norm": c.get("qk_norm") is not None,
        "position table": c["pos_embed_max_size"] ** 2,
        "context width": c["joint_attention_dim"],
        "pooled width": c["pooled_projection_dim"],
        "latent channels": c["in_channels"],
        "patch": c["patch_size"],
    }


def flux_signature(shapes: Shapes, where: str) -> dict[str, Any]:
    """What the file's shapes say of a Flux architecture."""
    embed = shape(shapes, "img_in.weight", where)  # [width, 64 packed latent channels]
    return {
        "double blocks": len(block_ids(shapes, "double_blocks.")),
        "single blocks": len(block_ids(shapes, "single_blocks.")),
        "width": embed[0],
        "head width": shape(shapes, "double_blocks.0.img_attn.norm.query_norm.scale", where)[0],
        "latent channels": embed[1],  # 384 / 128: the Fill / Depth models
        "guidance input": "guidance_in.in_layer.weight" in shapes,  # dev yes, schnell no
        "context width": shape(shapes, "txt_in.weight", where)[1],
        "pooled width": shape(shapes, "vector_in.in_layer.weight", where)[1],
    }


def flux_config_signature(c: dict[str, Any]) -> dict[str, Any]:
    return {
        "double blocks": c["num_layers"],
        "single blocks": c["num_single_layers"],
        "width": c["num_attention_heads"] * c["attention_head_dim"],
        "head width": c["attention_head_dim"],
        "latent channels": c["in_channels"],
        "guidance input": bool(c["guidance_embeds"]),
        "context width": c["joint_attention_dim"],
        "pooled width": c["pooled_projection_dim"],
    }


def pick_variant(variants: tuple[Variant, ...], found: dict[str, Any],
                 signature: Callable[[dict[str, Any]], dict[str, Any]], where: str,
                 family: str) -> Variant:
    """The embedded variant whose config has exactly the file's shapes."""
    for variant in variants:
        if signature(variant.transformer) == found:
            return variant
    facts = ", ".join(f"{k} {v}" for k, v in found.items())
    known = ", ".join(v.label for v in variants if not v.tiny)
    raise AblateError(f"{where} holds {NAMES[family][1]} transformer of no known shape "
                      f"({facts}); supported: {known}")


def sd3_variant(shapes: Shapes, where: str = "the file") -> Variant:
    """The SD3 variant of a transformer's keys and shapes (no model prefix)."""
    return pick_variant(SD3_VARIANTS, sd3_signature(shapes, where), sd3_config_signature,
                        where, "sd3")


def flux_variant(shapes: Shapes, where: str = "the file") -> Variant:
    return pick_variant(FLUX_VARIANTS, flux_signature(shapes, where), flux_config_signature,
                        where, "flux")


# --- converting and loading ----------------------------------------------------------------------


def convert_sd3(state: dict[str, Tensor]) -> dict[str, Tensor]:
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    return convert_sd3_transformer_checkpoint_to_diffusers(state)


def convert_flux(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """diffusers' converter. It splits each single block's fused linear1 [3w + 4w, w] into
    q, k, v and proj_mlp at Flux.1's width w = 3072, a constant in its code; at another width
    (the tiny twin) those four are split here, and the converter gets zero-stride stand-ins of
    the shape it expects, whose outputs are replaced. Real Flux.1 files take diffusers' path."""
    from diffusers.loaders.single_file_utils import (
        convert_flux_transformer_checkpoint_to_diffusers as convert,
    )

    width = state["img_in.weight"].shape[0]
    if width == FLUX_WIDTH:
        return convert(state)
    fused = {k: state[k] for k in state if k.startswith("single_blocks.") and ".linear1." in k}
    for key, tensor in fused.items():  # [3w + mlp, w] / [3w + mlp] -> [7 * 3072, ...] of zeros
        state[key] = tensor.new_zeros(()).expand(7 * FLUX_WIDTH, *tensor.shape[1:])
    converted = convert(state)
    for key, tensor in fused.items():
        block, kind = key.split(".")[1], key.rsplit(".", 1)[1]  # index, weight | bias
        pieces = tensor.split([width, width, width, tensor.shape[0] - 3 * width])
        for name, piece in zip(("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), pieces,
                               strict=True):
            converted[f"single_transformer_blocks.{block}.{name}.{kind}"] = piece
    return converted


def load_into(model: nn.Module, state: dict[str, Tensor], where: str, part: str) -> nn.Module:
    """Load weights into a model built on meta: every parameter must come from the file (one
    left uninitialised would compute garbage without a word); extra keys are ignored."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a shape mismatch: the file is another model than picked
        lines = [line.strip() for line in str(err).splitlines()]
        detail = next((line for line in lines if line.startswith("size mismatch")), lines[0])
        raise AblateError(f"{where}: its {part} does not fit the architecture: {detail}") from None
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing:
        raise AblateError(f"{where}: its {part} lacks {len(missing)} weights (e.g. {missing[0]}); "
                          f"is it a complete {part}?")
    if unexpected:
        log.debug("%s: ignored %d %s keys, e.g. %s", where, len(unexpected), part, unexpected[0])
    for module in model.modules():  # CLIP's non-persistent position ids were never initialised
        ids = getattr(module, "position_ids", None)
        if isinstance(ids, Tensor):
            ids.copy_(torch.arange(ids.shape[-1]).expand_as(ids))
    return model.eval()


def load_transformer(cls: type, variant: Variant, main: WeightsFile, prefix: str,
                     roots: tuple[str, ...], convert: Callable[[dict], dict],
                     dtype: torch.dtype) -> nn.Module:
    state = main.part(prefix, roots if not prefix else ("",))
    try:
        converted = convert(state)
    except KeyError as err:
        raise AblateError(f"{main.where}: its transformer lacks {err.args[0]}; is the file "
                          "complete?") from None
    return load_into(on_meta(cls, variant.transformer, dtype), converted, main.where,
                     "transformer")


def load_vae(config: dict[str, Any], source: Source, dtype: torch.dtype) -> nn.Module:
    """The VAE from LDM keys (diffusers' converter) or from a file already in diffusers' layout."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    state = source.state()
    if DIFFUSERS_VAE_KEY not in state:
        state = convert_ldm_vae_checkpoint(state, config)
    return load_into(on_meta(AutoencoderKL, config, dtype), state, source.where, "VAE")


def meta_built(build: Callable[[], nn.Module]) -> nn.Module:
    """A model built on meta (no init work), then given empty CPU storage to load into."""
    with torch.device("meta"):
        model = build()
    return model.to_empty(device="cpu")


def real_clip(params: dict[str, Any], projection: bool) -> nn.Module:
    """CLIP-L or OpenCLIP bigG text encoder, fp32 as the folder path loads them; ids as in the
    hub configs (eos 2 makes transformers pool at argmax(ids): the first 49407)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(**params, vocab_size=49408, max_position_embeddings=TEXT_LENGTH,
                            bos_token_id=0, eos_token_id=2, pad_token_id=1)
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return on_meta(cls, {"config": config}, torch.float32)


def real_t5() -> nn.Module:
    from transformers import T5Config, T5EncoderModel

    return on_meta(T5EncoderModel, {"config": T5Config(**T5_XXL)}, torch.float32)


def text_builders(variant: Variant, family: str) -> dict[str, Callable[[], nn.Module]]:
    """Meta-built text encoders by part label: the real CLIP-L (SD3: with a projection, Flux:
    without), OpenCLIP bigG and T5-XXL, or the twins' tiny ones at the widths their folders are
    written with (`sd3._write_tiny_text`, `flux._write_tiny_text`)."""
    if not variant.tiny:
        return {CLIP_L.label: partial(real_clip, _CLIP_L, family == "sd3"),
                CLIP_G.label: partial(real_clip, _OPEN_CLIP_BIGG, True),
                T5.label: real_t5}
    config = variant.transformer
    build = {T5.label: partial(meta_built, partial(tiny_t5, config["joint_attention_dim"]))}
    if family == "flux":
        build[CLIP_L.label] = partial(meta_built, partial(tiny_clip, config["pooled_projection_dim"]))
        return build
    half = config["pooled_projection_dim"] // 2  # each CLIP's projection: half the pooled width
    for part, width in zip((CLIP_L, CLIP_G), sd3.TINY_CLIP, strict=True):
        build[part.label] = partial(meta_built, partial(tiny_clip, width, half))
    return build


def text_keys(model: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Keys as the model names them: transformers >= 5.6 flattened CLIPTextModel (no
    `text_model.` prefix) while files keep it; T5 files may hold its tied embedding once."""
    names = set(model.state_dict())
    fitted = {}
    for key, value in state.items():
        name = next((n for n in (key, key.removeprefix("text_model."), f"text_model.{key}")
                     if n in names), key)
        fitted[name] = value
    for a, b in (("shared.weight", "encoder.embed_tokens.weight"),
                 ("encoder.embed_tokens.weight", "shared.weight")):
        if a in names and a not in fitted and b in fitted:
            fitted[a] = fitted[b]
    return fitted


def load_text(build: Callable[[], nn.Module], part: Part, source: Source,
              identity_projection: bool = False) -> nn.Module:
    model = build()
    state = text_keys(model, source.state())
    if identity_projection:
        # SD3 pools CLIP-L unprojected (its reference code: return_projected_pooled=False);
        # diffusers' SD3 single-file loader sets this identity likewise
        width = model.text_projection.weight.shape[0]
        state["text_projection.weight"] = torch.eye(width)  # [768, 768]
    return load_into(model, state, source.where, part.label)


def clip_prompt_ids(pad: str, tiny: bool) -> Tensor:
    """"" as the pipelines' CLIP tokenizers give it [1, 77]: BOS, EOS, then padding (EOS for
    CLIP-L's tokenizer, "!" = 0 for SD3's CLIP-G tokenizer); the twins' handwritten vocab has
    its own BOS / EOS ids."""
    if tiny:
        bos, eos = TINY_VOCAB.index("<|startoftext|>"), TINY_VOCAB.index("<|endoftext|>")
    else:
        bos, eos = BOS, EOS
    pad_id = eos if pad == "clip" else PAD_ID["open_clip"]
    return torch.tensor([[bos, eos] + [pad_id] * (TEXT_LENGTH - 2)])


def t5_prompt_ids(length: int, tiny: bool = False) -> Tensor:
    """"" as the pipelines' T5 tokenizer gives it [1, length]: </s> then <pad>. The twins'
    handwritten T5 tokenizer (`text.write_t5_tokenizer`) appends no </s>: all <pad>."""
    head = [] if tiny else [T5_EOS]
    return torch.tensor([head + [T5_PAD] * (length - len(head))])


# --- the two families ----------------------------------------------------------------------------


def load_sd3(main: WeightsFile, dtype: torch.dtype, files: Mapping[str, str | None], t5: bool,
             timesteps: str, shift: float | None) -> sd3.SD3Teacher:
    """An SD3 / SD3.5 teacher from one original-layout file (+ separate part files)."""
    prefix = transformer_prefix(main, "sd3")
    shapes = {k[len(prefix):]: s for k, s in main.shapes.items() if k.startswith(prefix)}
    variant = sd3_variant(shapes, main.where)
    # every part is located before a tensor is read: a missing one fails at once
    vae_source = locate(VAE_PART, main, files)
    clip_sources = [locate(part, main, files) for part in (CLIP_L, CLIP_G)]
    t5_source = (locate(T5, main, files, ", or teacher.t5=false to embed without T5")
                 if t5 else None)

    # text first: the encoders embed "" once and are freed before the transformer is read
    build = text_builders(variant, "sd3")
    clips = [load_text(build[part.label], part, source,
                       identity_projection=part is CLIP_L and not variant.tiny)
             for part, source in zip((CLIP_L, CLIP_G), clip_sources, strict=True)]
    clip_ids = [clip_prompt_ids(pad, variant.tiny) for pad in ("clip", "open_clip")]
    if t5_source is not None:
        encoder = load_text(build[T5.label], T5, t5_source)
        ids = t5_prompt_ids(variant.t5_length, variant.tiny)  # [1, L]
        t5_context = sd3.embed_t5(encoder, ids)  # [1, L, 4096]
        del encoder
    else:
        t5_context = torch.zeros(1, variant.t5_length, variant.transformer["joint_attention_dim"])
    context, pooled = sd3.embed_empty_prompt(clips, clip_ids, t5_context)  # [1, 77 + L, D], [1, P]
    del clips

    transformer = load_transformer(SD3Transformer2DModel, variant, main, prefix, SD3_ROOTS,
                                   convert_sd3, dtype)
    vae = load_vae(variant.vae, vae_source, dtype)
    scheduler = FlowMatchEulerDiscreteScheduler(**variant.scheduler)
    return sd3.SD3Teacher(sd3.FAMILY, sd3.FAMILY, transformer, vae, scheduler, context, pooled,
                          sd3.law(timesteps, shift, float(scheduler.config.shift)),
                          text_source=main.file)


def load_flux(main: WeightsFile, dtype: torch.dtype, files: Mapping[str, str | None],
              guidance: float, timesteps: str, shift: float | None) -> flux.FluxTeacher:
    """A Flux.1 teacher from one original-layout file (+ separate part files)."""
    prefix = transformer_prefix(main, "flux")
    shapes = {k[len(prefix):]: s for k, s in main.shapes.items() if k.startswith(prefix)}
    variant = flux_variant(shapes, main.where)
    vae_source = locate(VAE_PART, main, files)
    clip_source = locate(CLIP_L, main, files)
    t5_source = locate(T5, main, files)

    build = text_builders(variant, "flux")
    clip = load_text(build[CLIP_L.label], CLIP_L, clip_source)
    with torch.no_grad():
        pooled = clip(clip_prompt_ids("clip", variant.tiny)).pooler_output.float()  # [1, 768]
    del clip
    encoder = load_text(build[T5.label], T5, t5_source)
    ids = t5_prompt_ids(variant.t5_length, variant.tiny)  # [1, 512 | 256]
    context = sd3.embed_t5(encoder, ids)  # [1, 512 | 256, 4096]
    del encoder

    transformer = load_transformer(FluxTransformer2DModel, variant, main, prefix, FLUX_ROOTS,
                                   convert_flux, dtype)
    vae = load_vae(variant.vae, vae_source, dtype)
    scheduler = FlowMatchEulerDiscreteScheduler(**variant.scheduler)
    return flux.FluxTeacher(flux.FAMILY, flux.FAMILY, transformer, vae, scheduler, context,
                            pooled, flux.law(timesteps, shift, scheduler), text_source=main.file,
                            guidance=guidance)
