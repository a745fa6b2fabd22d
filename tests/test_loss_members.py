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


# Feature losses with parameters of their own (DAPT's projectors and connectors): the fused trial
# holds each member's loss module stacked (MemberStack) and passes the stacks in.
FEATURE_PARAMS = {
    "align_uniform": [{}, {"temperature": 2.0, "align_alpha": 1.5, "unif_t": 0.5, "embed_weight": 0.7},
                      {"temperature": 8.0, "align_weight": 0.3, "unif_weight": 2.0, "label_smoothing": 0.1,
                       "kd_weight": 0.5, "projector": "mocov2"}],
    "srrl": [{}, {"kd_weight": 0.5, "feat_weight": 0.3, "temperature": 2.0},
             {"srrl_weight": 2.5, "label_weight": 0.4, "label_smoothing": 0.2}],
}


@pytest.mark.parametrize("name", sorted(FEATURE_PARAMS))
def test_feature_loss_members_equal_their_own_forward(name):
    """Each member's loss, parts, and the gradients of its features and of its own projector or
    connector, from the stacked computation, equal its own forward on copies of the same modules."""
    import copy

    from trainables.training.fused import loss_member_stack

    gen = torch.Generator().manual_seed(2)
    k, n, c, ds, dt = 3, 10, 7, 6, 5
    z = torch.randn(k, n, c, generator=gen, requires_grad=True)
    f_s = torch.randn(k, n, ds, generator=gen, requires_grad=True)
    teacher, f_t = torch.randn(n, c, generator=gen), torch.randn(n, dt, generator=gen)
    targets = torch.randint(0, c, (n,), generator=gen)
    head = torch.nn.Linear(dt, c)
    losses = []
    for seed, p in enumerate(FEATURE_PARAMS[name]):
        torch.manual_seed(seed)  # members' own projector inits
        losses.append(create_loss(name, p, num_classes=c, student_dim=ds, teacher_dim=dt, teacher_head=head))
    copies = [copy.deepcopy(loss) for loss in losses]
    stack = loss_member_stack(losses)
    assert stack is not None and stack.params

    def inputs(logits, feats):
        return LossInputs(student_logits=logits, targets=targets, teacher_logits=teacher, student_features=feats,
                          teacher_features=f_t, epoch=1, num_epochs=10, progress=0.1)

    together = type(losses[0]).forward_members(losses, inputs(z, f_s), (stack.params, stack.buffers))
    torch.stack([s["loss"] for s in together]).sum().backward()
    stack.share_grads()
    grads_together = z.grad.clone(), f_s.grad.clone()
    z.grad = f_s.grad = None
    alone = [loss(inputs(z[i], f_s[i])) for i, loss in enumerate(copies)]
    torch.stack([s["loss"] for s in alone]).sum().backward()

    for mine, ref in zip(together, alone):
        assert set(mine) == set(ref)
        for key in ref:
            assert mine[key].item() == pytest.approx(ref[key].item(), rel=1e-5, abs=1e-6), key
    torch.testing.assert_close(grads_together[0], z.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads_together[1], f_s.grad, rtol=1e-5, atol=1e-6)
    for member, ref in zip(losses, copies):
        trained = [(pn, p) for pn, p in ref.named_parameters() if p.requires_grad]
        assert trained
        for pn, p in trained:
            torch.testing.assert_close(member.get_parameter(pn).grad, p.grad, rtol=1e-5, atol=1e-6, msg=pn)
    assert len({round(s["loss"].item(), 4) for s in alone}) == k


def test_a_stateful_loss_needs_its_stacked_members():
    loss = create_loss("srrl", {}, num_classes=3, student_dim=4, teacher_dim=4, teacher_head=torch.nn.Linear(4, 3))
    z = torch.zeros(1, 2, 3)
    with pytest.raises(ValueError, match="'srrl': a fused step passes the members' stacked parameters"):
        type(loss).forward_members([loss], LossInputs(student_logits=z, targets=torch.zeros(2).long(),
                                                      teacher_logits=z[0], student_features=torch.zeros(1, 2, 4),
                                                      teacher_features=torch.zeros(2, 4)))


