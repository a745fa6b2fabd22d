"""timm's AutoAugment / RandAugment config strings drawn per image on the device
(trainables/data/timm_policy.py): each op against timm's own PIL op, each level-to-argument map
against timm's, the per-image drawing (op choice, probability, magnitude noise, weighted choice
without replacement), and the policy in the training recipe."""
import random

import numpy as np
import pytest
import torch
from PIL import Image

import timm.data.auto_augment as timm_aa
from trainables.data.policy import Photometric
from trainables.data.timm_policy import (SUPPORTED_OPS, TimmPolicy, _Table, affine_of, is_timm_config, level_arg,
                                         photometric, warp)
from trainables.runtime.sync_check import SyncCheck
from trainables.training.recipe import AugmentParams

RNG = np.random.default_rng(0)
# A full-range random image and a low-contrast one (where AutoContrast and Equalize do most).
IMAGES = [RNG.integers(0, 256, (13, 17, 3), dtype=np.uint8), RNG.integers(40, 90, (13, 17, 3)).astype(np.uint8)]
FILL = (10, 20, 30)


def timm_op(name, img, arg, resample=Image.BILINEAR):
    """timm's PIL op on one uint8 image, filling with FILL."""
    out = timm_aa.NAME_TO_OP[name](Image.fromarray(img), *(() if arg is None else (arg,)), fillcolor=FILL,
                                   resample=resample)
    return np.asarray(out).astype(np.float32)


def batch_of(img) -> torch.Tensor:
    return torch.tensor(img).permute(2, 0, 1)[None].float()


