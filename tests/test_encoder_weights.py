"""Local pretrained weights into a timm encoder: tiny twins of CLIP, DINOv2 and DINOv3 (Eva)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from ablate.core.errors import AblateError
from ablate.core.files import sha256_file
from ablate.model.encoder_weights import load_encoder_weights, read_state_dict

TWINS = {
    "clip": ("vit_base_patch16_clip_224", dict(img_size=64, embed_dim=32, depth=2, num_heads=2)),
    "dinov2": (
        "vit_large_patch14_dinov2",
        dict(img_size=56, embed_dim=32, depth=2, num_heads=2, reg_tokens=4),
    ),
    "dinov3": ("vit_large_patch16_dinov3", dict(img_size=64, embed_dim=32, depth=2, num_heads=2)),
}


def twin(kind: str, num_classes: int = 0, **over) -> nn.Module:
    name, kwargs = TWINS[kind]
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **{**kwargs, **over}).eval()


def image(kind: str) -> Tensor:
    side = TWINS[kind][1]["img_size"]
    return torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same(model: nn.Module, source: nn.Module, kind: str) -> None:
    got, want = model.state_dict(), source.state_dict()
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key
    with torch.no_grad():
        assert torch.equal(model(image(kind)), source(image(kind)))


def fresh(kind: str, source: nn.Module) -> nn.Module:
    """A twin of the same kind whose weights differ from source's (so a load is visible)."""
    torch.manual_seed(123)
    model = twin(kind)
    theirs = source.state_dict()
    assert any(not torch.equal(v, theirs[k]) for k, v in model.state_dict().items())
    return model


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def save(sd: dict[str, Tensor], path: Path) -> Path:
    sd = {k: v.contiguous() for k, v in sd.items()}
    if path.suffix == ".safetensors":
        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    return path


def openai_clip(sd: dict[str, Tensor], width: int) -> dict[str, Tensor]:
    """The CLIP twin's timm keys back in OpenAI CLIP's layout (the inverse of timm's
    vision_transformer._convert_openai_clip), plus a projection and a text-tower tensor."""
    swaps = [
        (r"^patch_embed\.proj", "conv1"), (r"^norm_pre", "ln_pre"), (r"^norm\.", "ln_post."),
        (r"^blocks\.", "transformer.resblocks."), (r"\.norm(\d)", r".ln_\1"),
        (r"attn\.qkv\.", "attn.in_proj_"), (r"attn\.proj", "attn.out_proj"),
        (r"mlp\.fc1", "mlp.c_fc"), (r"mlp\.fc2", "mlp.c_proj"),
    ]
    out = {}
    for key, value in sd.items():
        if key == "cls_token":
            key, value = "class_embedding", value[0, 0]
        elif key == "pos_embed":
            key, value = "positional_embedding", value[0]
        for old, new in swaps:
            key = re.sub(old, new, key)
        out["visual." + key] = value
    out["visual.proj"] = torch.randn(width, 16)
    out["transformer.resblocks.0.attn.in_proj_weight"] = torch.randn(48, 16)  # text tower: ignored
    return out


@pytest.mark.parametrize("kind", list(TWINS))
@pytest.mark.parametrize("layout", ["safetensors", "pth", "container"])
def test_own_file_loads_into_a_fresh_twin(kind, layout, tmp_path):
    source = twin(kind)
    sd = source.state_dict()
    if layout == "safetensors":
        path = save(sd, tmp_path / "model.safetensors")
    elif layout == "pth":
        path = save(sd, tmp_path / "w.pth")
    else:
        path = tmp_path / "ckpt.pt"
        torch.save({"state_dict": sd, "epoch": 3}, path)
    model = fresh(kind, source)
    load_encoder_weights(model, path, preset=kind)
    assert_same(model, source, kind)


@pytest.mark.parametrize("kind", list(TWINS))
def test_file_with_a_classifier_head_loads_into_the_headless_twin(kind, tmp_path):
    source = twin(kind, num_classes=2)
    path = save(source.state_dict(), tmp_path / "w.safetensors")
    assert "head.weight" in source.state_dict()
    model = fresh(kind, source)
    load_encoder_weights(model, path, preset=kind)
    source.reset_classifier(0)
    assert_same(model, source, kind)


