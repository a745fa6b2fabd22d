"""CE and KD against values computed independently from the formulas (numpy, not torch)."""
import math

import numpy as np
import pytest
import torch

from trainables.losses import LossInputs, create_loss

S = np.array([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]])
T_LOGITS = np.array([[2.0, 0.0, 1.0], [0.0, 0.0, 4.0]])
Y = np.array([1, 2])


def np_softmax(z, temp=1.0):
    e = np.exp((z - z.max(-1, keepdims=True)) / temp)
    return e / e.sum(-1, keepdims=True)


def kd_by_hand(s, t, temp):
    p_t, p_s = np_softmax(t, temp), np_softmax(s, temp)
    return float(np.mean((temp ** 2) * np.sum(p_t * (np.log(p_t) - np.log(p_s)), axis=-1)))


def ce_by_hand(s, y):
    return float(np.mean(-np.log(np_softmax(s)[np.arange(len(y)), y])))


def inputs(s=S, t=T_LOGITS, y=Y, grad=False):
    st = torch.tensor(s, dtype=torch.float32, requires_grad=grad)
    tt = torch.tensor(t, dtype=torch.float32, requires_grad=grad)
    return LossInputs(student_logits=st, targets=torch.tensor(y), teacher_logits=tt), st, tt


def test_ce_matches_formula():
    out = create_loss("ce")(inputs()[0])
    assert out["loss"].item() == pytest.approx(ce_by_hand(S, Y), rel=1e-6)


@pytest.mark.parametrize("temp", [1.0, 2.0, 4.0])
def test_kd_matches_formula(temp):
    out = create_loss("kd", {"temperature": temp, "label_weight": 0.3, "kd_weight": 0.7})(inputs()[0])
    expected = 0.3 * ce_by_hand(S, Y) + 0.7 * kd_by_hand(S, T_LOGITS, temp)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)
    assert out["kd"].item() == pytest.approx(kd_by_hand(S, T_LOGITS, temp), rel=1e-5)


def test_kd_high_temperature_limit_is_logit_matching():
    # Hinton et al.: as T -> inf, T^2 KL -> sum_c (dz_c - mean dz)^2 / (2C), dz = z_t - z_s.
    # T = 100 is large enough for the O(1/T) term to be small and small enough for float32.
    temp = 100.0
    out = create_loss("kd", {"temperature": temp, "label_weight": 0.0})(inputs(s=S, t=T_LOGITS)[0])
    dz = T_LOGITS - S
    dz = dz - dz.mean(-1, keepdims=True)
    limit = float(np.mean((dz ** 2).sum(-1) / (2 * S.shape[1])))
    assert out["kd"].item() == pytest.approx(limit, rel=5e-3)


def test_kd_is_zero_when_student_equals_teacher():
    out = create_loss("kd", {"label_weight": 0.0})(inputs(s=T_LOGITS)[0])
    assert out["loss"].item() == pytest.approx(0.0, abs=1e-6)


def test_kd_gradient_reaches_student_only():
    inp, s, t = inputs(grad=True)
    create_loss("kd")(inp)["loss"].backward()
    assert s.grad is not None and torch.count_nonzero(s.grad) > 0
    assert t.grad is None


def test_kd_is_batch_size_invariant():
    single = create_loss("kd")(inputs()[0])["loss"].item()
    doubled = create_loss("kd")(inputs(s=np.concatenate([S, S]), t=np.concatenate([T_LOGITS, T_LOGITS]),
                                      y=np.concatenate([Y, Y]))[0])["loss"].item()
    assert doubled == pytest.approx(single, rel=1e-6)


def test_ce_accepts_soft_targets():
    q = np_softmax(T_LOGITS)
    inp = LossInputs(student_logits=torch.tensor(S, dtype=torch.float32), targets=torch.tensor(q, dtype=torch.float32))
    expected = float(np.mean(-(q * np.log(np_softmax(S))).sum(-1)))
    assert create_loss("ce")(inp)["loss"].item() == pytest.approx(expected, rel=1e-5)
    assert math.isfinite(expected)
