"""Encoder tuning modes: exactly the right parameters train, frozen tensors never move, the SVD
split is exact and its losses are Effort's, and LoRA is PEFT's own."""

import copy

import numpy as np
import peft
import pytest
import timm
import torch
from torch import nn

from ablate.core.errors import AblateError
from ablate.model.svd_residual import SVDResidualLinear
from ablate.model.tuning import (
    MODES,
    Tuning,
    apply_tuning,
    constraint_losses,
    freeze_batchnorm_stats,
    trainable_names,
)

TWIN = dict(pretrained=False, num_classes=0, img_size=64, embed_dim=32, depth=2, num_heads=2)


def twin(model_name: str = "vit_base_patch16_clip_224", **kw) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(model_name, **{**TWIN, **kw})


def images(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


# Tiny CLIP twin, C = 32, depth 2: qkv [96, 32] + 96, proj [32, 32] + 32, fc1 [128, 32] + 128,
# fc2 [32, 128] + 32, six LayerNorms (norm_pre, 2 x norm1/norm2, norm) of 32 + 32.
EXPECTED = {
    "linear": ([], 0),
    # 6 LayerNorms x (32 + 32) = 384
    "layernorm": (["norm_pre.weight", "norm_pre.bias", "blocks.0.norm1.weight", "blocks.0.norm1.bias",
                   "blocks.0.norm2.weight", "blocks.0.norm2.bias", "blocks.1.norm1.weight",
                   "blocks.1.norm1.bias", "blocks.1.norm2.weight", "blocks.1.norm2.bias",
                   "norm.weight", "norm.bias"], 384),
    # norm_pre 32 + 2 x (norm1 32 + qkv 96 + proj 32 + norm2 32 + fc1 128 + fc2 32) + norm 32 = 768
    "bias": (["norm_pre.bias", "blocks.0.norm1.bias", "blocks.0.attn.qkv.bias",
              "blocks.0.attn.proj.bias", "blocks.0.norm2.bias", "blocks.0.mlp.fc1.bias",
              "blocks.0.mlp.fc2.bias", "blocks.1.norm1.bias", "blocks.1.attn.qkv.bias",
              "blocks.1.attn.proj.bias", "blocks.1.norm2.bias", "blocks.1.mlp.fc1.bias",
              "blocks.1.mlp.fc2.bias", "norm.bias"], 768),
    # r = 8: qkv A [8, 32] 256 + B [96, 8] 768, proj A [8, 32] 256 + B [32, 8] 256 -> 1536 x 2 = 3072
    "lora": (["blocks.0.attn.qkv.lora_A.default.weight", "blocks.0.attn.qkv.lora_B.default.weight",
              "blocks.0.attn.proj.lora_A.default.weight", "blocks.0.attn.proj.lora_B.default.weight",
              "blocks.1.attn.qkv.lora_A.default.weight", "blocks.1.attn.qkv.lora_B.default.weight",
              "blocks.1.attn.proj.lora_A.default.weight", "blocks.1.attn.proj.lora_B.default.weight"],
             3072),
    # r = 31 of n = 32, k = 1: qkv 3 blocks x (32 + 1 + 32) = 195, proj 65 -> 260 x 2 = 520
    "svd": (["blocks.0.attn.qkv.U_residual", "blocks.0.attn.qkv.S_residual",
             "blocks.0.attn.qkv.V_residual", "blocks.0.attn.proj.U_residual",
             "blocks.0.attn.proj.S_residual", "blocks.0.attn.proj.V_residual",
             "blocks.1.attn.qkv.U_residual", "blocks.1.attn.qkv.S_residual",
             "blocks.1.attn.qkv.V_residual", "blocks.1.attn.proj.U_residual",
             "blocks.1.attn.proj.S_residual", "blocks.1.attn.proj.V_residual"], 520),
    # cls 32 + pos 17 x 32 = 544 + patch 32 x 3 x 16 x 16 = 24576 (no bias) + norm_pre, norm 128
    # + 2 x (LNs 128 + qkv 3168 + proj 1056 + fc1 4224 + fc2 4128 = 12704) = 50688
    "full": (["cls_token", "pos_embed", "patch_embed.proj.weight", "norm_pre.weight",
              "norm_pre.bias", "norm.weight", "norm.bias", "blocks.0.norm1.weight",
              "blocks.0.norm1.bias", "blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias",
              "blocks.0.attn.proj.weight", "blocks.0.attn.proj.bias", "blocks.0.norm2.weight",
              "blocks.0.norm2.bias", "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc1.bias",
              "blocks.0.mlp.fc2.weight", "blocks.0.mlp.fc2.bias", "blocks.1.norm1.weight",
              "blocks.1.norm1.bias", "blocks.1.attn.qkv.weight", "blocks.1.attn.qkv.bias",
              "blocks.1.attn.proj.weight", "blocks.1.attn.proj.bias", "blocks.1.norm2.weight",
              "blocks.1.norm2.bias", "blocks.1.mlp.fc1.weight", "blocks.1.mlp.fc1.bias",
              "blocks.1.mlp.fc2.weight", "blocks.1.mlp.fc2.bias"], 50688),
}


def trainable_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_trains_exactly_its_hand_listed_parameters(mode):
    model = twin()
    apply_tuning(model, Tuning(mode=mode))
    names, count = EXPECTED[mode]
    assert trainable_names(model) == sorted(names)
    assert trainable_count(model) == count


def test_svd_rank_sets_the_residual_size():
    model = twin()
    apply_tuning(model, Tuning(mode="svd", svd_rank=28))
    # k = 4: qkv 3 x (32 x 4 + 4 + 4 x 32) = 780, proj 260 -> 1040 x 2 = 2080
    assert trainable_count(model) == 2080


def test_layernorm_on_dinov2_with_register_tokens():
    model = twin("vit_large_patch14_dinov2", img_size=56, reg_tokens=4)
    apply_tuning(model, Tuning(mode="layernorm"))
    # no norm_pre; cls/reg tokens and LayerScale gammas stay frozen: 5 LayerNorms x 64 = 320
    assert trainable_names(model) == sorted([
        "blocks.0.norm1.weight", "blocks.0.norm1.bias", "blocks.0.norm2.weight", "blocks.0.norm2.bias",
        "blocks.1.norm1.weight", "blocks.1.norm1.bias", "blocks.1.norm2.weight", "blocks.1.norm2.bias",
        "norm.weight", "norm.bias"])
    assert trainable_count(model) == 320


def test_full_leaves_the_module_exactly_as_it_was():
    model, before = twin(), twin().state_dict()  # same seed, same weights
    model.requires_grad_(False)
    apply_tuning(model, Tuning(mode="full"))
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert all(p.requires_grad for p in model.parameters())


def train_a_few_steps(model: nn.Module, x: torch.Tensor, width: int) -> dict[str, torch.Tensor]:
    """3 AdamW steps of a linear head on the encoder, CE only (as Effort's released code), so a
    trained tensor moves only if the forward uses it; the state before them."""
    head = nn.Linear(width, 2)
    before = copy.deepcopy(model.state_dict())
    opt = torch.optim.AdamW([*head.parameters(), *(p for p in model.parameters() if p.requires_grad)],
                            lr=1e-2)
    for _ in range(3):
        feats = model(x)  # [B, width]
        loss = nn.functional.cross_entropy(head(feats), torch.tensor([0, 1]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return before


def assert_only_trainables_moved(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    trained = set(trainable_names(model))
    for key, value in model.state_dict().items():
        if key in trained:
            assert not torch.equal(value, before[key]), f"{key} trains but did not change"
        else:
            assert torch.equal(value, before[key]), f"{key} is frozen but changed"


@pytest.mark.parametrize("mode", [m for m in MODES if m != "full"])
def test_frozen_tensors_stay_bit_identical_while_trained_ones_move(mode):
    model = twin()
    apply_tuning(model, Tuning(mode=mode))
    model.train()
    freeze_batchnorm_stats(model)
    assert_only_trainables_moved(model, train_a_few_steps(model, images(), 32))


def test_bitfit_cnn_keeps_its_batchnorm_running_stats_and_full_moves_them():
    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
    apply_tuning(model, Tuning(mode="bias"))
    model.train()
    freeze_batchnorm_stats(model)
    before = train_a_few_steps(model, images(), model.num_features)
    assert any(k.endswith("running_mean") for k in before)
    assert_only_trainables_moved(model, before)  # running stats are frozen tensors too
    apply_tuning(model, Tuning(mode="full"))
    model.train()
    freeze_batchnorm_stats(model)
    assert all(m.training for m in model.modules())  # a fully trained CNN keeps learning its stats


class Layer(nn.Module):
    """A transformer-like layer of plain Linears: fused qkv, square proj, wide and tall MLP."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.attn = nn.Module()
        self.attn.qkv, self.attn.proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c, bias=False)
        for p in self.parameters():
            nn.init.normal_(p)  # unit scale: a loose tolerance would show


ALL_LINEARS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


@pytest.mark.parametrize("rank", [None, 5])
def test_svd_split_reconstructs_every_weight(rank):
    layer = Layer(8)
    original = copy.deepcopy(layer)
    apply_tuning(layer, Tuning(mode="svd", svd_rank=rank, svd_targets=ALL_LINEARS))
    for name in ALL_LINEARS:
        new, old = layer.get_submodule(name), original.get_submodule(name)
        assert isinstance(new, SVDResidualLinear) and not new.weight_main.requires_grad
        w = old.weight.detach().double().numpy()  # [out, in]
        residual = new.residual().reshape(w.shape)
        torch.testing.assert_close(new.weight_main + residual, old.weight, rtol=0, atol=1e-5)
        xin = torch.randn(4, old.in_features)
        torch.testing.assert_close(new(xin), old(xin), rtol=1e-5, atol=1e-5)
        blocks = 3 if name == "attn.qkv" else 1
        assert new.blocks == blocks
        for main, block in zip(new.weight_main.detach().double().numpy().reshape(blocks, -1, w.shape[1]),
                               w.reshape(blocks, -1, w.shape[1]), strict=True):
            u, s, vh = np.linalg.svd(block, full_matrices=False)
            r = min(block.shape) - 1 if rank is None else rank
            np.testing.assert_allclose(main, (u[:, :r] * s[:r]) @ vh[:r], atol=1e-5)  # per block
    assert not {"U_r", "V_r", "weight_norm_sq"} & {k.split(".")[-1] for k in layer.state_dict()}


def test_svd_trainable_count_of_vit_large_is_efforts():
    with torch.device("meta"):  # shapes only: 96 SVDs of 1024 x 1024 would take minutes on CPU
        model = timm.create_model("vit_large_patch14_clip_224", pretrained=False, num_classes=0,
                                  img_size=28)
        apply_tuning(model, Tuning(mode="svd"))
    # q, k, v, out per layer x (1024 + 1 + 1024) x 24 layers = 196,704 (Effort, CLIP ViT-L/14)
    assert trainable_count(model) == 4 * (1024 + 1 + 1024) * 24 == 196_704


def test_svd_follows_an_attention_that_reads_qkv_weight_directly():
    model = twin("vit_large_patch16_dinov3_qkvb", depth=1)  # Eva: F.linear(x, qkv.weight, q/v bias)
    for p in model.parameters():
        nn.init.normal_(p, std=0.2)
    original = copy.deepcopy(model)
    apply_tuning(model, Tuning(mode="svd"))
    x = images()
    torch.testing.assert_close(model.forward_features(x), original.forward_features(x),
                               rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        model.blocks[0].attn.qkv.S_residual.add_(1.0)
    assert not torch.allclose(model.forward_features(x), original.forward_features(x), atol=1e-3)


def hand_losses(weights: list[np.ndarray], modules: list[SVDResidualLinear]) -> tuple[float, float]:
    """Effort's constraints in float64 numpy from the ORIGINAL weights' own SVD (signs of singular
    vectors cancel in both losses) and the modules' current residual factors."""
    orth, sing = [], []
    for w, m in zip(weights, modules, strict=True):
        us, ss, vs = (t.detach().double().numpy() for t in (m.U_residual, m.S_residual, m.V_residual))
        for b, block in enumerate(w.reshape(m.blocks, -1, w.shape[1])):
            u, s, vh = np.linalg.svd(block, full_matrices=False)
            r, n = m.rank, len(s)
            u_hat = np.concatenate([u[:, :r], us[b]], axis=1)  # [o, n]
            v_hat = np.concatenate([vh[:r], vs[b]], axis=0)  # [n, in]
            orth.append(np.sum((u_hat.T @ u_hat - np.eye(n)) ** 2)
                        + np.sum((v_hat @ v_hat.T - np.eye(n)) ** 2))
            w_hat = (u[:, :r] * s[:r]) @ vh[:r] + (us[b] * ss[b]) @ vs[b]
            sing.append(abs(np.sum(w_hat ** 2) - np.sum(block ** 2)))
    return float(np.mean(orth)), float(np.mean(sing))


def test_constraint_losses_match_a_hand_computation():
    layer = Layer(6)
    weights = [layer.get_submodule(n).weight.detach().double().numpy() for n in ("attn.qkv", "mlp.fc1")]
    apply_tuning(layer, Tuning(mode="svd", svd_rank=3, svd_targets=("attn.qkv", "mlp.fc1")))
    modules = [layer.attn.qkv, layer.mlp.fc1]  # 3 + 1 blocks
    at_init = constraint_losses(layer)
    assert at_init["orthogonal"].item() < 1e-8
    assert at_init["singular"].item() < 1e-4 * float(np.mean([np.sum(w ** 2) for w in weights]))
    with torch.no_grad():
        for m in modules:
            for p in (m.U_residual, m.S_residual, m.V_residual):
                p.add_(0.3 * torch.randn_like(p))
    losses = constraint_losses(layer)
    orth, sing = hand_losses(weights, modules)
    assert orth > 0.1 and sing > 0.1
    assert losses["orthogonal"].item() == pytest.approx(orth, rel=1e-4)
    assert losses["singular"].item() == pytest.approx(sing, rel=1e-4)
    (losses["orthogonal"] + losses["singular"]).backward()
    for m in modules:
        assert all(p.grad is not None and p.grad.abs().sum() > 0
                   for p in (m.U_residual, m.S_residual, m.V_residual))
        assert m.weight_main.grad is None
    assert constraint_losses(twin()) == {}


def test_lora_is_pefts_own_lora():
    tuning = Tuning(mode="lora", lora_rank=4, lora_alpha=12.0, lora_dropout=0.1,
                    lora_targets=("attn.qkv", "attn.proj", "mlp.fc1"))
    base = twin().eval()
    ours = copy.deepcopy(base)
    apply_tuning(ours, tuning)
    config = peft.LoraConfig(r=4, lora_alpha=12.0, lora_dropout=0.1,
                             target_modules=["attn.qkv", "attn.proj", "mlp.fc1"])
    theirs = peft.get_peft_model(copy.deepcopy(base), config).eval()
    dropout = ours.blocks[0].attn.qkv.lora_dropout["default"]
    assert getattr(dropout, "p", 0.0) == 0.1  # passed on; eval() switches it off for the comparison
    ours.eval()
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), base(x), rtol=0, atol=1e-6)  # lora_B starts at zero
        theirs_params = dict(theirs.named_parameters())
        for name, p in ours.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p) * 0.5)
                theirs_params["base_model.model." + name].copy_(p)
        assert (ours(x) - base(x)).abs().max() > 1e-2
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-6)


