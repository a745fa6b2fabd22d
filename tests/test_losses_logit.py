"""DKD, AugConf and AdaptConf against their formulas written out in numpy, their limits, where the
gradient flows, and batch-size invariance."""
import math

import numpy as np
import pytest
import torch

import loss_formulas as F
from trainables.losses import LossInputs, create_loss
from trainables.losses.dkd import dkd_terms
from trainables.losses.kd import kd_kl_per_sample

# Row 0: student and teacher agree on the top-1 (class 0); rows 1 and 2 disagree.
S = np.array([[2.0, 1.0, 0.1, -1.0], [0.5, 2.5, 0.3, 0.0], [1.0, 0.2, 0.4, 1.5]])
T = np.array([[3.0, 0.5, 0.0, -0.5], [2.0, 1.0, 0.5, 0.1], [0.0, 0.5, 2.0, 1.0]])
Y = np.array([0, 1, 2])
ROWS = np.arange(len(Y))


def inputs(s=S, t=T, y=Y, grad=False, **kw):
    st, tt = F.tensor(s, grad), F.tensor(t, grad)
    return LossInputs(student_logits=st, targets=torch.tensor(y), teacher_logits=tt, **kw), st, tt


def duplicated(**kw):
    return inputs(np.concatenate([S, S]), np.concatenate([T, T]), np.concatenate([Y, Y]), **kw)[0]


# ---------------------------------------------------------------------------------------------- DKD

def dkd_by_hand(s, t, y, temp):
    rows = np.arange(len(y))
    ps, pt = F.softmax(s, temp), F.softmax(t, temp)
    b_s = np.stack([ps[rows, y], 1 - ps[rows, y]], -1)
    b_t = np.stack([pt[rows, y], 1 - pt[rows, y]], -1)
    keep = np.ones_like(s, dtype=bool)
    keep[rows, y] = False
    n, c = s.shape
    nckd = F.kl(F.softmax(t[keep].reshape(n, c - 1), temp), F.softmax(s[keep].reshape(n, c - 1), temp))
    return temp ** 2 * F.kl(b_t, b_s), temp ** 2 * nckd


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_dkd_matches_formula(temp):
    params = {"temperature": temp, "alpha": 0.7, "beta": 3.0, "label_weight": 0.5, "warmup_epochs": 5}
    out = create_loss("dkd", params)(inputs(epoch=7)[0])  # past the warm-up
    tckd, nckd = dkd_by_hand(S, T, Y, temp)
    assert out["tckd"].item() == pytest.approx(tckd.mean(), rel=1e-5)
    assert out["nckd"].item() == pytest.approx(nckd.mean(), rel=1e-5)
    expected = 0.5 * F.ce(S, Y) + 0.7 * tckd.mean() + 3.0 * nckd.mean()
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)


def test_dkd_gradient_is_finite_and_the_non_target_softmax_over_c_minus_1_classes():
    """NCKD masks the target to -inf instead of indexing it away (no data-dependent shape, so no
    host sync on a GPU): its gradient must be finite and equal that of the c-1-class form."""
    s = torch.tensor(S, dtype=torch.float64, requires_grad=True)
    _, nckd = dkd_terms(s, torch.tensor(T, dtype=torch.float64), torch.tensor(Y), 2.0)
    nckd.sum().backward()
    n, c = S.shape
    keep = ~torch.nn.functional.one_hot(torch.tensor(Y), c).bool()
    s2 = torch.tensor(S, dtype=torch.float64, requires_grad=True)
    log_ps = torch.log_softmax(s2[keep].view(n, c - 1) / 2.0, -1)
    log_pt = torch.log_softmax(torch.tensor(T, dtype=torch.float64)[keep].view(n, c - 1) / 2.0, -1)
    (log_pt.exp() * (log_pt - log_ps)).sum().backward()
    assert torch.isfinite(s.grad).all()
    torch.testing.assert_close(s.grad, s2.grad)


def test_dkd_parts_recompose_kd():
    # The paper's decomposition: KD = TCKD + (1 - p_t,y) NCKD, per sample, at any temperature.
    temp = 2.0
    tckd, nckd = dkd_terms(F.tensor(S), F.tensor(T), torch.tensor(Y), temp)
    p_t_target = F.softmax(T, temp)[ROWS, Y]
    kd = kd_kl_per_sample(F.tensor(S), F.tensor(T), temp).numpy() / temp ** 2
    np.testing.assert_allclose(tckd.numpy() + (1 - p_t_target) * nckd.numpy(), kd, rtol=1e-5)