def test_another_encoders_file_names_the_tensor_and_both_shapes(tmp_path):
    path = save(twin("clip").state_dict(), tmp_path / "clip.safetensors")
    model = twin("dinov2")
    before = snapshot(model)
    with pytest.raises(AblateError) as err:
        load_encoder_weights(model, path, preset="dinov2_b")
    text = one_line(err)
    # CLIP twin: patch 16, 3 channels, embed 32 -> (32, 3, 16, 16); DINOv2 twin: patch 14 ->
    # (32, 3, 14, 14). cls_token (1, 1, 32) agrees; pos_embed is resampled by timm, not compared.
    assert "patch_embed.proj.weight is (32, 3, 16, 16) in the file but (32, 3, 14, 14) in the model" in text
    assert "dinov2_b (vit_large_patch14_dinov2)" in text and "config file" in text
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_converted_file_of_a_wider_encoder_names_the_first_shape(tmp_path):
    wide = twin("clip", embed_dim=64)
    path = save(openai_clip(wide.state_dict(), 64), tmp_path / "open_clip.pt")
    model = twin("clip")
    before = snapshot(model)
    with pytest.raises(AblateError) as err:
        load_encoder_weights(model, path, preset="clip_b16")
    # visual.class_embedding (64,) -> cls_token (1, 1, 64); the model's is (1, 1, 32)
    assert "cls_token is (1, 1, 64) in the file but (1, 1, 32) in the model" in one_line(err)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_file_the_converter_cannot_read_is_refused_naming_the_preset(tmp_path):
    # OpenAI CLIP layout into DINOv2: 17 position tokens less 5 prefix tokens is no square grid
    path = save(openai_clip(twin("clip").state_dict(), 32), tmp_path / "clip.pt")
    with pytest.raises(AblateError) as err:
        load_encoder_weights(twin("dinov2"), path, preset="dinov2_b")
    assert "not in a format the timm converter of backbone dinov2_b" in one_line(err)


def test_missing_and_unknown_tensors_are_named(tmp_path):
    sd = twin("clip").state_dict()
    missing = save({k: v for k, v in sd.items() if k != "blocks.1.mlp.fc2.bias"}, tmp_path / "a.pth")
    with pytest.raises(AblateError) as err:
        load_encoder_weights(twin("clip"), missing, preset="clip_b16")
    assert "lacks 1 tensor(s) the model needs (blocks.1.mlp.fc2.bias)" in one_line(err)

    extra = save({**sd, "blocks.0.adapter.weight": torch.zeros(3)}, tmp_path / "b.pth")
    with pytest.raises(AblateError) as err:
        load_encoder_weights(twin("clip"), extra, preset="clip_b16")
    assert "has 1 tensor(s) the model does not (blocks.0.adapter.weight)" in one_line(err)


UNPICKLED: list[str] = []


class Payload:
    """Unpickling it (anything but weights_only) would run __setstate__."""

    def __init__(self) -> None:
        self.note = "x"

    def __setstate__(self, state: dict) -> None:
        UNPICKLED.append("ran")
        self.__dict__.update(state)


