"""Vectorised linear probes against one-at-a-time training, the aux-confidence loss against its
formula, and PGR with its guarded denominator."""
import math

import numpy as np
import pytest
import torch

from trainables.losses import LossInputs, create_loss
from trainables.losses.auxconf import auxconf_coef
from trainables.training.linear_probe import ProbeSpec, train_probe_reference, train_probes
from trainables.w2s_probe.loop import best_over, pgr, probe_plan
from trainables.w2s_probe.params import ProbeConfig

N, D, C = 240, 12, 5


@pytest.fixture(scope="module")
def data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=gen)
    y = torch.randint(0, C, (N,), generator=gen)
    soft = torch.softmax(2 * torch.randn(N, C, generator=gen), -1)
    return x, {"soft": soft, "hard": y}


SPECS = [
    ProbeSpec("soft", lr=1e-2, epochs=3),
    ProbeSpec("hard", lr=3e-3, weight_decay=1e-2, epochs=2, init=1),
    ProbeSpec("soft", lr=2e-2, epochs=4, aux_coef=0.5, warmup_frac=0.2, label_smoothing=0.1),
    ProbeSpec("hard", lr=5e-3, epochs=3, aux_coef=0.75, init=2),
]


def run_vectorised(x, targets, specs, **kw):
    history: dict[int, list] = {}

    def on_epoch(view):
        logits = view.logits(x)
        for j, i in enumerate(view.probe_ids):
            history.setdefault(i, []).append((view.epoch, float(view.train_loss[j]), logits[j].clone()))

    train_probes(x, targets, specs, num_classes=C, batch_size=32, seed=7, on_epoch=on_epoch, **kw)
    return history


@pytest.mark.parametrize("chunk_size,per_probe", [(None, True), (1, True), (3, True), (None, False), (2, False)])
def test_vectorised_probes_equal_one_at_a_time_training(data, chunk_size, per_probe):
    x, targets = data
    history = run_vectorised(x, targets, SPECS, chunk_size=chunk_size, per_probe=per_probe)
    for i, spec in enumerate(SPECS):
        probe, losses = train_probe_reference(x, targets[spec.target], spec, num_classes=C, batch_size=32, seed=7)
        assert [e for e, _, _ in history[i]] == list(range(1, spec.epochs + 1))  # reported every epoch, then gone
        np.testing.assert_allclose([loss for _, loss, _ in history[i]], losses, rtol=1e-5, atol=1e-6)
        with torch.no_grad():
            np.testing.assert_allclose(history[i][-1][2].numpy(), probe(x).numpy(), rtol=1e-4, atol=1e-5)


def test_equal_specs_train_identically_and_inits_follow_their_stream(data):
    x, targets = data
    a, b, other = ProbeSpec("soft", lr=1e-2, epochs=2), ProbeSpec("soft", lr=1e-2, epochs=2), \
        ProbeSpec("soft", lr=1e-2, epochs=2, init=1)
    history = run_vectorised(x, targets, [a, b, other])
    assert torch.equal(history[0][-1][2], history[1][-1][2])
    assert not torch.allclose(history[0][-1][2], history[2][-1][2])


def test_the_probes_learn(data):
    x, _ = data
    w = torch.randn(D, C, generator=torch.Generator().manual_seed(1))
    y = (x @ w).argmax(-1)  # linearly separable labels
    accs = {}

    def on_epoch(view):
        accs[view.epoch] = float((view.predict(x)[0] == y).float().mean())

    train_probes(x, {"y": y}, [ProbeSpec("y", lr=5e-2, epochs=20)], num_classes=C, batch_size=32, seed=0,
                 on_epoch=on_epoch)
    assert accs[20] > 0.9 and accs[20] > accs[1]


def test_auxconf_coefficient_keeps_the_reference_warmup_quirk():
    # During warm-up the coefficient is the progress itself (not progress / warmup_frac) ...
    assert auxconf_coef(0.05, 0.5, 0.1) == pytest.approx(0.025)
    assert auxconf_coef(0.1, 0.5, 0.1) == pytest.approx(0.05)
    # ... and jumps to aux_coef right after it.
    assert auxconf_coef(0.1001, 0.5, 0.1) == pytest.approx(0.5)
    progress = torch.tensor([0.05, 0.5, 0.05])
    got = auxconf_coef(progress, torch.tensor([0.5, 0.5, 0.0]), torch.tensor([0.1, 0.1, 0.1]))
    assert torch.allclose(got, torch.tensor([0.025, 0.5, 0.0]))


def test_auxconf_loss_matches_the_formula():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(6, 4)).astype(np.float32)
    t = rng.normal(size=(6, 4)).astype(np.float32)
    aux_coef, warmup, progress = 0.6, 0.1, 0.4
    q = np.exp(t) / np.exp(t).sum(1, keepdims=True)
    hard = np.eye(4)[z.argmax(1)]
    target = (1 - aux_coef) * q + aux_coef * hard
    log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
    expected = float(-(target * log_p).sum(1).mean())
    loss = create_loss("auxconf", {"aux_coef": aux_coef, "warmup_frac": warmup})
    out = loss(LossInputs(student_logits=torch.tensor(z), targets=torch.zeros(6, dtype=torch.long),
                          teacher_logits=torch.tensor(t), progress=progress))
    assert float(out["loss"]) == pytest.approx(expected, rel=1e-5)
    assert float(out["aux_coef"]) == pytest.approx(aux_coef)


def test_pgr_and_its_guarded_denominator():
    assert pgr(0.8, 0.6, 0.9) == pytest.approx(2 / 3)
    assert pgr(0.55, 0.6, 0.9) == pytest.approx(-1 / 6)  # worse than its supervisor
    assert pgr(0.95, 0.6, 0.9) == pytest.approx(35 / 30)  # beat its own ceiling
    assert math.isnan(pgr(0.7, 0.6, 0.6))  # ceiling equal to the weak teacher
    assert math.isnan(pgr(0.7, 0.6, 0.5))  # ceiling below it
    assert best_over([0.2, math.nan, 0.5], "pgr") == 0.5
    assert best_over([0.2, 0.1], "w2s_train_loss") == 0.1
    assert math.isnan(best_over([math.nan], "pgr"))


def test_probe_plan_shares_the_ceiling_across_w2s_options():
    base = probe_plan(ProbeConfig(lr=1e-3, epochs=5))
    aux = probe_plan(ProbeConfig(lr=1e-3, epochs=5, w2s_loss="auxconf", w2s_labels="hard",
                                 loss_params={"aux_coef": 0.3}))
    assert base.strong == aux.strong and base.w2s != aux.w2s
    assert base.w2s.target == "weak_soft" and aux.w2s.target == "weak_hard" and aux.w2s.aux_coef == 0.3
    assert probe_plan(ProbeConfig(lr=2e-3, epochs=5)).strong != base.strong