@pytest.mark.parametrize("epoch,warmup,factor", [(0, 20, 1 / 20), (9, 20, 10 / 20), (19, 20, 1.0), (50, 20, 1.0),
                                                 (0, 0, 1.0)])
def test_dkd_warmup_scales_the_distillation_term(epoch, warmup, factor):
    out = create_loss("dkd", {"warmup_epochs": warmup})(inputs(epoch=epoch)[0])
    tckd, nckd = dkd_by_hand(S, T, Y, 4.0)
    assert out["loss"].item() == pytest.approx(F.ce(S, Y) + factor * (tckd.mean() + 8.0 * nckd.mean()), rel=1e-5)


def test_dkd_uses_the_argmax_of_soft_targets():
    soft = F.softmax(np.eye(4)[Y] * 5.0)
    hard = create_loss("dkd", {"label_weight": 0.0})(inputs()[0])["loss"].item()
    inp = LossInputs(student_logits=F.tensor(S), targets=F.tensor(soft), teacher_logits=F.tensor(T))
    assert create_loss("dkd", {"label_weight": 0.0})(inp)["loss"].item() == pytest.approx(hard, rel=1e-6)


# ------------------------------------------------------------------------------------------ AugConf

def augconf_alpha_by_hand(e, num_epochs, r, theta):
    return theta * e / (num_epochs * r) if e < math.floor(num_epochs * r) else theta


@pytest.mark.parametrize("epoch,alpha", [(0, 0.0), (36, 0.25), (71, 0.5 * 71 / 72), (72, 0.5), (239, 0.5)])
def test_augconf_alpha_ramps_per_epoch(epoch, alpha):
    # The CIFAR recipe: E = 240, r = 0.3, θ = 0.5 -> α rises from 0 to 0.5 at epoch 72.
    out = create_loss("augconf")(inputs(epoch=epoch, num_epochs=240)[0])
    assert out["alpha"].item() == pytest.approx(alpha, abs=1e-7)


def test_augconf_rate_zero_starts_at_threshold():
    out = create_loss("augconf", {"rate": 0.0, "threshold": 0.7})(inputs(epoch=0, num_epochs=10)[0])
    assert out["alpha"].item() == pytest.approx(0.7)


@pytest.mark.parametrize("epoch", [0, 1, 2, 5])
def test_augconf_matches_formula(epoch):
    theta, rate, temp, epochs = 0.6, 0.25, 2.0, 10  # floor(2.5) = 2 ramp epochs
    params = {"threshold": theta, "rate": rate, "temperature": temp, "label_weight": 0.8, "kd_weight": 1.5}
    out = create_loss("augconf", params)(inputs(epoch=epoch, num_epochs=epochs)[0])
    alpha = augconf_alpha_by_hand(epoch, epochs, rate, theta)
    kd, self_ce = F.kd_per_sample(S, T, temp).mean(), F.self_ce_per_sample(S).mean()
    expected = 0.8 * F.ce(S, Y) + 1.5 * ((1 - alpha) * kd + alpha * self_ce)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------------------- AdaptConf

def adaptconf_alpha_by_hand(s, t, theta, confidence="student_vs_teacher_label"):
    rows = np.arange(len(s))
    a = -F.log_softmax(s)[rows, s.argmax(-1)]
    b = -(F.log_softmax(s) if confidence == "student_vs_teacher_label" else F.log_softmax(t))[rows, t.argmax(-1)]
    return np.exp(a / theta) / (np.exp(a / theta) + np.exp(b / theta))


def adaptconf_by_hand(s, t, y, theta, temp, alpha=None, confidence="student_vs_teacher_label"):
    alpha = adaptconf_alpha_by_hand(s, t, theta, confidence) if alpha is None else alpha
    return F.ce(s, y) + np.mean((1 - alpha) * F.kd_per_sample(s, t, temp) + alpha * F.self_ce_per_sample(s))


@pytest.mark.parametrize("confidence", ["student_vs_teacher_label", "teacher_self"])
@pytest.mark.parametrize("theta,temp", [(0.5, 1.0), (4.0, 3.0)])
def test_adaptconf_matches_formula(confidence, theta, temp):
    params = {"threshold": theta, "temperature": temp, "confidence": confidence}
    out = create_loss("adaptconf", params)(inputs()[0])
    alpha = adaptconf_alpha_by_hand(S, T, theta, confidence)
    assert out["alpha"].item() == pytest.approx(alpha.mean(), rel=1e-5)
    assert out["loss"].item() == pytest.approx(adaptconf_by_hand(S, T, Y, theta, temp, confidence=confidence),
                                               rel=1e-5)


