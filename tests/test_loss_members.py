"""Vectorised member losses (``DistillLoss.forward_members``), which a fused trial uses in place of
K separate ``forward`` calls: each member's loss, components and gradient equal its own forward's."""
import pytest
import torch

from trainables.losses import LossInputs, create_loss
from trainables.losses.base import DistillLoss

PARAMS = [{"temperature": 4.0, "kd_weight": 0.9, "label_weight": 1.0},
          {"temperature": 1.0, "kd_weight": 0.0, "label_weight": 0.5, "label_smoothing": 0.1},
          {"temperature": 8.0, "kd_weight": 2.0, "label_weight": 0.0, "label_smoothing": 0.3}]


@pytest.mark.parametrize("soft", [False, True], ids=["labels", "probability targets"])
def test_kd_members_equal_their_own_forward(soft):
    gen = torch.Generator().manual_seed(0)
    k, n, c = len(PARAMS), 12, 7
    z = torch.randn(k, n, c, generator=gen, requires_grad=True)
    teacher = torch.randn(n, c, generator=gen)
    targets = torch.softmax(torch.randn(n, c, generator=gen), -1) if soft else torch.randint(0, c, (n,), generator=gen)
    losses = [create_loss("kd", p, num_classes=c) for p in PARAMS]
    assert type(losses[0]).vectorised_members

    together = type(losses[0]).forward_members(losses, LossInputs(student_logits=z, targets=targets,
                                                                  teacher_logits=teacher))
    torch.stack([s["loss"] for s in together]).sum().backward()
    grad_together = z.grad.clone()
    z.grad = None
    alone = [loss(LossInputs(student_logits=z[i], targets=targets, teacher_logits=teacher))
             for i, loss in enumerate(losses)]
    torch.stack([s["loss"] for s in alone]).sum().backward()

    for mine, ref in zip(together, alone):
        assert set(mine) == set(ref)
        for key in ref:
            assert mine[key].item() == pytest.approx(ref[key].item(), abs=1e-5), key
    assert torch.allclose(grad_together, z.grad, atol=1e-6)
    # The members differ, so equal values are not an accident of equal settings.
    assert len({round(s["loss"].item(), 4) for s in alone}) == k


def test_a_loss_without_a_vectorised_form_says_so():
    class Plain(DistillLoss):
        registry_name = "plain"

    assert not Plain.vectorised_members
    with pytest.raises(NotImplementedError, match="'plain' has no vectorised form"):
        Plain.forward_members([], LossInputs(student_logits=torch.zeros(1, 1, 2), targets=torch.zeros(1)))
