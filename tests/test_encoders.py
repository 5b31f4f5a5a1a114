"""The encoder presets and twins in a detector: feature taps against timm computed
independently, frozen encoders under guidance, runs that store only what trained, and the
2025 detectors' loss terms against hand computations."""

import copy
import hashlib

import numpy as np
import pytest
import timm
import torch
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from timm.data import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    IMAGENET_INCEPTION_MEAN,
    IMAGENET_INCEPTION_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
)

from ablate.checkpoint import BASE_SHA, INFERENCE, load_classifier
from ablate.core.errors import AblateError
from ablate.model.build import build_classifier, build_detector
from ablate.model.detector import alignment, uniformity
from ablate.recipe import compose
from ablate.train import make_optimizer, train, train_step
from tests.conftest import fixed_batch

CPU = ["train.device=cpu"]
# twin -> (mean, std it normalises with, prefix tokens: class + registers), by hand
TWINS = {
    "tiny-clip": (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, 1),
    "tiny-dinov2": (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, 1 + 4),
    "tiny-dinov3": (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, 1 + 4),
    "tiny-pe": (IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD, 1),  # PE: 0.5 / 0.5
}


def _normalised(images, mean, std):
    """[-1, 1] images as the pretrained model wants them, computed here from timm's constants."""
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return ((images + 1) / 2 - m) / s


def _grid(tokens, prefix):
    """[B, prefix + h*w, C] -> [B, C, h, w], the patch tokens only."""
    patches = tokens[:, prefix:]
    b, n, c = patches.shape
    side = int(n**0.5)
    assert side * side == n
    return patches.transpose(1, 2).reshape(b, c, side, side)


@pytest.mark.parametrize("twin", sorted(TWINS))
def test_taps_equal_timm_forward_features_and_head(twin):
    mean, std, prefix = TWINS[twin]
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    clf = build_classifier(compose([*CPU, f"backbone={twin}", "backbone.pool=cls"])).eval()
    model = clf.backbone.model
    with torch.no_grad():
        tokens = model.forward_features(_normalised(images, mean, std))  # [B, N, C]
        grid, token = clf.encode(images)
    assert model.num_prefix_tokens == prefix
    assert grid.shape == (2, 32, 4, 4)  # 64 px / patch 14 or 16 -> 4 x 4; no prefix token
    torch.testing.assert_close(grid, _grid(tokens, prefix), rtol=0, atol=1e-6)
    torch.testing.assert_close(token, tokens[:, 0], rtol=0, atol=1e-6)
    if model.global_pool == "token":  # CLIP: timm's own pooled feature is the class token
        with torch.no_grad():
            torch.testing.assert_close(token, model.forward_head(tokens, pre_logits=True))
    clf_mean = build_classifier(compose([*CPU, f"backbone={twin}", "backbone.pool=mean"]))
    clf_mean.load_state_dict(clf.state_dict())
    with torch.no_grad():
        grid_m, token_m = clf_mean.eval().encode(images)
        pooled = clf_mean.pooled(grid_m, token_m)
    assert token_m is None
    torch.testing.assert_close(pooled, tokens[:, prefix:].mean(1), rtol=0, atol=1e-6)
    if model.global_pool == "avg":  # DINOv3: timm's pooled feature is the patch mean
        with torch.no_grad():
            torch.testing.assert_close(pooled, model.forward_head(tokens, pre_logits=True))


def test_taps_of_several_blocks_are_their_normed_patch_tokens_concatenated():
    mean, std, prefix = TWINS["tiny-dinov2"]
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    clf = build_classifier(compose([*CPU, "backbone=tiny-dinov2", "backbone.taps=[0,-1]",
                                    "backbone.pool=mean"]))
    model = clf.backbone.model.eval()
    seen = []
    model.blocks[0].register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.no_grad():
        last = model.forward_features(_normalised(images, mean, std))
        first = model.norm(seen[0])  # block 0's tokens through the final norm
        grid, token = clf.eval().encode(images)
    assert clf.backbone.num_features == 64 and clf.head.in_features == 64  # 2 taps x 32
    expected = torch.cat([_grid(first, prefix), _grid(last, prefix)], dim=1)  # [B, 64, 4, 4]
    torch.testing.assert_close(grid, expected, rtol=0, atol=1e-5)
    assert token is None


