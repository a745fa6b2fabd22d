"""Sel-CL+'s bootstrapped label term (``bootstrap_beta`` / ``bootstrap_start`` of ``distill``):
the soft target against the authors' four-term sum (``criterionMixBoot``), the mixing weight each
prepared batch carries, the epoch it starts in, and the parse-time refusals."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from trainables.core.config import first_problem
from trainables.data import DatasetSplits
from trainables.distill.loop import optim_config
from trainables.distill.params import DistillParams
from trainables.losses import LossInputs, create_loss
from trainables.losses.base import DistillLoss, LossParams
from trainables.models import Classifier
from trainables.runtime.session import LocalSession
from trainables.training.batch_augment import batch_augment_of
from trainables.training.classifier_loop import ClassifierRun, OptimConfig, bootstrap_targets, train_classifier
from trainables.training.recipe import AugmentParams
from trainables.training.views import PlainViews

CPU = torch.device("cpu")
B = 0.2


def onehot(labels, classes):
    return torch.eye(classes)[labels]


def authors_loss(logits, y, z, lam, beta):
    """criterionMixBoot's four terms, partner = mirror in the batch (per-sample, unreduced)."""
    ce = lambda t: F.cross_entropy(logits, t, reduction="none")  # noqa: E731
    y_a, y_b, z_a, z_b = y, y.flip(0), z, z.flip(0)
    return (lam * (1 - beta) * ce(y_a) + lam * beta * ce(z_a)
            + (1 - lam) * (1 - beta) * ce(y_b) + (1 - lam) * beta * ce(z_b))


def soft_ce(logits, target):
    return -(target * torch.log_softmax(logits, 1)).sum(1)


# the soft target -------------------------------------------------------------------------------

def test_mixed_bootstrap_target_is_the_hand_computed_mixture_and_gives_the_authors_four_terms():
    y, z, lam, C = torch.tensor([0, 1, 2, 1]), torch.tensor([2, 1, 0, 0]), 0.7, 3
    mixed = lam * onehot(y, C) + (1 - lam) * onehot(y.flip(0), C)  # what timm's batch mixup gives
    target = bootstrap_targets(mixed, z, lam, B, C)
    # by hand: row 0 has y_a 0, y_b 1 (y[3]), z_a 2, z_b 0 (z[3]):
    # 0.8 * (0.7 e0 + 0.3 e1) + 0.2 * (0.7 e2 + 0.3 e0) = 0.62 e0 + 0.24 e1 + 0.14 e2
    # row 1 has y_a 1, y_b 2 (y[2]), z_a 1, z_b 0 (z[2]):
    # 0.8 * (0.7 e1 + 0.3 e2) + 0.2 * (0.7 e1 + 0.3 e0) = 0.06 e0 + 0.70 e1 + 0.24 e2
    assert torch.allclose(target[0], torch.tensor([0.62, 0.24, 0.14]))
    assert torch.allclose(target[1], torch.tensor([0.06, 0.70, 0.24]))
    assert torch.allclose(target.sum(1), torch.ones(4))
    logits = torch.randn(4, C, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(soft_ce(logits, target), authors_loss(logits, y, z, lam, B), atol=1e-6)
    # and a registered loss takes it as its label term
    ce = create_loss("ce")(LossInputs(student_logits=logits, targets=target))["loss"]
    assert ce.item() == pytest.approx(authors_loss(logits, y, z, lam, B).mean().item(), abs=1e-6)


def test_unmixed_bootstrap_target_from_labels_is_the_two_term_mixture():
    y, z, C = torch.tensor([0, 1, 2, 1]), torch.tensor([2, 1, 0, 0]), 3
    target = bootstrap_targets(y, z, 1.0, B, C)
    expected = torch.tensor([[0.8, 0.0, 0.2], [0.0, 1.0, 0.0], [0.2, 0.0, 0.8], [0.2, 0.8, 0.0]])
    assert torch.allclose(target, expected)
    logits = torch.randn(4, C, generator=torch.Generator().manual_seed(1))
    # with lam 1 the partner terms vanish: 0.8 CE(y) + 0.2 CE(z)
    assert torch.allclose(soft_ce(logits, target), authors_loss(logits, y, z, 1.0, B), atol=1e-6)


# the lam each batch carries ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_batch_augment_reports_the_lam_it_mixed_images_and_targets_with(kind):
    np.random.seed(0)
    aug = batch_augment_of(AugmentParams(**{f"{kind}_alpha": 1.0}), (0.0,), (1.0,), 5)
    x = torch.arange(6 * 8 * 8, dtype=torch.float32).view(6, 1, 8, 8)  # every pixel distinct
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    out, target, lam = aug.mixed(x.clone(), y)
    assert isinstance(lam, float) and 0.0 < lam < 1.0
    assert torch.allclose(target, lam * onehot(y, 5) + (1 - lam) * onehot(y.flip(0), 5))
    if kind == "mixup":
        assert torch.allclose(out, lam * x + (1 - lam) * x.flip(0))
    else:  # the area-corrected lam: the share of each image's pixels kept
        kept = (out == x).float().mean(dim=(1, 2, 3))
        assert torch.allclose(kept, torch.full((6,), lam))
    # the plain call gives the same batch without the lam
    np.random.seed(0)
    out2, target2 = aug(x.clone(), y)
    assert torch.equal(out2, out) and torch.equal(target2, target)


# the epoch it starts in -------------------------------------------------------------------------

class Linear(Classifier):
    def __init__(self, dim: int, classes: int, norm: bool = False):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim) if norm else nn.Identity()
        self.head = nn.Linear(dim, classes)
        self.num_features = dim

    def forward_features(self, x):
        return self.norm(x)


