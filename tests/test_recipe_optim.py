"""The training-recipe layer (issue 14): weight-decay grouping, Nesterov / plain momentum, Adam betas,
warm-up start / cosine floor / step decays, gradient accumulation, model EMA and top-5, each
checked against a hand computation, plus the parse-time errors."""
import math

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from trainables.data import DatasetSplits
from trainables.distill.params import DistillParams
from trainables.losses import create_loss
from trainables.models import Classifier, create_model
from trainables.runtime.engine import build_scheduler, evaluate
from trainables.runtime.session import LocalSession
from trainables.training.classifier_loop import ClassifierRun, OptimConfig, train_classifier
from trainables.training.views import PlainViews

CPU = torch.device("cpu")


class Linear(Classifier):
    """A linear classifier on flat inputs: its ``head`` is the whole model."""

    def __init__(self, dim: int, classes: int):
        super().__init__()
        self.head = nn.Linear(dim, classes)
        self.num_features = dim

    def forward_features(self, x):
        return x


def data(n=32, dim=6, classes=4, seed=0) -> DatasetSplits:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3 * n, dim, generator=g)
    y = torch.randint(0, classes, (3 * n,), generator=g)
    return DatasetSplits("toy", x[:n], y[:n], x[n:2 * n], y[n:2 * n], x[2 * n:], y[2 * n:], classes, (0.0,), (1.0,))


def run_for(model, optim: OptimConfig, d=None, session=None) -> ClassifierRun:
    return ClassifierRun(model, d or data(), create_loss("ce"), optim, session or LocalSession(CPU), 0, None,
                         PlainViews(), {})


def cnn():
    torch.manual_seed(0)
    return create_model("cnn_small", num_classes=10, input_shape=(1, 8, 8))


def image_data():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(48, 1, 8, 8, generator=g), torch.randint(0, 10, (48,), generator=g)
    return DatasetSplits("toy", x[:16], y[:16], x[16:32], y[16:32], x[32:], y[32:], 10, (0.0,), (1.0,))


# weight decay grouping -------------------------------------------------------------------------

def decay_of(run: ClassifierRun) -> dict[int, float]:
    return {id(p): g["weight_decay"] for g in run.optimizer.param_groups for p in g["params"]}


def test_no_weight_decay_on_biases_and_norm_parameters_by_default():
    model = cnn()
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm, nn.BatchNorm1d))]
    assert norms, "the test needs a model with norm layers"
    run = run_for(model, OptimConfig(epochs=1, batch_size=8, lr=0.1, weight_decay=5e-4), image_data())
    wd = decay_of(run)
    for name, p in model.named_parameters():
        expected = 0.0 if (p.ndim <= 1 or name.endswith(".bias")) else 5e-4
        assert wd[id(p)] == expected, name
    assert all(wd[id(n.weight)] == 0.0 for n in norms)
    assert run.optimizer.param_groups[0]["lr"] == 0.1


def test_switching_the_exclusion_off_decays_every_parameter():
    model = cnn()
    run = run_for(model, OptimConfig(epochs=1, batch_size=8, lr=0.1, weight_decay=5e-4, wd_exclude_1d=False),
                  image_data())
    assert set(decay_of(run).values()) == {5e-4}
    assert len(decay_of(run)) == len(list(model.parameters()))


def test_head_multiplier_and_decay_groups_combine():
    model = cnn()
    run = run_for(model, OptimConfig(epochs=1, batch_size=8, lr=0.1, weight_decay=5e-4, head_lr_mult=10.0),
                  image_data())
    head = {id(p) for p in model.head.parameters()}
    for g in run.optimizer.param_groups:
        ids = {id(p) for p in g["params"]}
        assert ids <= head or not ids & head  # a group is all head or all body
        assert g["lr"] == pytest.approx(1.0 if ids <= head else 0.1)
    assert {decay_of(run)[id(model.head.bias)], decay_of(run)[id(model.head.weight)]} == {0.0, 5e-4}


# optimiser flags -------------------------------------------------------------------------------

@pytest.mark.parametrize("nesterov", [True, False])
def test_nesterov_flag_reaches_sgd(nesterov):
    run = run_for(Linear(6, 4), OptimConfig(epochs=1, batch_size=8, lr=0.1, nesterov=nesterov))
    assert isinstance(run.optimizer, torch.optim.SGD)
    assert all(g["nesterov"] is nesterov and g["momentum"] == 0.9 for g in run.optimizer.param_groups)


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_betas_reach_the_optimizer(name):
    run = run_for(Linear(6, 4), OptimConfig(epochs=1, batch_size=8, lr=0.1, optimizer=name, betas=(0.8, 0.95)))
    assert all(g["betas"] == (0.8, 0.95) for g in run.optimizer.param_groups)


