"""Augmentation presets: what each one does to a uint8 [3, S, S] image, over seeded draws."""

from __future__ import annotations

import math

import pytest
import torch

from ablate.core.errors import AblateError
from ablate.data.augment import PRESETS, build_augment

SIZE = 16


def image(seed: int = 0) -> torch.Tensor:
    """Random colour pixels in [40, 215]: asymmetric, never gray, no zeros, no clipping."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(40, 216, (3, SIZE, SIZE), dtype=torch.uint8, generator=generator)


def draws(name: str, n: int, x: torch.Tensor) -> list[torch.Tensor]:
    torch.manual_seed(0)
    augment = build_augment(name, SIZE)
    return [augment(x) for _ in range(n)]


def gap(a: torch.Tensor, b: torch.Tensor) -> int:
    """Largest per-pixel difference."""
    return int((a.int() - b.int()).abs().max())


def is_gray(out: torch.Tensor) -> bool:
    return bool(torch.equal(out[0], out[1]) and torch.equal(out[1], out[2]))


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_keeps_dtype_shape_and_input(name):
    x = image()
    before = x.clone()
    for out in draws(name, 30, x):
        assert out.dtype == torch.uint8 and out.shape == (3, SIZE, SIZE)
    assert torch.equal(x, before)  # never in place: the input is the frame cache's memory


def test_none_is_identity():
    x = image()
    assert all(torch.equal(out, x) for out in draws("none", 10, x))


def test_flip_gives_both_orientations_and_nothing_else():
    x = image()
    outs = draws("flip", 40, x)
    flipped = [torch.equal(out, x.flip(-1)) for out in outs]
    kept = [torch.equal(out, x) for out in outs]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 10 <= sum(flipped) <= 30


def test_draws_come_from_torch_global_rng():
    x = image()
    augment = build_augment("code", SIZE)
    torch.manual_seed(3)
    first = [augment(x) for _ in range(5)]
    torch.manual_seed(3)
    again = [augment(x) for _ in range(5)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(first[0], out) for out in first[1:])


def test_paper_zeroes_one_rectangle_sometimes():
    x = image()
    erased = 0
    for out in draws("paper", 100, x):
        hole = (out == 0).all(0)  # [S, S]: the cutout (x itself has no zeros)
        base = x if torch.equal(out[:, ~hole], x[:, ~hole]) else x.flip(-1)
        assert torch.equal(out[:, ~hole], base[:, ~hole])  # outside the hole: flip or not only
        if hole.any():
            rows, cols = hole.any(1).nonzero(), hole.any(0).nonzero()
            box = hole[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
            assert box.all()  # one solid rectangle
            erased += 1
    assert 30 <= erased <= 70  # p=0.5


def test_code_rotates_crops_and_grays():
    x = image()
    outs = draws("code", 600, x)
    gray = [out for out in outs if is_gray(out)]
    colour = [out for out in outs if not is_gray(out)]
    geometric = [out for out in colour if min(gap(out, x), gap(out, x.flip(-1))) > 60]
    rotated = [out for out in geometric if (out == 0).all(0).any()]  # black corners (x has no 0)
    assert 0.04 <= len(gray) / len(outs) <= 0.16  # ToGray p=0.1 (noise after it breaks R=G=B)
    assert 0.55 <= len(geometric) / len(colour) <= 0.9  # rotate or crop: 1 - 0.5 * 0.5
    assert len(rotated) >= 50 and len(geometric) - len(rotated) >= 50  # crop-only ones too


def test_code_noise_matches_albumentations_default():
    """On a flat colour image geometry leaves the centre exact, so noise alone shows there."""
    x = torch.tensor([90, 128, 170], dtype=torch.uint8)[:, None, None].expand(3, SIZE, SIZE)
    centre = (slice(None), slice(4, 12), slice(4, 12))
    stds = []
    for out in draws("code", 600, x):
        diff = out[centre].float() - x[centre].float()
        if diff.any() and diff.mean((1, 2)).abs().max() < 3:  # noise, not grayscale
            stds.append(float(diff.std()))
    assert 0.04 <= len(stds) / 600 <= 0.16  # GaussNoise p=0.1
    # std in [sqrt(10), sqrt(50)] on the 0-255 scale, drawn per image (so it varies)
    assert math.sqrt(10) - 0.7 <= min(stds) < 4.5 and 6.0 < max(stds) <= math.sqrt(50) + 1.0


@pytest.mark.parametrize("name", ["mixup", "Flip", "", True, False])
def test_unknown_preset_is_a_one_line_error_naming_presets(name):
    with pytest.raises(AblateError, match="none, flip, paper, code") as err:
        build_augment(name, SIZE)
    assert "\n" not in str(err.value) and "use flip / none" in str(err.value)