@pytest.mark.parametrize("dense", [True, False], ids=["dense scores", "gathered rows"])
def test_crd_members_equal_their_own_forward_and_move_their_own_banks(dense):
    """CRD's members, stacked: losses, parts, gradients, normalisers set on the first batch and
    each member's banks moved by its own momentum, as each member's own forward does them (the
    same negatives given to both)."""
    import copy

    from trainables.training.fused import loss_member_stack

    gen = torch.Generator().manual_seed(4)
    k, n_train, b, c, ds, dt, negs = 3, 12, 4, 3, 6, 5, 5
    train_labels = torch.arange(n_train) % c
    idx = torch.tensor([0, 4, 7, 11])
    params = [{"nce_k": negs, "embed_dim": 4}, {"nce_k": negs, "embed_dim": 4, "nce_t": 0.2, "nce_m": 0.1},
              {"nce_k": negs, "embed_dim": 4, "nce_t": 0.5, "nce_m": 0.9, "embed_weight": 2.0, "temperature": 2.0}]
    losses = []
    for seed, p in enumerate(params):
        torch.manual_seed(seed)
        loss = create_loss("crd", p, num_classes=c, student_dim=ds, teacher_dim=dt, num_samples=n_train,
                           train_labels=train_labels)
        loss.dense_scores = lambda batch: dense
        losses.append(loss)
    copies = [copy.deepcopy(loss) for loss in losses]
    stack = loss_member_stack(losses)
    # each member's negatives: other classes than the anchor's (the anchors' labels are 0, 1, 1, 2)
    negatives = torch.stack([torch.stack([torch.randperm(n_train, generator=gen)[:negs] for _ in idx]) for _ in range(k)])
    negatives = torch.where(train_labels[negatives] == train_labels[idx].view(1, -1, 1), (negatives + 1) % n_train,
                            negatives)
    assert not (train_labels[negatives] == train_labels[idx].view(1, -1, 1)).any()
    losses[0].sample_negatives = lambda labels, count: negatives.reshape(k * b, negs)
    for i, loss in enumerate(copies):
        loss.sample_negatives = lambda labels, count, i=i: negatives[i]
    banks_before = [loss.memory.clone() for loss in copies]

    for step in range(2):  # the first sets the normalisers; the second uses them and moved banks
        z = torch.randn(k, b, c, generator=gen, requires_grad=True)
        f_s = torch.randn(k, b, ds, generator=gen, requires_grad=True)
        teacher, f_t, targets = torch.randn(b, c, generator=gen), torch.randn(b, dt, generator=gen), train_labels[idx]

        def inputs(logits, feats):
            return LossInputs(student_logits=logits, targets=targets, teacher_logits=teacher, student_features=feats,
                              teacher_features=f_t, indices=idx, epoch=1, num_epochs=10, progress=0.1)

        together = type(losses[0]).forward_members(losses, inputs(z, f_s), (stack.params, stack.buffers))
        for p in stack.params.values():
            p.grad = None
        torch.stack([s["loss"] for s in together]).sum().backward()
        stack.share_grads()
        grad_f = f_s.grad.clone()
        f_s.grad = None
        alone = [loss(inputs(z[i], f_s[i])) for i, loss in enumerate(copies)]
        for loss in copies:
            loss.zero_grad(set_to_none=True)
        torch.stack([s["loss"] for s in alone]).sum().backward()
        for mine, ref in zip(together, alone):
            assert set(mine) == set(ref)
            for key in ref:
                assert mine[key].item() == pytest.approx(ref[key].item(), rel=1e-5, abs=1e-6), (step, key)
        torch.testing.assert_close(grad_f, f_s.grad, rtol=1e-5, atol=1e-6)
        for member, ref in zip(losses, copies):
            torch.testing.assert_close(member.memory, ref.memory, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(member.z, ref.z, rtol=1e-5, atol=0)
            for pn, p in ref.named_parameters():
                torch.testing.assert_close(member.get_parameter(pn).grad, p.grad, rtol=1e-5, atol=1e-6, msg=pn)
    for before, ref in zip(banks_before, copies):
        assert not torch.equal(before[:, idx], ref.memory[:, idx])  # the batch's slots moved
    assert len({round(s["loss"].item(), 4) for s in alone}) == k