# schedules -------------------------------------------------------------------------------------

def lrs(scheduler_kwargs, steps, lr=0.1):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    sched = build_scheduler(optimizer=opt, lr=lr, **scheduler_kwargs)
    out = [opt.param_groups[0]["lr"]]
    for _ in range(steps):
        opt.step()
        sched.step()
        out.append(opt.param_groups[0]["lr"])
    return out  # out[t]: the lr used by update t (out[steps]: after the last)


def test_warmup_starts_from_warmup_lr_and_cosine_ends_at_min_lr():
    got = lrs({"name": "cosine", "total_steps": 10, "warmup_steps": 4, "warmup_lr": 0.01, "min_lr": 0.002}, 10)
    assert got[0] == pytest.approx(0.01 + (0.1 - 0.01) * 1 / 4)
    assert got[2] == pytest.approx(0.01 + (0.1 - 0.01) * 3 / 4)
    assert got[4] == pytest.approx(0.1)  # first cosine step: progress 0
    assert got[7] == pytest.approx(0.002 + (0.1 - 0.002) * 0.5 * (1 + math.cos(math.pi * 3 / 6)))
    assert got[10] == pytest.approx(0.002)


def test_default_warmup_and_floor_keep_the_old_schedule():
    got = lrs({"name": "cosine", "total_steps": 8, "warmup_steps": 2}, 8)
    assert got[0] == pytest.approx(0.1 * 1 / 2) and got[1] == pytest.approx(0.1)
    assert got[8] == pytest.approx(0.0, abs=1e-12)


def test_step_and_multistep_decay():
    got = lrs({"name": "step", "total_steps": 12, "decay_steps": 3, "decay_rate": 0.5}, 12)
    assert [got[t] for t in (0, 2, 3, 7, 11)] == pytest.approx([0.1, 0.1, 0.05, 0.025, 0.0125])
    got = lrs({"name": "multistep", "total_steps": 12, "milestones": (2, 5), "decay_rate": 0.1}, 12)
    assert [got[t] for t in (1, 2, 4, 5, 11)] == pytest.approx([0.1, 0.01, 0.01, 0.001, 0.001])


def test_the_loop_reports_min_lr_after_the_last_step_and_counts_epochs_in_updates():
    s = LocalSession(CPU)
    train_classifier(model=Linear(6, 4), data=data(), loss_fn=create_loss("ce"), session=s, seed=0,
                     optim=OptimConfig(epochs=3, batch_size=8, lr=0.1, min_lr=0.003, accum_steps=2))
    assert s.history[-1]["lr"] == pytest.approx(0.003)
    s = LocalSession(CPU)
    # 32 samples, micro-batch 8, 2 per update: 2 updates an epoch; milestone at epoch 1 = update 2.
    run = run_for(Linear(6, 4), OptimConfig(epochs=3, batch_size=8, lr=0.1, schedule="multistep", milestones=(1,),
                                            decay_rate=0.5, accum_steps=2), session=s)
    run.train_epoch(0)
    assert run.scheduler.last_epoch == 2 and run.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


# gradient accumulation -------------------------------------------------------------------------

def test_two_micro_batches_update_as_one_batch_of_both():
    plain = dict(epochs=1, lr=0.5, momentum=0.0, weight_decay=0.0, schedule="constant")
    finals = []
    for batch, k in ((16, 2), (32, 1)):
        torch.manual_seed(1)
        model = Linear(6, 4)
        run = run_for(model, OptimConfig(batch_size=batch, accum_steps=k, **plain))
        run.train_epoch(0)  # 32 samples: one update either way
        assert run.scheduler.last_epoch == 1
        finals.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*finals):
        assert torch.allclose(a, b, atol=1e-6)


# model EMA -------------------------------------------------------------------------------------

def test_ema_follows_the_hand_computed_average():
    torch.manual_seed(2)
    model = Linear(6, 4)
    d = data()
    run = run_for(model, OptimConfig(epochs=1, batch_size=8, lr=0.3, ema_decay=0.8), d)
    ema = [p.detach().clone() for p in model.parameters()]
    batches = [torch.arange(i, i + 8) for i in range(0, 32, 8)]
    for idx in batches:
        run.step(0, [idx])
        ema = [0.8 * e + 0.2 * p.detach() for e, p in zip(ema, model.parameters())]
    for e, p in zip(ema, run.ema.module.parameters()):
        assert torch.allclose(e, p, atol=1e-6)
    metrics = run.epoch_metrics(0, {"train_loss": 0.0})
    assert metrics["ema_val_acc"] == evaluate(run.ema.module, d.val_x, d.val_y, run.session)["acc"]
    assert "ema_test_acc" in metrics and "val_top5" not in metrics  # 4 classes: no top-5