def test_pickle_that_is_not_weights_only_is_refused_unrun(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": twin("clip").state_dict(), "extra": Payload()}, path)
    try:
        load_encoder_weights(twin("clip"), path, preset="clip_b16")
    except AblateError as err:
        refused = str(err)
    else:
        refused = ""
    assert UNPICKLED == []  # checked first: the payload's code must not have run
    assert "is not a weights-only torch file" in refused and "\n" not in refused
    assert "Payload, that is never unpickled" in refused


def test_openai_clip_layout_is_converted(tmp_path):
    source = twin("clip")
    path = save(openai_clip(source.state_dict(), 32), tmp_path / "ViT-B-16.pt")
    model = fresh("clip", source)
    load_encoder_weights(model, path, preset="clip_b16")
    assert_same(model, source, "clip")


def test_original_dinov2_and_dinov3_layouts_are_converted(tmp_path):
    v2 = twin("dinov2")
    path = save({**v2.state_dict(), "mask_token": torch.zeros(1, 32)}, tmp_path / "dinov2.pth")
    model = fresh("dinov2", v2)
    load_encoder_weights(model, path, preset="dinov2_b")
    assert_same(model, v2, "dinov2")

    v3 = twin("dinov3")
    names = {"reg_token": "storage_tokens", "gamma_1": "ls1.gamma", "gamma_2": "ls2.gamma"}
    sd = {}
    for key, value in v3.state_dict().items():
        for new, old in names.items():
            key = key.replace(new, old)
        sd[key] = value
    sd.update({"mask_token": torch.zeros(1, 32), "rope_embed.periods": torch.ones(4)})
    path = save(sd, tmp_path / "dinov3.pth")
    model = fresh("dinov3", v3)
    load_encoder_weights(model, path, preset="dinov3_b")
    assert_same(model, v3, "dinov3")


def test_read_state_dict_strips_ddp_prefix_and_refuses_what_is_not_weights(tmp_path):
    sd = {"a.weight": torch.ones(2), "b": torch.zeros(1)}
    path = tmp_path / "ddp.pt"
    torch.save({"model": {"module." + k: v for k, v in sd.items()}}, path)
    got = read_state_dict(path)
    assert got.keys() == sd.keys() and torch.equal(got["a.weight"], sd["a.weight"])

    for name, content in [("w.ckpt", b"x"), ("w.pth", b"not a zip"), ("w.safetensors", b"\0" * 4)]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(AblateError) as err:
            read_state_dict(tmp_path / name)
        one_line(err)
    torch.save({"teacher": sd, "student": sd}, tmp_path / "two.pth")
    with pytest.raises(AblateError, match="not a flat dict of tensors"):
        read_state_dict(tmp_path / "two.pth")
    with pytest.raises(AblateError, match="does not exist"):
        read_state_dict(tmp_path / "nope.safetensors")


def test_sha256_file(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"frozen base" * 1000)
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def _hf_clip_vision_config():
    from transformers import CLIPVisionConfig

    # the CLIP twin's shape in transformers' terms: width 32, 2 layers, 2 heads, patch 14
    return CLIPVisionConfig(hidden_size=32, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=2, image_size=64, patch_size=14,
                            hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=16)


@pytest.mark.parametrize("whole", [False, True], ids=["CLIPVisionModel", "CLIPModel"])
def test_transformers_clip_equals_its_own_forward_in_the_timm_twin(whole, tmp_path):
    """The Hugging Face transformers layout (what Effort loads) renamed for timm: the twin
    then computes what transformers' own CLIP vision model computes."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionModel

    torch.manual_seed(0)
    vision_cfg = _hf_clip_vision_config()
    if whole:  # text tower, projections and logit_scale in the file too
        text = CLIPTextConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                              num_attention_heads=2)
        clip = CLIPModel(CLIPConfig(vision_config=vision_cfg.to_dict(),
                                    text_config=text.to_dict(), projection_dim=16)).eval()
        state, vision = clip.state_dict(), clip.vision_model
    else:
        model = CLIPVisionModel(vision_cfg).eval()
        state, vision = model.state_dict(), model
    assert any(k.endswith("embeddings.class_embedding") for k in state)
    path = save(state, tmp_path / "hf_clip.safetensors")
    twin = timm.create_model("vit_large_patch14_clip_quickgelu_224", pretrained=False,
                             num_classes=0, img_size=64, embed_dim=32, depth=2,
                             num_heads=2).eval()
    load_encoder_weights(twin, path, preset="tiny-clip")
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = vision(pixel_values=images)
        post_ln = getattr(vision, "post_layernorm", None) or vision.vision_model.post_layernorm
        tokens = twin.forward_features(images)  # [B, 1 + 16, 32], final norm applied
        torch.testing.assert_close(tokens[:, 0], out.pooler_output, rtol=0, atol=1e-5)
        torch.testing.assert_close(tokens[:, 1:], post_ln(out.last_hidden_state[:, 1:]),
                                   rtol=0, atol=1e-5)


def test_transformers_clip_given_to_a_dino_encoder_is_one_line(tmp_path):
    from transformers import CLIPVisionModel

    path = save(CLIPVisionModel(_hf_clip_vision_config()).state_dict(), tmp_path / "hf.safetensors")
    with pytest.raises(AblateError) as err:
        load_encoder_weights(twin("dinov2"), path, preset="dinov2_b")
    assert "\n" not in str(err.value) and "dinov2_b" in str(err.value)