def hwc(v: torch.Tensor) -> np.ndarray:
    return v[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("name", sorted(n for n in SUPPORTED_OPS if timm_aa.LEVEL_TO_ARG[n] is not None))
@pytest.mark.parametrize("negate", [False, True])
def test_level_to_argument_is_timms(name, negate, monkeypatch):
    # timm negates when random.random() > 0.5; the sign tensor plays that draw.
    monkeypatch.setattr(timm_aa.random, "random", lambda: 0.9 if negate else 0.1)
    mags = np.concatenate([np.linspace(0, 10, 41), RNG.uniform(0, 10, 40)])
    hparams = {"translate_const": 14, "translate_pct": 0.45}
    expected = np.array([timm_aa.LEVEL_TO_ARG[name](float(m), hparams)[0] for m in mags])
    sign = torch.full((len(mags),), -1.0 if negate else 1.0)
    got = level_arg(name, torch.tensor(mags, dtype=torch.float32), sign, translate_const=14).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


PHOTOMETRIC_ARGS = {
    # bits 0 is left out: Pillow now refuses it (timm's posterize would raise); here it gives black
    "Posterize": [1, 2, 3, 4, 5, 8], "Solarize": [0, 50, 128, 200, 256], "SolarizeAdd": [0, 30, 110],
    "Brightness": [0.1, 0.5, 1.0, 1.3, 1.9], "Color": [0.1, 0.5, 1.3, 1.9], "Contrast": [0.1, 0.5, 1.3, 1.9],
    "Sharpness": [0.1, 0.5, 1.3, 1.9], "AutoContrast": [None], "Equalize": [None], "Invert": [None],
}


@pytest.mark.parametrize("name", sorted(PHOTOMETRIC_ARGS))
def test_photometric_ops_equal_timms_pil_ops(name):
    for img in IMAGES:
        for arg in PHOTOMETRIC_ARGS[name]:
            out = photometric(name, batch_of(img), torch.tensor([0.0 if arg is None else float(arg)]))
            np.testing.assert_array_equal(hwc(out), timm_op(name, img, arg), err_msg=f"{name}({arg})")


def test_posterize_to_no_bits_is_black_and_equalize_of_a_flat_channel_keeps_it():
    v = batch_of(IMAGES[0])
    assert photometric("Posterize", v, torch.tensor([0.0])).abs().sum() == 0
    flat = torch.full((1, 3, 5, 5), 77.0)
    assert torch.equal(photometric("Equalize", flat, torch.zeros(1)), flat)
    assert torch.equal(photometric("AutoContrast", flat, torch.zeros(1)), flat)


GEOMETRIC_ARGS = {"Rotate": [-30, -7.3, 12.5, 30], "ShearX": [-0.3, 0.17], "ShearY": [0.3, -0.11],
                  "TranslateXRel": [0.45, -0.2], "TranslateYRel": [-0.45, 0.13], "TranslateX": [5, -3.5],
                  "TranslateY": [4.2]}


@pytest.mark.parametrize("name", sorted(GEOMETRIC_ARGS))
@pytest.mark.parametrize("mode, pil_mode, off_by_one", [("bilinear", Image.BILINEAR, 0.1),
                                                         ("bicubic", Image.BICUBIC, 0.01)])
def test_affine_ops_match_timms_pil_ops_to_one_level(name, mode, pil_mode, off_by_one):
    # The same points read, the same area filled; float rounding differs from PIL's by one level at
    # a few pixels.
    img = IMAGES[0]
    for arg in GEOMETRIC_ARGS[name]:
        v = batch_of(img)
        matrix = affine_of(name, torch.tensor([float(arg)]), v.shape)
        out = hwc(warp(v, matrix, torch.tensor(FILL, dtype=torch.float), mode))
        diff = np.abs(out - timm_op(name, img, arg, pil_mode))
        assert diff.max() <= 1.0 and (diff > 0).mean() < off_by_one, (name, arg, diff.max(), (diff > 0).mean())


def test_random_interpolation_picks_bilinear_or_bicubic_per_image():
    policy = TimmPolicy("original", interpolation="random")
    v = batch_of(IMAGES[0]).expand(2000, -1, -1, -1)
    matrix = affine_of("Rotate", torch.full((2000,), 12.5), v.shape)
    fill = torch.tensor(FILL, dtype=torch.float)
    out = policy._warp(v, matrix, fill, torch.Generator().manual_seed(0))
    cubic = (out == warp(v[:1], matrix[:1], fill, "bicubic")).flatten(1).all(1)
    linear = (out == warp(v[:1], matrix[:1], fill, "bilinear")).flatten(1).all(1)
    assert bool((cubic ^ linear).all()) and abs(cubic.float().mean().item() - 0.5) < 0.05


def test_policy_tables_are_timms():
    policy = TimmPolicy("original-mstd0.5")
    timm_policy = timm_aa.auto_augment_transform("original-mstd0.5", {}).policy
    for i, stage in enumerate(policy.stages):
        assert stage.names == tuple(s[i].name for s in timm_policy)
        assert stage.prob == tuple(s[i].prob for s in timm_policy)
        assert stage.magnitude == tuple(s[i].magnitude for s in timm_policy)
        assert set(stage.magnitude_std) == {0.5}
    rand = TimmPolicy("rand-m9-n3-mstd0.5-inc1")
    assert rand.layers == 3 and rand.weights is None
    assert rand.stages[0].names == tuple(timm_aa._RAND_INCREASING_TRANSFORMS)
    assert set(rand.stages[0].prob) == {0.5} and set(rand.stages[0].magnitude) == {9.0}
    assert is_timm_config("rand-m9-mstd0.5-inc1") and is_timm_config("v0") and not is_timm_config("randaugment")


def low_contrast_batch(n, h=8, w=8):
    img = torch.tensor(IMAGES[1][:h, :w]).permute(2, 0, 1).float() / 255.0
    return img.expand(n, -1, -1, -1).contiguous()


def test_each_image_draws_its_own_ops_and_applies_each_with_its_probability():
    # One image 4096 times: with one op per image at p 0.25, 3/4 of them come out untouched (every op
    # of the set changes this low-contrast image at magnitude 9), and the changed ones differ among
    # themselves far beyond what a batch-wide draw (or 8 groups) could give.
    n = 4096
    x = low_contrast_batch(n)
    out = TimmPolicy("rand-m9-n1-p0.25-inc1")(x, torch.Generator().manual_seed(0))
    changed = (out != x).flatten(1).any(1)
    assert abs(changed.float().mean().item() - 0.25) < 0.03
    assert len(torch.unique(out[changed].flatten(1), dim=0)) > 20
    single = TimmPolicy("rand-m9-n1-p1.0-mstd0-inc1")
    ops = [photometric(name, x[:1] * 255, torch.tensor([0.0]))
           for name in ("Invert", "AutoContrast", "Equalize")]  # the argument-free ops of the set
    out = single(x, torch.Generator().manual_seed(1)) * 255
    share = [(out - op).flatten(1).abs().amax(1).lt(0.01).float().mean().item() for op in ops]
    # 15 ops drawn uniformly per image; SolarizeIncreasing at magnitude 9 folds every level from 26
    # up, all of this image's: it inverts it too.
    expected = [2 / 15, 1 / 15, 1 / 15]
    assert all(abs(s - e) < 0.02 for s, e in zip(share, expected)), share


def test_magnitude_noise_is_timms_per_image_gauss_clipped_to_the_bound():
    # A one-op table (Solarize, magnitude 5, std 2) on a ramp: each image's threshold is where the
    # ramp starts to fold, floor(m / 10 * 256) for its own m ~ N(5, 2) clipped to [0, 10].
    policy = TimmPolicy("rand-m5-n1-p1.0-mstd2")
    policy.stages = [_Table(("Solarize",), (1.0,), (5.0,), (2.0,), (10.0,))]
    ramp = (torch.arange(256.0) / 255.0).view(1, 1, 1, 256).expand(20000, 3, 1, 256)
    out = (policy(ramp, torch.Generator().manual_seed(0)) * 255).round()[:, 0, 0]
    folded = out != torch.arange(256.0)
    threshold = torch.where(folded.any(1), folded.float().argmax(1).float(), torch.full((20000,), 256.0))
    m = np.clip(np.random.default_rng(0).normal(5, 2, 200000), 0, 10)
    expected = np.minimum(256, np.floor(m / 10 * 256))
    assert abs(threshold.mean().item() - expected.mean()) < 2.0
    assert abs(threshold.std().item() - expected.std()) < 2.0


def test_weighted_op_sets_draw_without_replacement_in_proportion():
    policy = TimmPolicy("rand-m9-n2-tweights")
    first, second = policy._rand_choices(40000, len(policy.stages[0].names), torch.device("cpu"),
                                         torch.Generator().manual_seed(0))
    assert not (first == second).any()
    share = torch.bincount(first, minlength=len(policy.weights)).float() / 40000
    np.testing.assert_allclose(share.numpy(), np.array(policy.weights) / sum(policy.weights), atol=0.01)


def test_policy_in_the_recipe_runs_on_normalised_batches_without_host_syncs_and_repeats_with_its_generator():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    photo = Photometric(mean, std, auto_augment="rand-m9-mstd0.5-inc1")
    x = (low_contrast_batch(64, 16, 16) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    photo.apply(x)  # the first call makes the policy's constants on the device, once
    with SyncCheck() as check:
        a = photo.apply(x, torch.Generator().manual_seed(3))
    assert not check.syncs, check.report()
    b = photo.apply(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == x.shape and not torch.equal(a, x)
    # back in the data's normalisation: every value is a 0-255 level of a [0, 1] image
    unit = a * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    assert unit.min() >= -1e-5 and unit.max() <= 1 + 1e-5
    grey = Photometric((0.5,), (0.25,), auto_augment="original-mstd0.5")
    assert grey.apply(torch.zeros(8, 1, 8, 8), torch.Generator().manual_seed(0)).shape == (8, 1, 8, 8)


def test_recipe_accepts_timm_strings_and_keeps_kornias_keys_to_kornias_policies():
    assert AugmentParams(auto_augment="rand-m9-mstd0.5-inc1").auto_augment == "rand-m9-mstd0.5-inc1"
    assert AugmentParams(auto_augment="randaugment", policy_groups=4).policy_groups == 4
    for bad, fragment in [({"auto_augment": "rand-m9-x1"}, "Unknown RandAugment config section"),
                          ({"auto_augment": "3a"}, "unknown policy"),
                          ({"auto_augment": "rand-t3a"}, "Desaturate, GaussianBlur are not run"),
                          ({"auto_augment": "v0", "randaugment_m": 5}, "randaugment_m: applies to kornia"),
                          ({"auto_augment": "randaugment", "policy_interpolation": "bicubic"},
                           "policy_interpolation: applies to timm's policy strings")]:
        with pytest.raises(ValueError, match=fragment):
            AugmentParams(**bad)
    # A recipe travels as a full dump (a teacher's): its default-valued kornia keys pass again.
    for policy in ("original-mstd0.5", "trivialaugment"):
        dumped = AugmentParams(auto_augment=policy).model_dump()
        assert AugmentParams.model_validate(dumped).auto_augment == policy


def test_teacher_cache_keys_of_recipes_without_a_timm_policy_keep_their_keys():
    # policy_interpolation came later and only a timm policy reads it: teachers cached before it
    # (no policy, or kornia's) keep their keys.
    from trainables.distill.teacher import TeacherRecipe, recipe_fields

    assert "policy_interpolation" not in recipe_fields(TeacherRecipe())
    assert "policy_interpolation" not in recipe_fields(TeacherRecipe(auto_augment="randaugment"))
    timm = recipe_fields(TeacherRecipe(auto_augment="original-mstd0.5", policy_interpolation="random"))
    assert timm["policy_interpolation"] == "random" and timm["auto_augment"] == "original-mstd0.5"