def test_a_resumed_run_with_ema_continues_identically(tmp_path):
    optim = OptimConfig(epochs=4, batch_size=8, lr=0.2, ema_decay=0.9)

    def train(session):
        torch.manual_seed(3)
        return train_classifier(model=Linear(6, 4), data=data(), loss_fn=create_loss("ce"), session=session,
                                seed=0, optim=optim, checkpoint_every=2)

    full = LocalSession(CPU)
    train(full)

    class Crash(Exception):
        pass

    first = LocalSession(CPU, checkpoint_dir=str(tmp_path / "ckpt"))

    def report(metrics, checkpoint=None, _orig=first.report):
        _orig(metrics, checkpoint)
        if metrics["epoch"] == 2:
            raise Crash

    first.report = report
    with pytest.raises(Crash):
        train(first)
    assert "ema" in first.last_state
    resumed = LocalSession(CPU, checkpoint_dir=str(tmp_path / "ckpt"))
    train(resumed)
    assert [h["epoch"] for h in resumed.history] == [3, 4]
    for key in ("train_loss", "ema_val_acc", "ema_test_acc", "val_loss"):
        assert resumed.history[-1][key] == pytest.approx(full.history[-1][key], abs=1e-6)
    for name, value in full.last_state["ema"].items():
        assert torch.allclose(value, resumed.last_state["ema"][name], atol=1e-6), name


# top-5 -----------------------------------------------------------------------------------------

class Fixed(nn.Module):
    """Returns its input as logits."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x


def test_top5_matches_a_hand_count():
    logits = torch.tensor([[7., 6, 5, 4, 3, 2, 1],   # y=4: rank 5, in the top 5
                           [7., 6, 5, 4, 3, 2, 1],   # y=5: rank 6, out
                           [1., 2, 3, 4, 5, 6, 7]])  # y=0: rank 7, out
    y = torch.tensor([4, 5, 0])
    out = evaluate(Fixed(), logits, y, LocalSession(CPU))
    assert out["top5"] == pytest.approx(1 / 3) and out["acc"] == 0.0
    assert "top5" not in evaluate(Fixed(), logits[:, :5], torch.tensor([4, 0, 0]), LocalSession(CPU))


def test_the_loop_reports_top5_with_more_than_five_classes():
    run = run_for(cnn(), OptimConfig(epochs=1, batch_size=8, lr=0.1), image_data())
    metrics = run.epoch_metrics(0, {"train_loss": 0.0})
    assert 0.0 <= metrics["val_acc"] <= metrics["val_top5"] <= 1.0 and "test_top5" in metrics


# parse-time errors -----------------------------------------------------------------------------

@pytest.mark.parametrize("bad, key", [
    ({"min_lr": 0.1}, "min_lr"),
    ({"warmup_lr": 0.2}, "warmup_lr"),
    ({"milestones": [5, 3]}, "milestones"),
    ({"milestones": [25]}, "milestones"),
    ({"schedule": "multistep"}, "milestones"),
    ({"accum_steps": 0}, "accum_steps"),
    ({"ema_decay": 1.0}, "ema_decay"),
    ({"ema_decay": 0.0}, "ema_decay"),
    ({"betas": [0.9, 1.0]}, "betas"),
    ({"teacher": {"min_lr": 1.0}}, "teacher.min_lr"),
    ({"teacher": {"schedule": "multistep", "milestones": [40]}}, "teacher.milestones"),
])
def test_bad_recipe_values_are_refused_at_parse_time_naming_the_key(bad, key):
    with pytest.raises(ValidationError) as err:
        DistillParams(lr=0.05, epochs=20, **bad)
    assert key in str(err.value)


def test_recipe_keys_reach_the_teacher_and_student_optim():
    p = DistillParams(nesterov=False, betas=[0.8, 0.9], min_lr=1e-3, accum_steps=2, ema_decay=0.99,
                      teacher={"schedule": "step", "decay_epochs": 10, "wd_exclude_1d": False, "warmup_epochs": 2})
    t = p.teacher.optim()
    assert (t.schedule, t.decay_epochs, t.wd_exclude_1d, t.warmup_epochs) == ("step", 10, False, 2)
    assert p.recipe_fields()["betas"] == (0.8, 0.9) and p.recipe_fields()["accum_steps"] == 2
