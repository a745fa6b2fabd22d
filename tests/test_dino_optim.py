"""The dino trainable's optimisation keys (issue 15 item 10): Adam betas, the lr floor, the weight-decay
schedule, n_steps, batch_accum, samples_per_epoch and float64."""
from __future__ import annotations

import math

import pytest
import torch

from trainables.data import load_dataset
from trainables.dino.loop import DinoRun, sampled_epoch_batches, weight_decay_at
from trainables.dino.params import DinoParams
from trainables.runtime.epochs import run_epochs
from trainables.runtime.session import LocalSession

TINY = {"encoder": "mlp_tiny", "head": {"hidden_dims": [32], "bottleneck_dim": 16, "out_dim": 64},
        "crops": {"global_crops": 1, "global_scale": [1.0, 1.0], "hflip": False},
        "loss_params": {"teacher_temp": 0.1, "student_temp": 0.1, "pairing": "same"},
        "epochs": 2, "warmup_epochs": 0, "batch_size": 128, "lr": 5e-3, "probe_every": 100,
        "probe_epochs": 1, "freeze_last_layer_epochs": 0, "student_init": "random", "student_init_seed": 1}
CPU = torch.device("cpu")
# record_updates wraps optimizer.step after the scheduler was built, which torch warns about
pytestmark = pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def make_run(digits, **overrides) -> DinoRun:
    return DinoRun(DinoParams.model_validate({**TINY, **overrides}), digits, LocalSession(CPU))


def record_updates(run: DinoRun) -> list[list[tuple[float, float]]]:
    """Per optimiser update, (lr, weight_decay) of every param group as the update uses them."""
    seen = []
    original = run.optimizer.step

    def step(*args, **kwargs):
        seen.append([(g["lr"], g["weight_decay"]) for g in run.optimizer.param_groups])
        return original(*args, **kwargs)

    run.optimizer.step = step
    return seen


def train(run: DinoRun) -> LocalSession:
    session = run.session
    run_epochs(session, run.checkpointed(), run.epochs, run.train_epoch, run.epoch_metrics, 0)
    return session


def test_lr_cosine_ends_at_min_lr_on_the_last_update(digits, one_torch_thread):
    run = make_run(digits, epochs=3, warmup_epochs=1, min_lr=1e-4)
    seen = record_updates(run)
    train(run)
    lrs = [s[0][0] for s in seen]
    per_epoch = run.steps_per_epoch
    assert len(lrs) == run.total_steps == 3 * per_epoch
    assert lrs[-1] == pytest.approx(1e-4, rel=1e-9)
    assert lrs[per_epoch] == pytest.approx(5e-3)  # the cosine starts at lr after the warm-up
    assert lrs[per_epoch - 1] == pytest.approx(5e-3)  # the warm-up's last update
    assert all(a >= b for a, b in zip(lrs[per_epoch:], lrs[per_epoch + 1:]))
    assert all(s[1][0] == s[0][0] for s in seen)  # both groups share the schedule


def test_weight_decay_follows_its_cosine_on_the_decayed_groups_only(digits, one_torch_thread):
    run = make_run(digits, n_steps=9, weight_decay=0.04, weight_decay_end=0.4)
    seen = record_updates(run)
    train(run)
    decayed = [s[0][1] for s in seen]
    assert len(decayed) == 9
    assert decayed[0] == pytest.approx(0.04)
    assert decayed[4] == pytest.approx(0.22)  # the middle update: half-way
    assert decayed[-1] == pytest.approx(0.4)
    assert decayed[2] == pytest.approx(0.4 - 0.36 * (1 + math.cos(math.pi * 2 / 8)) / 2)
    assert all(s[1][1] == 0.0 for s in seen)  # biases and norm parameters: none
    assert [g["decayed"] for g in run.optimizer.param_groups] == [True, False]


def test_weight_decay_without_an_end_stays_constant():
    p = DinoParams.model_validate({**TINY, "weight_decay": 0.1})
    assert {weight_decay_at(p, s, 10) for s in range(10)} == {0.1}


def test_betas_reach_the_optimizer(digits):
    run = make_run(digits, betas=[0.8, 0.95])
    assert all(g["betas"] == (0.8, 0.95) for g in run.optimizer.param_groups)
    assert make_run(digits, optimizer="adam", betas=[0.5, 0.9]).optimizer.param_groups[0]["betas"] == (0.5, 0.9)