def test_adaptconf_code_definition_caps_alpha_at_one_half():
    alpha = adaptconf_alpha_by_hand(S, T, 0.5)
    assert alpha[0] == pytest.approx(0.5) and alpha[1] < 0.5 and alpha[2] < 0.5
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(256, 10)) * 3, rng.normal(size=(256, 10)) * 3
    out = create_loss("adaptconf", {"threshold": 0.3})(LossInputs(
        student_logits=F.tensor(s), targets=torch.zeros(256, dtype=torch.long), teacher_logits=F.tensor(t)))
    from trainables.losses.adaptconf import adaptconf_alpha
    alphas = adaptconf_alpha(F.tensor(s), F.tensor(t), 0.3)
    assert alphas.max().item() <= 0.5 + 1e-7 and out["alpha"].item() < 0.5
    agree = s.argmax(-1) == t.argmax(-1)
    np.testing.assert_allclose(alphas.numpy()[agree], 0.5, atol=1e-7)


def test_adaptconf_teacher_self_can_exceed_one_half():
    # An unsure student (flat logits) and a sure teacher: the student's own CE exceeds the teacher's.
    s, t = np.array([[0.2, 0.1, 0.0, 0.0]]), np.array([[6.0, 0.0, 0.0, 0.0]])
    inp = LossInputs(student_logits=F.tensor(s), targets=torch.tensor([0]), teacher_logits=F.tensor(t))
    out = create_loss("adaptconf", {"confidence": "teacher_self"})(inp)
    assert out["alpha"].item() > 0.5
    assert out["alpha"].item() == pytest.approx(adaptconf_alpha_by_hand(s, t, 0.5, "teacher_self")[0], rel=1e-5)


def test_adaptconf_threshold_limits():
    # θ -> 0: 0.5 where the top-1s agree, 0 where they disagree; θ -> inf: 0.5 everywhere.
    from trainables.losses.adaptconf import adaptconf_alpha
    small = adaptconf_alpha(F.tensor(S), F.tensor(T), 1e-4).numpy()
    np.testing.assert_allclose(small, [0.5, 0.0, 0.0], atol=1e-7)
    large = adaptconf_alpha(F.tensor(S), F.tensor(T), 1e6).numpy()
    np.testing.assert_allclose(large, 0.5, atol=1e-6)


def test_adaptconf_rate_ramps_alpha():
    base = create_loss("adaptconf")(inputs(epoch=1, num_epochs=10)[0])["alpha"].item()
    ramped = create_loss("adaptconf", {"rate": 0.5})(inputs(epoch=1, num_epochs=10)[0])["alpha"].item()
    assert ramped == pytest.approx(base * 1 / 5, rel=1e-6)  # e / (E r) = 1 / 5 before epoch floor(5)


def test_adaptconf_weight_is_a_constant_for_the_gradient():
    theta, temp = 0.5, 2.0
    inp, s, t = inputs(grad=True)
    create_loss("adaptconf", {"threshold": theta, "temperature": temp})(inp)["loss"].backward()
    assert t.grad is None
    alpha0 = adaptconf_alpha_by_hand(S, T, theta)
    frozen = F.numerical_grad(lambda x: adaptconf_by_hand(x, T, Y, theta, temp, alpha=alpha0), S)
    np.testing.assert_allclose(s.grad.numpy(), frozen, atol=2e-5)
    # The check has teeth: letting α carry gradient would give a visibly different one.
    live = F.numerical_grad(lambda x: adaptconf_by_hand(x, T, Y, theta, temp), S)
    assert np.abs(live - frozen).max() > 1e-2


# ----------------------------------------------------------------------------------- shared checks

@pytest.mark.parametrize("name", ["dkd", "augconf", "adaptconf"])
def test_teacher_gets_no_gradient_and_student_does(name):
    inp, s, t = inputs(grad=True, epoch=3, num_epochs=10)
    create_loss(name)(inp)["loss"].backward()
    assert t.grad is None
    assert s.grad is not None and torch.count_nonzero(s.grad) > 0


@pytest.mark.parametrize("name", ["dkd", "augconf", "adaptconf"])
def test_batch_size_invariance(name):
    single = create_loss(name)(inputs(epoch=3, num_epochs=10)[0])
    doubled = create_loss(name)(duplicated(epoch=3, num_epochs=10))
    for key in single:
        assert doubled[key].item() == pytest.approx(single[key].item(), rel=1e-6), key
