"""The DINO loss against its formula written out in numpy: centring applied then updated,
temperatures and their warm-up, pairings, limits, gradient flow; and that `distill` cannot use it."""
import io
import math

import numpy as np
import pydantic
import pytest
import torch

import loss_formulas as F
from trainables.losses import create_loss, loss_names

RNG = np.random.default_rng(1)
NT, NS, B, D = 2, 3, 4, 5
X_T, X_S = RNG.normal(size=(NT, B, D)) * 2, RNG.normal(size=(NS, B, D)) * 2
X_T2, X_S2 = RNG.normal(size=(NT, B, D)) + 1, RNG.normal(size=(NS, B, D)) - 0.5


def dino(**params):
    return create_loss("dino", params, out_dim=D)


def pairs_np(pairing, nt=NT, ns=NS):
    keep = {"opposite": lambda k, m: k != m, "same": lambda k, m: k == m, "all": lambda k, m: True}[pairing]
    return [(k, m) for k in range(nt) for m in range(ns) if keep(k, m)]


def dino_ce_np(xs, xt, c_s, c_t, tau_s, tau_t, pairing):
    p_t = F.softmax(xt - c_t, tau_t)
    log_p_s = F.log_softmax(xs - c_s, tau_s)
    return np.mean([np.mean(-np.sum(p_t[k] * log_p_s[m], -1)) for k, m in pairs_np(pairing, len(xt), len(xs))])


def run(loss, xs=X_S, xt=X_T, epoch=0, grad=False):
    s, t = F.tensor(xs, grad), F.tensor(xt, grad)
    return loss(list(s), list(t), epoch=epoch), s, t


@pytest.mark.parametrize("pairing", ["opposite", "same", "all"])
def test_dino_ce_matches_formula_with_centre_applied_then_updated(pairing):
    m, tau_t, tau_s = 0.8, 0.3, 0.7
    loss = dino(teacher_temp=tau_t, student_temp=tau_s, teacher_center_momentum=m, pairing=pairing)
    first = run(loss)[0]
    zero = np.zeros(D)
    assert first["ce"].item() == pytest.approx(dino_ce_np(X_S, X_T, zero, zero, tau_s, tau_t, pairing), rel=1e-5)
    # The centre is updated after use, with the mean over crops and batch (before temperature).
    c1 = (1 - m) * X_T.mean(axis=(0, 1))
    np.testing.assert_allclose(loss.teacher_center.numpy()[0], c1, rtol=1e-5)
    second = run(loss, X_S2, X_T2)[0]
    assert second["ce"].item() == pytest.approx(dino_ce_np(X_S2, X_T2, zero, c1, tau_s, tau_t, pairing), rel=1e-5)
    np.testing.assert_allclose(loss.teacher_center.numpy()[0], m * c1 + (1 - m) * X_T2.mean(axis=(0, 1)), rtol=1e-5)
    np.testing.assert_array_equal(loss.student_center.numpy(), 0.0)  # student: NaN momentum by default


def test_dino_student_centering_and_no_centering():
    loss = dino(teacher_center_momentum=float("nan"), student_center_momentum=0.5, teacher_temp=1.0, student_temp=1.0)
    run(loss)
    np.testing.assert_allclose(loss.student_center.numpy()[0], 0.5 * X_S.mean(axis=(0, 1)), rtol=1e-5)
    np.testing.assert_array_equal(loss.teacher_center.numpy(), 0.0)
    second = run(loss, X_S2, X_T2)[0]
    expected = dino_ce_np(X_S2, X_T2, 0.5 * X_S.mean(axis=(0, 1)), np.zeros(D), 1.0, 1.0, "opposite")
    assert second["ce"].item() == pytest.approx(expected, rel=1e-5)


def test_random_teacher_v2_setting_is_plain_cross_entropy():
    # dinopl's cifar10_distillation_v2: one crop, pairing same, τ = 1 both sides, no centring.
    nan = float("nan")
    loss = dino(teacher_temp=1.0, student_temp=1.0, teacher_center_momentum=nan, pairing="same")
    for _ in range(2):  # no centring: repeated calls do not drift
        out = run(loss, X_S[:1], X_T[:1])[0]
        expected = np.mean(-np.sum(F.softmax(X_T[0]) * F.log_softmax(X_S[0]), -1))
        assert out["loss"].item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("epoch,temp", [(0, 0.04), (15, 0.04 + 0.03 * 15 / 29), (29, 0.07), (30, 0.07), (99, 0.07)])
