"""The ``dino`` family's dinopl augmentations (crops.augs / per_crop_augs): shapes and range of each
op, per-image randomness, DINO's per-crop probabilities, and the default staying the plain crops."""
from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from trainables.dino.crops import (dino_photometric, dino_settings, multicrop, random_hflip, random_padcrop,
                                   random_resized_crops)
from trainables.dino.params import CropConfig

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _images(n=4, c=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, size, size, generator=g)


def _normalised(x):
    m, s = torch.tensor(MEAN).view(1, -1, 1, 1), torch.tensor(STD).view(1, -1, 1, 1)
    return (x - m) / s


@pytest.mark.parametrize("op", [
    lambda x: random_hflip(x),
    lambda x: random_padcrop(x, 4),
    lambda x: dino_photometric(x, torch.ones(len(x)), torch.ones(len(x))),
    lambda x: dino_photometric(x, torch.full((len(x),), 0.5), torch.full((len(x),), 0.2), blur=False),
])
@pytest.mark.parametrize("channels", [1, 3])
def test_each_op_keeps_shape_and_unit_range(op, channels):
    torch.manual_seed(0)
    x = _images(8, channels)
    y = op(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.min() >= 0.0 and y.max() <= 1.0


def test_padcrop_is_a_shifted_image_with_a_black_border():
    torch.manual_seed(0)
    x = torch.rand(64, 1, 8, 8) * 0.5 + 0.5  # no black pixel inside
    y = random_padcrop(x, 2)
    assert (y == 0).any()  # some offset shows the border
    for i in range(64):  # each crop is the image shifted by at most 2 px, black outside
        found = False
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                shifted = torch.zeros(1, 12, 12)
                shifted[:, 2 + dy:10 + dy, 2 + dx:10 + dx] = x[i]
                found |= torch.equal(shifted[:, 2:10, 2:10], y[i])
        assert found
    assert torch.equal(random_padcrop(x, 0), x)


@pytest.mark.parametrize("op", [
    lambda x: random_padcrop(x, 4),
    lambda x: dino_photometric(x, torch.ones(len(x)), torch.zeros(len(x))),
    lambda x: dino_photometric(x, torch.zeros(len(x)), torch.zeros(len(x)), blur=False),  # jitter / grey
])
def test_randomness_is_per_image(op):
    torch.manual_seed(0)
    copies = _images(1).repeat(16, 1, 1, 1)
    y = op(copies).flatten(1)
    distinct = torch.unique(y, dim=0)
    assert len(distinct) > 4


def test_solarise_only_on_the_second_global_crop_at_its_rate():
    torch.manual_seed(0)
    n = 4000
    x = torch.full((n, 3, 8, 8), 0.9)  # saturation / hue leave grey unchanged; brightness, contrast move it
    counts = []
    for position in (0, 1, 2):
        blur_p, sol_p = dino_settings(n, position, x.device)
        y = dino_photometric(x, blur_p, sol_p, blur=False)
        # brightness 0.4 keeps 0.9 at >= 0.54 (and contrast leaves a flat image); solarised is < 0.5
        counts.append((y.mean((1, 2, 3)) < 0.5).float().mean().item())
    assert counts[0] == 0.0 and counts[2] == 0.0
    assert abs(counts[1] - 0.2) < 0.03


def test_blur_probability_per_crop_position(monkeypatch):
    import trainables.data.blur as blur

    # stands in for the blur: a blurred image comes out all zero
    monkeypatch.setattr(blur, "gaussian_blur", lambda x, sigma, size: torch.zeros_like(x))
    torch.manual_seed(0)
    n = 4000
    x = torch.full((n, 3, 8, 8), 0.8)
    for position, p in zip((0, 1, 2), (1.0, 0.1, 0.5)):
        blur_p, sol_p = dino_settings(n, position, x.device)
        assert torch.all(blur_p == p)
        y = dino_photometric(x, blur_p, torch.zeros(n))
        assert abs((y.amax((1, 2, 3)) == 0).float().mean().item() - p) < 0.03
    y = dino_photometric(x, torch.ones(n), torch.zeros(n), blur=False)  # blur off (small images)
    assert (y.amax((1, 2, 3)) == 0).sum() == 0


def test_random_choice_mixes_the_three_settings():
    torch.manual_seed(0)
    blur_p, sol_p = dino_settings(10000, None, torch.device("cpu"))
    for value, share in zip((1.0, 0.1, 0.5), (0.4, 0.4, 0.2)):
        assert abs((blur_p == value).float().mean().item() - share) < 0.02
    assert torch.all((sol_p > 0) == (blur_p == 0.1))


def test_default_config_gives_exactly_the_old_crops():
    x = _normalised(_images(6))
    cfg = CropConfig(global_crops=2, local_crops=3, local_size=8)
    assert not cfg.augmented and not CropConfig(augs=[], per_crop_augs=[]).augmented
    torch.manual_seed(3)
    new_g, new_l = multicrop(x, cfg, MEAN, STD)
    torch.manual_seed(3)
    old_g = [random_resized_crops(x, 16, cfg.global_scale, True) for _ in range(2)]
    old_l = [random_resized_crops(x, 8, cfg.local_scale, True) for _ in range(3)]
    for a, b in zip(new_g + new_l, old_g + old_l):
        assert torch.equal(a, b)
    torch.manual_seed(3)
    assert all(torch.equal(a, b) for a, b in zip(multicrop(x, cfg)[0], old_g))


def test_augmented_multicrop_shapes_and_renormalisation():
    torch.manual_seed(0)
    x = _normalised(_images(5, size=16))
    cfg = CropConfig(global_crops=2, local_crops=2, local_size=8, augs=["padcrop"],
                     per_crop_augs=["hflip", "dino"], blur_min_size=0)
    g, l = multicrop(x, cfg, MEAN, STD)
    assert [t.shape for t in g] == [(5, 3, 16, 16)] * 2 and [t.shape for t in l] == [(5, 3, 8, 8)] * 2
    m, s = torch.tensor(MEAN).view(1, -1, 1, 1), torch.tensor(STD).view(1, -1, 1, 1)
    for t in g + l:  # normalised again: back in [0, 1] after un-normalising
        unit = t * s + m
        assert unit.min() >= -1e-5 and unit.max() <= 1 + 1e-5
    # a full-scale, unflipped crop with no op is the image itself, through the un-normalise round trip
    plain = CropConfig(global_crops=1, global_scale=(1.0, 1.0), hflip=False, augs=["padcrop"], padcrop_padding=0)
    assert torch.allclose(multicrop(x, plain, MEAN, STD)[0][0], x, atol=1e-5)
    tiny = CropConfig(local_crops=1, local_size=2, per_crop_augs=["dino"], blur_min_size=0)
    assert multicrop(x, tiny, MEAN, STD)[1][0].shape == (5, 3, 2, 2)  # the blur kernel shrinks to fit
    with pytest.raises(ValueError, match="mean and std"):
        multicrop(x, cfg)


def test_aug_names_mirror_dinopl():
    assert CropConfig(augs="hflip_padcrop").augs == ["hflip", "padcrop"]
    assert CropConfig(per_crop_augs=["dino", "hflip_padcrop"]).per_crop_augs == ["dino", "hflip", "padcrop"]
    with pytest.raises(ValidationError):
        CropConfig(augs=["rotate"])
    with pytest.raises(ValidationError):
        CropConfig(dino_choice="sometimes")


def test_training_runs_with_dinopl_augmentations(one_torch_thread):
    from trainables.data import load_dataset
    from trainables.dino.loop import train_dino
    from trainables.dino.params import DinoParams
    from trainables.runtime.session import LocalSession

    digits = load_dataset("digits", seed=0)
    p = DinoParams.model_validate({
        "encoder": "mlp_tiny", "head": {"hidden_dims": [32], "bottleneck_dim": 16, "out_dim": 64},
        "crops": {"global_crops": 2, "local_crops": 2, "augs": ["padcrop"],
                  "per_crop_augs": ["dino"], "blur_min_size": 0},
        "epochs": 1, "warmup_epochs": 0, "batch_size": 256, "probe_every": 1, "probe_epochs": 1,
        "freeze_last_layer_epochs": 0})
    metrics = train_dino(p, digits, LocalSession(torch.device("cpu")))
    assert metrics["epoch"] == 1
    losses = [float(v) for k, v in metrics.items() if "loss" in k]
    assert losses and all(torch.isfinite(torch.tensor(losses)))


def test_augmented_multicrop_makes_no_host_sync():
    from trainables.runtime.sync_check import SyncCheck

    cfg = CropConfig(global_crops=2, local_crops=3, local_size=8, augs=["padcrop"], per_crop_augs=["dino"])
    x = _normalised(_images(6))
    multicrop(x, cfg, MEAN, STD)  # the first call imports kornia's hue op and copies the data's statistics
    with SyncCheck() as check:
        g, loc = multicrop(x, cfg, MEAN, STD)
    assert not check.syncs, check.report()
    assert [c.shape[-1] for c in g + loc] == [16, 16, 8, 8, 8]


def test_a_dino_step_with_dinopls_augmentations_makes_no_host_sync(one_torch_thread):
    """The whole step: crops, the photometric set with its blur, forwards, loss, backward, update."""
    from trainables.data import load_dataset
    from trainables.dino.loop import DinoRun
    from trainables.dino.params import DinoParams
    from trainables.runtime.session import LocalSession
    from trainables.runtime.sync_check import SyncCheck

    p = DinoParams.model_validate({
        "dataset": "digits", "encoder": "mlp_tiny", "head": {"hidden_dims": [32], "bottleneck_dim": 16, "out_dim": 64},
        "crops": {"global_crops": 2, "global_scale": [0.5, 1.0], "local_crops": 2, "local_scale": [0.2, 0.5],
                  "augs": ["padcrop"], "per_crop_augs": ["dino"], "blur_min_size": 4},  # blur on 8 px digits
        "epochs": 3, "warmup_epochs": 1, "batch_size": 64,
        "optimizer": "sgd"})  # torch's CPU Adam reads its step count on the host; its CUDA version does not
    run = DinoRun(p, load_dataset("digits", seed=0), LocalSession(torch.device("cpu")))
    group = next(run.update_groups(0))
    run.step(1, group)  # first calls import modules and copy the data's statistics once
    before = next(run.student.parameters()).detach().clone()
    with SyncCheck() as check:
        stats = run.step(1, group)
    assert check.syncs == [], check.report()
    assert torch.isfinite(stats["loss"]) and not torch.equal(before, next(run.student.parameters()))