@pytest.mark.parametrize("mode", ["linear", "layernorm"])
def test_guided_run_with_a_frozen_encoder_trains_everything_else(mode, tiny_teachers):
    cfg = compose([*CPU, "backbone=tiny-clip", f"backbone.tuning={mode}", "train.lr=1e-2"])
    det = build_detector(cfg, teacher=tiny_teachers[cfg.teacher.name])
    before = copy.deepcopy(det.state_dict())
    opt = make_optimizer(cfg, [p for p in det.parameters() if p.requires_grad])
    for _ in range(2):
        train_step(det, fixed_batch(), opt, torch.device("cpu"), 1.0)
    after = det.state_dict()
    moved = {k for k in after if not torch.equal(after[k], before[k])}
    encoder = {k for k in after if k.startswith("classifier.backbone.")}
    norms = {k for k in encoder if ".norm" in k}  # norm_pre, blocks.N.norm1/2, norm
    assert moved & encoder == (set() if mode == "linear" else norms)
    for part in ("classifier.head.", "filter_source.", "filter_target.", "weight_source.",
                 "weight_target.", "guide."):
        assert any(k.startswith(part) for k in moved), part
    assert not any(k.startswith("teacher.") for k in moved)


def test_linear_encoder_keeps_no_graph_and_stays_in_eval():
    clf = build_classifier(compose([*CPU, "backbone=tiny-clip", "backbone.tuning=linear"]))
    clf.train()
    assert clf.training and not clf.backbone.training
    grid, token = clf.encode(torch.zeros(2, 3, 64, 64))
    assert not grid.requires_grad and not token.requires_grad  # [B, C] class token
    assert clf.logits(grid, token).requires_grad  # the head still trains


def _run(tmp_path, base, *extra):
    cfg = compose([*CPU, "backbone=tiny-clip", f"backbone.pretrained_path={base}",
                   "guide=none", "image_size=64", "train=cpu", "train.steps=3",
                   "train.batch_size=4", "train.eval_every=0", "data.train=synth-blend",
                   "data.tests=[synth-colour]", f"run.out_dir={tmp_path / 'runs'}", *extra])
    return train(cfg, progress=False).folder


@pytest.mark.slow  # trains twice
def test_a_partly_trained_run_stores_what_trained_and_needs_its_own_base(tmp_path):
    twin = timm.create_model("vit_large_patch14_clip_quickgelu_224", pretrained=False,
                             num_classes=0, img_size=64, embed_dim=32, depth=2, num_heads=2)
    base = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in twin.state_dict().items()}, str(base))
    folder = _run(tmp_path, base, "backbone.tuning=lora")
    stored = load_file(str(folder / INFERENCE))
    with safe_open(str(folder / INFERENCE), framework="pt") as handle:
        assert handle.metadata()[BASE_SHA] == hashlib.sha256(base.read_bytes()).hexdigest()
    # LoRA on attn.qkv and attn.proj of 2 blocks: A and B of each, and the head
    assert sorted(stored) == sorted(
        [f"backbone.model.blocks.{i}.attn.{m}.lora_{ab}.default.weight"
         for i in range(2) for m in ("qkv", "proj") for ab in "AB"]
        + ["head.weight", "head.bias"])
    clf, _ = load_classifier(folder)
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        reloaded = clf(images)
    # the same scores as the full model rebuilt from the base plus the stored tensors
    full = build_classifier(OmegaConf.load(folder / "recipe.yaml"))
    full.load_state_dict(stored, strict=False)
    with torch.no_grad():
        torch.testing.assert_close(reloaded, full.eval()(images))

    save_file({k: v.contiguous() + 1e-3 for k, v in twin.state_dict().items()}, str(base))
    with pytest.raises(AblateError, match=r"trained on an encoder file with sha256 .* put the "
                                          r"original file back"):
        load_classifier(folder)
    base.unlink()
    with pytest.raises(AblateError, match="stores only what backbone.tuning=lora trained"):
        load_classifier(folder)



def test_a_full_run_or_random_base_stores_everything(tmp_path):
    """A random-init twin has no file to come back from: its run stores every tensor."""
    clf = build_classifier(compose([*CPU, "backbone=tiny-clip", "backbone.tuning=layernorm"]))
    assert clf.frozen_base_keys() == set()


def test_uniformity_and_alignment_equal_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(5, 4, generator=g), dim=1)
    labels = torch.tensor([0, 1, 0, 1, 1])
    f = feats.double().numpy()
    sq = [[float(((f[i] - f[j]) ** 2).sum()) for j in range(5)] for i in range(5)]
    pairs = [(i, j) for i in range(5) for j in range(5) if i != j]
    hand_uniform = np.log(np.mean([np.exp(-2 * sq[i][j]) for i, j in pairs]))
    same = [(i, j) for i in range(5) for j in range(i + 1, 5) if labels[i] == labels[j]]
    hand_align = np.mean([sq[i][j] for i, j in same])  # 4 pairs: (0,2), (1,3), (1,4), (3,4)
    assert len(same) == 4
    assert uniformity(feats).item() == pytest.approx(hand_uniform, abs=1e-5)
    assert alignment(feats, labels).item() == pytest.approx(hand_align, abs=1e-5)
    assert alignment(feats[:2], labels[:2]).item() == 0.0  # no two share a label