def test_n_steps_gives_exactly_that_many_updates_and_overrides_epochs(digits, one_torch_thread):
    base = make_run(digits)
    n = base.steps_per_epoch + 2  # stops two updates into the second epoch
    run = make_run(digits, n_steps=n, epochs=50, warmup_epochs=1)
    seen = record_updates(run)
    session = train(run)
    assert len(seen) == n == run.progress["step"]
    assert run.epochs == 2 and [m["epoch"] for m in session.history] == [1, 2]
    assert seen[-1][0][0] == pytest.approx(0.0, abs=1e-12)  # the schedule spans the n_steps updates


def test_batch_accum_updates_as_one_batch_of_all_micro_batches(digits, one_torch_thread):
    # no centring (the centre would move between micro-batches); SGD without clipping, which (unlike Adam)
    # would also see a wrongly scaled gradient
    common = {"loss_params": {**TINY["loss_params"], "teacher_center_momentum": float("nan")}, "epochs": 1,
              "optimizer": "sgd", "lr": 0.5, "clip_grad": 0.0}
    whole = make_run(digits, **common, batch_size=128)
    accum = make_run(digits, **common, batch_size=32, batch_accum=4)
    assert whole.total_steps == accum.total_steps
    seen = record_updates(accum)
    train(whole)
    train(accum)
    assert len(seen) == accum.total_steps
    for a, b in zip(whole.student.parameters(), accum.student.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for a, b in zip(whole.teacher.parameters(), accum.teacher.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_samples_per_epoch_sets_the_updates_per_epoch(digits, one_torch_thread):
    n_train = len(digits.train_y)
    run = make_run(digits, samples_per_epoch=3 * n_train, epochs=1)
    assert run.steps_per_epoch == 3 * n_train // 128
    seen = record_updates(run)
    train(run)
    assert len(seen) == run.steps_per_epoch
    assert make_run(digits, samples_per_epoch=256).steps_per_epoch == 2
    assert make_run(digits, samples_per_epoch=512, batch_accum=2).steps_per_epoch == 2


def test_sampled_epochs_are_concatenated_permutations():
    session = LocalSession(CPU)
    idx = torch.cat(list(sampled_epoch_batches(10, 25, 5, 0, 0, session, CPU)))
    assert len(idx) == 25
    assert sorted(idx[:10].tolist()) == sorted(idx[10:20].tolist()) == list(range(10))
    assert len(set(idx[20:].tolist())) == 5
    again = torch.cat(list(sampled_epoch_batches(10, 25, 5, 0, 0, session, CPU)))
    assert torch.equal(idx, again)
    assert not torch.equal(idx, torch.cat(list(sampled_epoch_batches(10, 25, 5, 1, 0, session, CPU))))


def test_float64_trains_in_double(digits, one_torch_thread):
    run = make_run(digits, float64=True, epochs=1, probe_every=1)
    before = [p.detach().clone() for p in run.student.parameters()]
    session = train(run)
    params = list(run.student.parameters()) + list(run.teacher.parameters())
    assert all(p.dtype == torch.float64 for p in params)
    assert any(not torch.equal(a, b) for a, b in zip(before, run.student.parameters()))
    assert all(torch.isfinite(p).all() for p in params)
    assert math.isfinite(session.history[-1]["train_loss"]) and "knn_acc" in session.history[-1]


@pytest.mark.parametrize("bad,fragment", [
    ({"betas": [0.9, 1.0]}, "betas"),
    ({"betas": [-0.1, 0.9]}, "betas"),
    ({"optimizer": "sgd", "betas": [0.8, 0.9]}, "betas"),
    ({"min_lr": 1.0}, "min_lr"),
    ({"min_lr": 1e-6, "schedule": "constant"}, "min_lr"),
    ({"min_lr": -1.0}, "min_lr"),
    ({"weight_decay_end": -0.1}, "weight_decay_end"),
    ({"n_steps": 0}, "n_steps"),
    ({"batch_accum": 0}, "batch_accum"),
    ({"samples_per_epoch": 100}, "samples_per_epoch"),
    ({"samples_per_epoch": 300, "batch_accum": 3}, "samples_per_epoch"),
    ({"n_samples": 300, "batch_accum": 3}, "batch_accum"),
])
def test_bad_optimisation_params_are_named(bad, fragment):
    with pytest.raises(ValueError) as err:
        DinoParams.model_validate({**TINY, **bad})
    assert fragment in str(err.value)


def test_run_time_errors_name_the_key(digits):
    with pytest.raises(ValueError, match="batch_accum"):
        make_run(digits, batch_accum=1000)
    with pytest.raises(ValueError, match="n_steps"):
        make_run(digits, n_steps=3, warmup_epochs=1)