class Recording(DistillLoss):
    """Cross-entropy that keeps what it was given."""
    needs_teacher = False

    def __init__(self):
        super().__init__(LossParams())
        self.seen = []

    def forward(self, inputs: LossInputs):
        self.seen.append((inputs.epoch, inputs.indices.clone(), inputs.targets.clone(),
                          inputs.student_logits.detach().clone()))
        loss = F.cross_entropy(inputs.student_logits, inputs.targets)
        return {"loss": loss}


def two_class_data(n=32, dim=4, seed=0) -> DatasetSplits:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3 * n, dim, generator=g)
    y = (x[:, 0] + 0.8 * torch.randn(3 * n, generator=g) > 0).long()  # noisy labels: z and y disagree
    return DatasetSplits("toy", x[:n], y[:n], x[n:2 * n], y[n:2 * n], x[2 * n:], y[2 * n:], 2, (0.0,), (1.0,))


def test_targets_are_plain_before_bootstrap_start_and_bootstrapped_from_it():
    d, loss = two_class_data(), Recording()
    torch.manual_seed(0)
    train_classifier(model=Linear(4, 2), data=d, loss_fn=loss, session=LocalSession(CPU), seed=0,
                     optim=OptimConfig(epochs=3, batch_size=8, lr=0.5, bootstrap_beta=B, bootstrap_start=1))
    assert [e for e, *_ in loss.seen] == [0] * 4 + [1] * 4 + [2] * 4
    disagree = 0
    for epoch, idx, targets, logits in loss.seen:
        y = d.train_y[idx]
        if epoch < 1:
            assert torch.equal(targets, y)
            continue
        # unmixed, un-augmented and without batch-norm: the step's own logits are the clean-view prediction
        z = logits.argmax(1)
        assert targets.shape == (len(idx), 2)
        assert torch.allclose(targets, (1 - B) * onehot(y, 2) + B * onehot(z, 2))
        disagree += int((z != y).sum())
    assert disagree > 0  # the bootstrap part moved some targets off their labels


def test_mixed_batches_bootstrap_with_their_own_lam_and_the_clean_view_prediction():
    d, loss = two_class_data(), Recording()
    torch.manual_seed(0)
    np.random.seed(0)
    run = ClassifierRun(Linear(4, 2), d, loss, OptimConfig(epochs=2, batch_size=8, lr=0.5, bootstrap_beta=B,
                                                           bootstrap_start=1),
                        LocalSession(CPU), 0, None, PlainViews(), {},
                        batch_augment_of(AugmentParams(mixup_alpha=1.0), d.mean, d.std, 2))
    prepared, own = [], []
    prepare, predictions = run.prepare, run.own_predictions
    run.prepare = lambda idx: (prepared.append(prepare(idx)), prepared[-1])[1]

    def recorded(idx):
        z = predictions(idx)
        head = run.model.head  # the prediction is the model's on the clean images, at this step
        assert torch.equal(z, F.linear(d.train_x[idx], head.weight, head.bias).argmax(1))
        own.append(z)
        return z

    run.own_predictions = recorded
    for epoch in range(2):
        run.train_epoch(epoch)
    assert len(prepared) == 8 and len(own) == 4  # the clean forward runs from bootstrap_start only
    lams = [lam for *_, lam in prepared]
    assert len(set(lams)) == 8 and all(0.0 < lam < 1.0 for lam in lams)
    for k, ((epoch, idx, targets, _), (_, yb, _, lam)) in enumerate(zip(loss.seen, prepared)):
        y = d.train_y[idx]
        plain = lam * onehot(y, 2) + (1 - lam) * onehot(y.flip(0), 2)
        assert torch.allclose(yb, plain)
        if epoch == 0:
            assert torch.allclose(targets, plain)
        else:
            z = own[k - 4]
            own_mixed = lam * onehot(z, 2) + (1 - lam) * onehot(z.flip(0), 2)
            assert torch.allclose(targets, (1 - B) * plain + B * own_mixed)