def test_teacher_temperature_warms_up_linearly_per_epoch(epoch, temp):
    # DINO's schedule: linspace(warmup_teacher_temp, teacher_temp, W) over the first W epochs.
    loss = dino(teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_teacher_temp_epochs=30)
    assert loss.teacher_temperature(epoch) == pytest.approx(temp)
    out = run(loss, epoch=epoch)[0]
    assert out["teacher_temp"].item() == pytest.approx(temp)
    assert out["ce"].item() == pytest.approx(dino_ce_np(X_S, X_T, 0, 0, 0.1, temp, "opposite"), rel=1e-5)


def test_teacher_temperature_limits():
    # τ_t -> 0: the teacher is one-hot at its argmax; τ_t -> inf: the teacher is uniform.
    log_p_s = F.log_softmax(X_S, 0.1)
    sharp = run(dino(teacher_temp=1e-5))[0]["ce"].item()
    onehot = np.mean([np.mean(-log_p_s[m][np.arange(B), X_T[k].argmax(-1)]) for k, m in pairs_np("opposite")])
    assert sharp == pytest.approx(onehot, rel=1e-5)
    flat = run(dino(teacher_temp=1e6))[0]["ce"].item()
    uniform = np.mean([np.mean(-log_p_s[m].mean(-1)) for k, m in pairs_np("opposite")])
    assert flat == pytest.approx(uniform, rel=1e-5)


def test_kl_is_ce_minus_teacher_entropy_and_can_be_the_objective():
    out = run(dino(objective="kl", teacher_temp=0.5))[0]
    p_t = F.softmax(X_T, 0.5)
    h_t = -np.sum(p_t * np.log(p_t), -1).mean(-1)
    expected = np.mean([dino_ce_np(X_S[m:m + 1], X_T[k:k + 1], 0, 0, 0.1, 0.5, "same") - h_t[k]
                        for k, m in pairs_np("opposite")])
    assert out["kl"].item() == pytest.approx(expected, rel=1e-5)
    assert out["loss"].item() == pytest.approx(out["kl"].item())


def test_teacher_side_gets_no_gradient():
    out, s, t = run(dino(), grad=True)
    out["loss"].backward()
    assert t.grad is None
    assert s.grad is not None and torch.count_nonzero(s.grad) > 0


def test_dino_batch_size_invariance():
    single = run(dino())[0]["loss"].item()
    doubled_loss = dino()
    doubled = run(doubled_loss, np.concatenate([X_S, X_S], 1), np.concatenate([X_T, X_T], 1))[0]["loss"].item()
    assert doubled == pytest.approx(single, rel=1e-6)
    reference = dino()
    run(reference)
    torch.testing.assert_close(doubled_loss.teacher_center, reference.teacher_center)


def test_dino_state_dict_round_trip_keeps_the_centre():
    original = dino(student_center_momentum=0.9)
    run(original)
    buf = io.BytesIO()
    torch.save(original.state_dict(), buf)
    buf.seek(0)
    restored = dino(student_center_momentum=0.9)
    restored.load_state_dict(torch.load(buf))
    a, b = run(original, X_S2, X_T2)[0]["loss"].item(), run(restored, X_S2, X_T2)[0]["loss"].item()
    assert a == pytest.approx(b, rel=1e-7) and a != pytest.approx(run(dino(), X_S2, X_T2)[0]["loss"].item())


def test_pairing_without_pairs_is_an_error():
    with pytest.raises(ValueError, match="no .*pair"):
        run(dino(pairing="opposite"), X_S[:1], X_T[:1])


def test_center_momentum_accepts_nan_and_rejects_out_of_range():
    assert math.isnan(dino(teacher_center_momentum=float("nan")).params.teacher_center_momentum)
    with pytest.raises(pydantic.ValidationError, match="NaN for no centring"):
        dino(teacher_center_momentum=1.5)


def test_distill_cannot_select_the_dino_loss():
    from trainables.distill.params import DistillParams

    assert "dino" in loss_names() and "dino" not in loss_names("classifier")
    with pytest.raises(pydantic.ValidationError, match="loss 'dino' takes multicrop inputs"):
        DistillParams(loss="dino")


def test_dino_computes_in_fp32_under_bf16_autocast():
    plain = run(dino())[0]["loss"].item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = run(dino())[0]["loss"]
    assert mixed.dtype == torch.float32 and mixed.item() == pytest.approx(plain, rel=1e-6)
