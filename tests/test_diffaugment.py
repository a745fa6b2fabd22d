"""DAPT's DiffAugment (S and M) as a per-step device op: the formulas with DAPT's constants,
seeded draws, and the parse-time refusal against cached teacher outputs."""
from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from trainables.distill.params import DistillParams
from trainables.training import diffaugment as da
from trainables.training.batch_augment import batch_augment_of


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_color_follows_brightness_saturation_contrast_with_dapt_constants():
    x = torch.randn(4, 3, 8, 8)
    g = gen(5)
    b, s, c = (torch.rand(4, 1, 1, 1, generator=g) for _ in range(3))
    expect = x + (b - 0.5) * 1.0
    m = expect.mean(1, keepdim=True)
    expect = (expect - m) * (s * 2.0) + m
    m = expect.mean((1, 2, 3), keepdim=True)
    expect = (expect - m) * (c + 0.5) + m
    assert torch.allclose(da._color(x, gen(5)), expect, atol=1e-6)


def shifted(img, dy, dx):
    """``img`` moved so output pixel (i, j) reads input (i + dy, j + dx), zeros from outside."""
    out = torch.zeros_like(img)
    h, w = img.shape[-2:]
    for i in range(h):
        for j in range(w):
            if 0 <= i + dy < h and 0 <= j + dx < w:
                out[..., i, j] = img[..., i + dy, j + dx]
    return out


def test_translation_moves_by_at_most_an_eighth_and_shifts_in_zeros():
    x = torch.randn(1, 2, 8, 8).repeat(40, 1, 1, 1)
    y = da._shift(x, gen(0))
    seen = set()
    for img in y:
        match = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if torch.equal(img, shifted(x[0], dy, dx))]
        assert len(match) == 1
        seen.add(match[0])
    assert len(seen) > 4  # shifts are drawn per image


def test_cutout_zeroes_a_half_side_square_at_most():
    x = torch.ones(32, 3, 16, 16)
    y = da._cutout(x, gen(0))
    zeros = (y[:, 0] == 0).sum(dim=(1, 2))
    assert zeros.max() == 64 and zeros.min() >= 16  # 8x8 inside, clipped at the border
    assert torch.equal(y[:, 0], y[:, 2])  # the same hole on every channel


def test_rotate_and_scale_keep_shape_and_identity_at_zero():
    x = torch.randn(5, 3, 12, 12)
    assert da._rotate(x, gen(0)).shape == x.shape and da._scale(x, gen(0)).shape == x.shape
    eye = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(5, 2, 3)
    assert torch.allclose(da._affine(x, eye), x, atol=1e-5)


def test_mode_s_applies_one_op_per_batch_mode_m_all_and_both_are_seeded():
    x = torch.randn(8, 3, 8, 8)
    s1, s2 = da.DiffAugment("S", "flip_cutout", seed=3), da.DiffAugment("S", "flip_cutout", seed=3)
    assert all(torch.equal(s1(x), s2(x)) for _ in range(5))
    single = da.DiffAugment("S", "cutout", seed=0)(x)
    assert ((single == 0).float().mean() > 0.1) and torch.equal(single[single != 0], x[single != 0])
    m = da.DiffAugment("M", seed=0)(x)
    assert m.shape == x.shape and not torch.equal(m, x)
    with pytest.raises(ValueError, match="unknown DiffAugment op 'translate'"):
        da.parse_strategy("color_translate")


def test_recipe_option_runs_in_the_batch_augment_and_is_refused_with_cached_teacher_outputs():
    p = DistillParams.model_validate({"diffaugment": "M", "teacher_mode": "online"})
    aug = batch_augment_of(p, (0.0,), (1.0,), 10, seed=0)
    assert aug.active
    x, y = aug(torch.randn(4, 1, 8, 8), torch.arange(4))
    assert x.shape == (4, 1, 8, 8) and torch.equal(y, torch.arange(4))
    with pytest.raises(ValidationError, match="teacher_mode: diffaugment draws new random ops every step"):
        DistillParams.model_validate({"diffaugment": "S"})
    with pytest.raises(ValidationError, match="diffaugment_strategy"):
        DistillParams.model_validate({"diffaugment": "S", "teacher_mode": "online", "diffaugment_strategy": "zoom"})


def test_teacher_cache_keys_without_diffaugment_stay_as_before():
    from trainables.distill.teacher import TeacherRecipe, recipe_fields

    assert not any(k.startswith("diffaugment") for k in recipe_fields(TeacherRecipe()))
    with_it = recipe_fields(TeacherRecipe(diffaugment="M"))
    assert with_it["diffaugment"] == "M" and with_it["diffaugment_strategy"] == da.DAPT_STRATEGY
