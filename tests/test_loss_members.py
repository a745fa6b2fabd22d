"""Vectorised member losses (``DistillLoss.forward_members``), which a fused trial uses in place of
K separate ``forward`` calls: each member's loss, components and gradient equal its own forward's."""
import pytest
import torch

from trainables.losses import LossInputs, create_loss
from trainables.losses.base import DistillLoss

PARAMS = {
    "kd": [{"temperature": 4.0, "kd_weight": 0.9, "label_weight": 1.0},
           {"temperature": 1.0, "kd_weight": 0.0, "label_weight": 0.5, "label_smoothing": 0.1},
           {"temperature": 8.0, "kd_weight": 2.0, "label_weight": 0.0, "label_smoothing": 0.3}],
    "ce": [{}, {"label_smoothing": 0.1}, {"label_smoothing": 0.4}],
    # epoch 1 of 10: rate 0.3 ramps (1 / 3), rate 0 does not, rate 0.05 has ended (floor(0.5) = 0)
    "augconf": [{"temperature": 2.0, "threshold": 0.5, "rate": 0.3},
                {"temperature": 1.0, "threshold": 0.9, "rate": 0.0, "kd_weight": 0.7, "label_smoothing": 0.1},
                {"temperature": 4.0, "threshold": 0.2, "rate": 0.05, "label_weight": 0.0}],
    # both confidence readings in one fused trial, and a ramp
    "adaptconf": [{"temperature": 2.0, "threshold": 0.5},
                  {"temperature": 1.0, "threshold": 0.1, "confidence": "teacher_self", "rate": 0.3},
                  {"temperature": 4.0, "threshold": 2.0, "kd_weight": 0.5, "label_smoothing": 0.2}],
    # epoch 1: warm-up 20 (w = 2 / 20), none (w = 1), 2 (w = 1); soft targets use their argmax
    "dkd": [{},
            {"temperature": 1.0, "alpha": 0.5, "beta": 2.0, "warmup_epochs": 0, "label_smoothing": 0.1},
            {"temperature": 2.0, "beta": 4.0, "label_weight": 0.0, "warmup_epochs": 2}],
    # progress 0.1: warm-up 0.05 has ended (coef = aux_coef), 0.5 has not (coef = aux_coef * 0.1)
    "auxconf": [{}, {"aux_coef": 0.9, "warmup_frac": 0.5}, {"aux_coef": 0.2, "warmup_frac": 0.05}],
}
VECTORISED = sorted(PARAMS)


@pytest.mark.parametrize("name", VECTORISED)
@pytest.mark.parametrize("soft", [False, True], ids=["labels", "probability targets"])
def test_members_equal_their_own_forward(name, soft):
    gen = torch.Generator().manual_seed(0)
    k, n, c = len(PARAMS[name]), 12, 7
    z = torch.randn(k, n, c, generator=gen, requires_grad=True)
    teacher = torch.randn(n, c, generator=gen)
    targets = torch.softmax(torch.randn(n, c, generator=gen), -1) if soft else torch.randint(0, c, (n,), generator=gen)
    losses = [create_loss(name, p, num_classes=c) for p in PARAMS[name]]
    assert type(losses[0]).vectorised_members

    def inputs(logits):
        return LossInputs(student_logits=logits, targets=targets, teacher_logits=teacher, epoch=1, num_epochs=10,
                          progress=0.1)

    together = type(losses[0]).forward_members(losses, inputs(z))
    torch.stack([s["loss"] for s in together]).sum().backward()
    grad_together = z.grad.clone()
    z.grad = None
    alone = [loss(inputs(z[i])) for i, loss in enumerate(losses)]
    torch.stack([s["loss"] for s in alone]).sum().backward()

    for mine, ref in zip(together, alone):
        assert set(mine) == set(ref)
        for key in ref:
            assert mine[key].item() == pytest.approx(ref[key].item(), abs=1e-5), key
    assert torch.allclose(grad_together, z.grad, atol=1e-6)
    # The members differ, so equal values are not an accident of equal settings.
    assert len({round(s["loss"].item(), 4) for s in alone}) == k


@pytest.mark.parametrize("name", VECTORISED)
def test_epoch_columns_passed_in_give_what_the_epoch_gives(name):
    """A compiled fused step passes ``epoch_columns`` (computed outside its graph) instead of
    letting ``forward_members`` read the epoch: the same losses either way, at the distill loop's
    progress epoch / epochs, early in a warm-up and after it."""
    gen = torch.Generator().manual_seed(1)
    losses = [create_loss(name, p, num_classes=7) for p in PARAMS[name]]
    z, teacher, targets = torch.randn(3, 5, 7, generator=gen), torch.randn(5, 7, generator=gen), torch.arange(5)
    for epoch in (0, 1, 9):
        def inputs(columns):
            return LossInputs(student_logits=z, targets=targets, teacher_logits=teacher, epoch=epoch, num_epochs=10,
                              progress=epoch / 10, member_columns=columns)

        columns = type(losses[0]).epoch_columns(losses, epoch, 10, torch.device("cpu"))
        for passed, read in zip(type(losses[0]).forward_members(losses, inputs(columns)),
                                type(losses[0]).forward_members(losses, inputs(None)), strict=True):
            for key in read:
                assert passed[key].item() == pytest.approx(read[key].item(), abs=1e-6), (epoch, key)


def test_the_superalignment_members_weigh_self_training_by_their_own_alpha():
    """AugConf's alpha per member at epoch 1 of 10, by hand: theta * ramp, ramp = e / (E r) while
    e < floor(E r), else 1."""
    losses = [create_loss("augconf", p, num_classes=7) for p in PARAMS["augconf"]]
    z = torch.randn(3, 4, 7)
    out = type(losses[0]).forward_members(losses, LossInputs(student_logits=z, targets=torch.zeros(4).long(),
                                                             teacher_logits=torch.randn(4, 7), epoch=1,
                                                             num_epochs=10))
    assert [s["alpha"].item() for s in out] == pytest.approx([0.5 * 1 / 3, 0.9, 0.2])


def test_a_loss_without_a_vectorised_form_says_so():
    class Plain(DistillLoss):
        registry_name = "plain"

    assert not Plain.vectorised_members
    with pytest.raises(NotImplementedError, match="'plain' has no vectorised form"):
        Plain.forward_members([], LossInputs(student_logits=torch.zeros(1, 1, 2), targets=torch.zeros(1)))
