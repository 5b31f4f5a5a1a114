"""`train.optimizer=adamw8bit`: bitsandbytes' 8-bit AdamW as a result setting. Checked against
torch's own AdamW (the update it approximates), and end to end: a run with it resumes
exactly, and without bitsandbytes the setting is one line that says what to install."""

from __future__ import annotations

import sys

import pytest
import torch
from omegaconf import OmegaConf

from ablate.core.errors import AblateError
from ablate.recipe import compose, recipe_hash
from ablate.train import make_optimizer, train
from tests.test_resume import TINY, _assert_same_end, record

pytest.importorskip("bitsandbytes", reason="bitsandbytes (ablate[8bit]) is not installed")

STEPS, LR, DECAY = 20, 1e-2, 0.5


def _trajectory(kind: str, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.optim.Optimizer]:
    """(start, end) of one parameter [n] after STEPS updates on small seeded gradients: the
    decoupled weight decay (AdamW's, not Adam's L2 term) is a large part of the motion."""
    generator = torch.Generator().manual_seed(0)
    param = torch.nn.Parameter(torch.randn(n, generator=generator))
    start = param.detach().clone()
    cfg = OmegaConf.create({"train": {"optimizer": kind, "lr": LR, "weight_decay": DECAY}})
    optimizer = make_optimizer(cfg, [param])
    for _ in range(STEPS):
        param.grad = 0.01 * torch.randn(n, generator=generator)
        optimizer.step()
    return start, param.detach(), optimizer


def test_8bit_adamw_follows_torch_adamw_within_its_quantisation():
    start, ours, optimizer = _trajectory("adamw8bit", 8192)
    _, reference, _ = _trajectory("adamw", 8192)
    moved = (reference - start).abs().mean()
    # blockwise 8-bit moments: the path strays ~1% of how far the weights move
    assert (ours - reference).abs().mean() < 0.03 * moved
    state = next(iter(optimizer.state.values()))
    assert state["state1"].dtype == state["state2"].dtype == torch.uint8  # 2 bytes/param, not 8


def test_small_tensors_keep_exact_fp32_moments():
    """Under 4096 elements (biases, norms) bitsandbytes runs the fp32 update: torch's AdamW."""
    start, ours, _ = _trajectory("adamw8bit", 1000)
    _, reference, _ = _trajectory("adamw", 1000)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)


def test_it_is_a_result_setting():
    assert recipe_hash(compose(["train.optimizer=adamw8bit"])) != recipe_hash(compose([]))


@pytest.mark.slow  # seconds of training or many steps: not in make test-fast
def test_a_run_with_8bit_adamw_resumes_exactly(monkeypatch, tmp_path):
    """Its quantised state (uint8 moments, block maxima) survives the saved training state."""
    cfg = compose([*TINY, "train.steps=4", "train.optimizer=adamw8bit", "backbone=small",
                   f"run.out_dir={tmp_path}"])
    rec_a = record(monkeypatch, tmp_path / "a", last=4)
    a = train(cfg, progress=False, on_eval=rec_a.on_eval, on_checkpoint=rec_a.on_checkpoint)
    rec_b = record(monkeypatch, tmp_path / "b", last=4)
    b = train(cfg, progress=False, on_eval=rec_b.on_eval, resume_from=rec_a.states[2])
    _assert_same_end(a, rec_a, b, rec_b)


def test_without_bitsandbytes_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import now raises ImportError
    cfg = OmegaConf.create({"train": {"optimizer": "adamw8bit", "lr": LR, "weight_decay": 0}})
    with pytest.raises(AblateError, match=r"pip install 'ablate\[8bit\]'"):
        make_optimizer(cfg, [torch.nn.Parameter(torch.zeros(2))])