def test_the_clean_forward_runs_in_train_mode_and_updates_batch_norm_statistics():
    d = two_class_data()
    torch.manual_seed(0)
    model = Linear(4, 2, norm=True)
    run = ClassifierRun(model, d, create_loss("ce"), OptimConfig(epochs=2, batch_size=8, lr=0.1, bootstrap_beta=B,
                                                                 bootstrap_start=1),
                        LocalSession(CPU), 0, None, PlainViews(), {})
    run.train_epoch(0)
    assert int(model.norm.num_batches_tracked) == 4  # one forward per step
    run.train_epoch(1)
    assert int(model.norm.num_batches_tracked) == 4 + 2 * 4  # and the clean one


@pytest.mark.parametrize("mixing", [False, True])
def test_a_bootstrapped_step_makes_no_host_sync(mixing, one_torch_thread):
    from trainables.runtime.sync_check import SyncCheck

    d = two_class_data()
    torch.manual_seed(0)
    augment = batch_augment_of(AugmentParams(mixup_alpha=1.0 if mixing else 0.0), d.mean, d.std, 2)
    run = ClassifierRun(Linear(4, 2, norm=True), d, create_loss("ce"), OptimConfig(epochs=2, batch_size=8, lr=0.1,
                                                                                   bootstrap_beta=B),
                        LocalSession(CPU), 0, None, PlainViews(), {}, augment)
    with SyncCheck() as check:
        outs = run.step(0, [torch.arange(8)])  # the batch is prepared under the check too
    assert check.syncs == [], check.report()
    assert torch.isfinite(outs[0]["loss"])
    assert int(run.model.norm.num_batches_tracked) == 2  # the bootstrapped path ran


# parse-time refusals ----------------------------------------------------------------------------

def problem(**kwargs) -> str:
    with pytest.raises(ValidationError) as err:
        DistillParams(**kwargs)
    return first_problem(err.value)


@pytest.mark.parametrize("value, accepted", [(1.0, "less than 1"), (-0.1, "greater than or equal to 0")])
def test_a_beta_outside_0_1_is_refused(value, accepted):
    assert problem(bootstrap_beta=value) == f"bootstrap_beta: input should be {accepted}"


def test_a_negative_start_is_refused():
    assert problem(bootstrap_start=-1) == "bootstrap_start: input should be greater than or equal to 0"


def test_a_start_past_the_last_epoch_is_refused_only_when_the_term_is_on():
    msg = problem(bootstrap_beta=0.2, bootstrap_start=20, epochs=20)
    assert msg == ("bootstrap_start: 20 is not an epoch of the trial; with bootstrap_beta 0.2 it must be below "
                   "epochs (20), 0-based")
    assert DistillParams(bootstrap_beta=0.0, bootstrap_start=20, epochs=20).bootstrap_start == 20
    assert DistillParams(bootstrap_beta=0.2, bootstrap_start=19, epochs=20).bootstrap_start == 19


def test_a_fused_trial_with_the_term_is_refused():
    msg = problem(bootstrap_beta=0.2, bootstrap_start=5, vectorize=2, probes=[{"lr": 0.1}, {"lr": 0.2}])
    assert msg.startswith("bootstrap_beta: fused trials do not support bootstrap_beta 0.2")
    assert DistillParams(vectorize=2, probes=[{"lr": 0.1}, {"lr": 0.2}]).bootstrap_beta == 0.0


def test_a_labels_only_loss_is_refused(monkeypatch):
    from trainables.losses import loss_class

    monkeypatch.setattr(loss_class("kd"), "soft_targets", False)
    assert problem(loss="kd", bootstrap_beta=0.2).startswith("bootstrap_beta: loss 'kd' takes class labels only")


def test_the_keys_reach_the_loop():
    optim = optim_config(DistillParams(bootstrap_beta=0.2, bootstrap_start=30, epochs=70))
    assert (optim.bootstrap_beta, optim.bootstrap_start) == (0.2, 30)
    plain = optim_config(DistillParams())
    assert (plain.bootstrap_beta, plain.bootstrap_start) == (0.0, 0)


def test_the_no_teacher_control_keeps_the_term():
    from trainables.distill.trainable import distill_control

    config = {"loss": "kd", "bootstrap_beta": 0.2, "bootstrap_start": 30, "epochs": 70}
    control = DistillParams(**{**config, **distill_control(config)})
    assert (control.loss, control.bootstrap_beta, control.bootstrap_start) == ("ce", 0.2, 30)
