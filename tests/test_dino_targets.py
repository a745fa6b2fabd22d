"""Issue 15: the supervised comparison's targets (trainables/dino/targets.py): dinopl's label noise
(fixed per image or drawn every step), its label-free Gaussian logits of ``n_classes`` dimensions,
and its inputs-as-targets mode."""
from __future__ import annotations

import math

import pytest
import torch

from trainables.dino.params import DinoParams
from trainables.dino.targets import SupervisedTargets, inputs_target_dim
from tests.test_dino import TINY, digits, run  # noqa: F401  (the digits fixture)


def _targets(n=1000, classes=10, out_dim=16, **kw):
    p = DinoParams.model_validate({"supervised": True, **kw})
    y = torch.arange(n) % classes
    return p, y, SupervisedTargets(p, y, classes, out_dim)


def test_fixed_label_noise_relabels_round_n_times_ratio_images_once_and_keeps_them():
    p, y, t = _targets(label_noise=0.3, resample_noise=False, seed=4)
    idx = torch.arange(len(y))
    first = t(idx, torch.zeros(len(y), 1, 2, 2)).argmax(1)
    again = t(idx, torch.zeros(len(y), 1, 2, 2)).argmax(1)
    assert torch.equal(first, again)                      # fixed for the whole run
    # 300 images drew a uniform class, which is their own one time in ten
    changed = int((first != y).sum())
    assert 300 * 0.9 - 3 * math.sqrt(300 * 0.09) <= changed <= 300
    _, _, same_seed = _targets(label_noise=0.3, resample_noise=False, seed=4)
    assert torch.equal(same_seed.labels, t.labels)
    _, _, other_seed = _targets(label_noise=0.3, resample_noise=False, seed=5)
    assert not torch.equal(other_seed.labels, t.labels)


def test_resampled_label_noise_differs_between_steps():
    torch.manual_seed(0)
    p, y, t = _targets(label_noise=0.5)
    idx = torch.arange(len(y))
    a, b = (t(idx, torch.zeros(1)).argmax(1) for _ in range(2))
    assert not torch.equal(a, b)
    assert abs(float((a != y).float().mean()) - 0.45) < 0.06


def test_gaussian_targets_are_unit_norm_logits_over_the_temperature_padded_with_zeros():
    p, y, t = _targets(n=4000, logit_noise=0.5, logit_noise_kind="gaussian", n_classes=12, resample_noise=False)
    idx = torch.tensor([3, 7, 3])
    out = t(idx, torch.zeros(1))
    assert out.shape == (3, 16)
    assert torch.equal(out[:, 12:], torch.zeros(3, 4))
    assert torch.equal(out[0], out[2])                    # one draw per image
    assert torch.allclose(out[:, :12], t.fixed_logits[idx] / 0.5)
    # standard normal / sqrt(n): the squared norm averages 1 over images, whatever the labels
    sq = (t.fixed_logits ** 2).sum(1)
    assert abs(float(sq.mean()) - 1.0) < 0.03


def test_gaussian_targets_wider_than_the_head_are_refused():
    with pytest.raises(ValueError, match=r"n_classes \(20\) exceeds head.out_dim \(16\)"):
        _targets(logit_noise=1.0, logit_noise_kind="gaussian", n_classes=20)


def test_additive_fixed_noise_is_the_same_every_step():
    p, y, t = _targets(logit_noise=0.2, resample_noise=False, label_logit=3.0)
    idx = torch.tensor([0, 1])
    a, b = t(idx, torch.zeros(1)), t(idx, torch.zeros(1))
    assert torch.equal(a, b)
    assert torch.allclose(a - t.fixed_logits[idx], torch.nn.functional.one_hot(y[idx], 16).float() * 3.0)


def test_inputs_as_logits_is_the_first_global_crop_flattened():
    p, y, t = _targets(inputs_as_logits=True)
    crop = torch.randn(5, 1, 4, 4)
    assert torch.equal(t(torch.arange(5), crop), crop.flatten(1))
    assert inputs_target_dim(p, (1, 8, 8)) == 64
    p24 = DinoParams.model_validate({"supervised": True, "inputs_as_logits": True, "crops": {"global_size": 6}})
    assert inputs_target_dim(p24, (3, 8, 8)) == 108


def test_inputs_as_logits_trains_on_digits_and_refuses_a_head_of_the_wrong_size(digits, one_torch_thread):
    head = {"hidden_dims": [32], "bottleneck_dim": 16, "out_dim": 64}
    loss = {"teacher_temp": 1.0, "student_temp": 1.0, "pairing": "same", "objective": "mse",
            "teacher_center_momentum": float("nan")}
    _, session = run(digits, supervised=True, inputs_as_logits=True, head=head, loss_params=loss, epochs=3)
    losses = [h["train_loss"] for h in session.history]
    assert all(map(math.isfinite, losses)) and losses[-1] < losses[0]   # it learns to reproduce its input
    with pytest.raises(ValueError, match=r"inputs_as_logits: head.out_dim \(32\) must equal .* 64 values"):
        run(digits, supervised=True, inputs_as_logits=True, head={**head, "out_dim": 32}, loss_params=loss, epochs=1)


@pytest.mark.parametrize("bad, fragment", [
    ({"label_noise": 0.2}, "label_noise needs supervised: true"),
    ({"supervised": True, "n_classes": 5}, "n_classes (5) sets the size of the Gaussian target logits"),
    ({"supervised": True, "inputs_as_logits": True, "label_noise": 0.1}, "inputs_as_logits: the targets are"),
    ({"supervised": True, "label_noise": 0.1, "logit_noise": 1.0, "logit_noise_kind": "gaussian"},
     "label_noise and logit_noise_kind gaussian exclude each other"),
])
def test_target_keys_out_of_place_are_refused(bad, fragment):
    with pytest.raises(ValueError) as err:
        DinoParams.model_validate({**TINY, **bad})
    assert fragment in str(err.value)