def one_line_error(model: nn.Module, tuning: Tuning, setting: str) -> str:
    with pytest.raises(AblateError) as err:
        apply_tuning(model, tuning, "backbone tiny")
    message = str(err.value)
    assert "\n" not in message and setting in message
    return message


def test_bad_settings_are_one_line_errors():
    cnn = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
    msg = one_line_error(cnn, Tuning(mode="layernorm"), "backbone.tuning=layernorm")
    assert "no LayerNorm" in msg and "bias" in msg and "lora" in msg
    msg = one_line_error(twin(), Tuning(mode="lora", lora_targets=("attn.q",)), "backbone.lora_targets")
    assert "attn.qkv, attn.proj, mlp.fc1, mlp.fc2" in msg
    msg = one_line_error(twin(), Tuning(mode="lora", lora_targets=("attn",)), "backbone.lora_targets")
    assert "blocks.0.attn" in msg and "Attention module" in msg  # not PEFT's multi-line dump
    msg = one_line_error(twin(), Tuning(mode="svd", svd_targets=("q",)), "backbone.svd_targets")
    assert "attn.qkv, attn.proj, mlp.fc1, mlp.fc2" in msg
    msg = one_line_error(twin(), Tuning(mode="svd", svd_rank=32), "backbone.svd_rank")
    assert "blocks.0.attn.qkv" in msg and "96x32" in msg and "largest allowed is 31" in msg
    pair = nn.ModuleDict({"a": nn.Linear(16, 16), "b": nn.Linear(4, 16)})  # rank 8 fits a, not b
    msg = one_line_error(pair, Tuning(mode="svd", svd_rank=8, svd_targets=("a", "b")), "svd_rank")
    assert "16x4" in msg and isinstance(pair["a"], nn.Linear)  # every target checked before any swap
    one_line_error(twin(), Tuning(mode="lora", lora_rank=0), "backbone.lora_rank")
    msg = one_line_error(twin(), Tuning(mode="adapters"), "backbone.tuning")
    assert ", ".join(MODES) in msg
    eva = twin("vit_large_patch16_dinov3_qkvb", depth=1)  # LoRA on qkv would be silently bypassed
    assert "attn.qkv.weight directly" in one_line_error(eva, Tuning(mode="lora"), "backbone.lora_targets")