def test_recipes_set_the_published_settings_and_keep_a_twin():
    gend = compose([*CPU, "recipe=gend", "backbone=tiny-clip"])
    assert (gend.backbone.name, gend.backbone.tuning, gend.backbone.pool) == (
        "tiny-clip", "layernorm", "cls")
    assert gend.backbone.l2_normalize and gend.guide.name == "none"
    assert (gend.loss.uniformity, gend.loss.alignment, gend.train.lr) == (0.5, 0.1, 3.0e-4)
    effort = compose([*CPU, "recipe=effort", "backbone=tiny-clip", "guide=controlnet"])
    assert (effort.backbone.tuning, effort.train.optimizer, effort.train.lr) == (
        "svd", "adam", 2.0e-5)
    assert effort.guide.name == "controlnet"


@pytest.mark.parametrize(("overrides", "message"), [
    (["backbone=tiny", "backbone.tuning=layernorm"], "has no LayerNorm"),
    (["backbone=tiny-clip", "backbone.tuning=lora", "backbone.lora_targets=[attn.qkvz]"],
     "matches no module .* attn.qkv, attn.proj, mlp.fc1, mlp.fc2"),
    (["backbone=tiny-clip", "backbone.tuning=svd", "backbone.svd_rank=32"],
     "backbone.svd_rank=32 does not fit .* the largest allowed is 31"),
    (["backbone=tiny", "backbone.pool=cls"], "backbone.pool=cls needs a ViT with a class token"),
    (["backbone=tiny-clip", "backbone.taps=[5]"], "has 2 blocks; give indices from -2 to 1"),
    (["backbone=tiny", "backbone.taps=[-1]"], "is not a ViT: leave backbone.taps=null"),
])
def test_bad_encoder_settings_are_one_line(overrides, message):
    with pytest.raises(AblateError, match=message) as err:
        build_classifier(compose([*CPU, *overrides]))
    assert "\n" not in str(err.value)


def test_grad_checkpointing_reaches_the_vit_blocks_and_changes_no_gradient():
    from ablate.model.speed import Speed, configure_classifier

    cfg = compose([*CPU, "backbone=tiny-clip", "backbone.tuning=layernorm"])
    plain = build_classifier(cfg)
    ckpt = copy.deepcopy(plain)
    configure_classifier(ckpt, Speed(grad_checkpointing=True))
    assert ckpt.backbone.model.grad_checkpointing and not plain.backbone.model.grad_checkpointing
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    grads = []
    for clf in (plain, ckpt):
        clf.train()
        clf(images).sum().backward()
        grads.append({n: p.grad for n, p in clf.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-6)


def test_sequence_settings_at_their_default_leave_the_hash_alone():
    from ablate.recipe import recipe_hash

    base = compose([*CPU, "backbone=tiny-clip"])
    same = compose([*CPU, "backbone=tiny-clip", "backbone.lora_targets=[attn.qkv,attn.proj]",
                    "backbone.svd_targets=[attn.qkv,attn.proj]"])
    other = compose([*CPU, "backbone=tiny-clip", "backbone.lora_targets=[attn.qkv]"])
    assert recipe_hash(same) == recipe_hash(base) != recipe_hash(other)


def test_checkpointing_leaves_a_cnn_encoder_alone_and_pe_keeps_no_unused_pool():
    from ablate.model.speed import Speed, configure_classifier

    cnn = build_classifier(compose([*CPU, "backbone=tiny"]))
    configure_classifier(cnn, Speed(grad_checkpointing=True))
    assert not cnn.backbone.model.grad_checkpointing  # BatchNorm would run twice a step
    pe = build_classifier(compose([*CPU, "backbone=tiny-pe"]))
    assert not any("attn_pool" in k for k in pe.state_dict())  # the head never reads it


def test_resume_refuses_a_state_saved_on_another_encoder_file(tmp_path, tiny_teachers):
    from ablate.train import resume
    from ablate.train_state import TrainState

    twin = timm.create_model("vit_large_patch14_clip_quickgelu_224", pretrained=False,
                             num_classes=0, img_size=64, embed_dim=32, depth=2, num_heads=2)
    base = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in twin.state_dict().items()}, str(base))
    cfg = compose([*CPU, "backbone=tiny-clip", f"backbone.pretrained_path={base}",
                   "backbone.tuning=lora", "guide=none"])
    det = build_detector(cfg)
    opt = make_optimizer(cfg, [p for p in det.parameters() if p.requires_grad])
    state = TrainState(3, 10, det.trainable_state_dict(), opt.state_dict(),
                       encoder_base_sha256="0" * 64)
    with pytest.raises(AblateError, match="resume on the file it was saved on"):
        resume(state, det, opt, None, 10)
    own = hashlib.sha256(base.read_bytes()).hexdigest()
    state = TrainState(3, 10, det.trainable_state_dict(), opt.state_dict(),
                       encoder_base_sha256=own)

    class Selector:  # what resume sets on the selector
        best_state = selection = None

    resume(state, det, opt, Selector(), 10)  # its own file: accepted
