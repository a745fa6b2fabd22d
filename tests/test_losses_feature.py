"""DAPT's feature distillers (align_uniform, crd, srrl) against their formulas written out in numpy,
with the projector/connector weights read from the module; where gradients flow; memory-bank
updates; batch-size invariance; and state_dict round trips (what DDP checkpoints rely on)."""
import io

import numpy as np
import pytest
import torch
from torch import nn

import loss_formulas as F
from trainables.losses import LossInputs, create_loss, loss_params_model
from trainables.losses import crd as crd_module
from trainables.losses.crd import NCE_EPS, nce_loss
from trainables.runtime.sync_check import SyncCheck

RNG = np.random.default_rng(0)
N, C, DS, DT = 4, 3, 5, 6
S_LOGITS, T_LOGITS = RNG.normal(size=(N, C)), RNG.normal(size=(N, C)) * 2
F_S, F_T = RNG.normal(size=(N, DS)), np.abs(RNG.normal(size=(N, DT)))
Y = np.array([0, 1, 2, 1])
IDX = np.array([3, 0, 7, 5])
TRAIN_LABELS = np.array([1, 0, 0, 0, 2, 1, 2, 2, 0, 1])  # TRAIN_LABELS[IDX] == Y
CONTEXT = {"student_dim": DS, "teacher_dim": DT, "num_classes": C}


def inputs(grad=False, rows=slice(None)):
    arrays = dict(student_logits=S_LOGITS, teacher_logits=T_LOGITS, student_features=F_S, teacher_features=F_T)
    tensors = {k: F.tensor(v[rows], grad) for k, v in arrays.items()}
    inp = LossInputs(targets=torch.tensor(Y[rows]), indices=torch.tensor(IDX[rows]), **tensors)
    return inp, tensors


def build(name, params=None, seed=0, **extra):
    torch.manual_seed(seed)
    return create_loss(name, params or {}, **CONTEXT, **extra)


def projector_np(proj: nn.Sequential, f):
    """mocov2 (Linear-ReLU-Linear) or linear, then L2-normalised."""
    linears = [m for m in proj if isinstance(m, nn.Linear)]
    h = f
    for i, layer in enumerate(linears):
        h = F.linear(layer, h)
        if i < len(linears) - 1:
            h = F.relu(h)
    return F.normalize(h)


def ce_kd(temp, label_w=1.0, kd_w=1.0, rows=slice(None)):
    return label_w * F.ce(S_LOGITS[rows], Y[rows]) + kd_w * F.kd_per_sample(S_LOGITS[rows], T_LOGITS[rows], temp).mean()


def assert_round_trip(make, run):
    """A loss rebuilt with other random weights and loaded from a saved state_dict computes the same."""
    original, other = make(0), make(1)
    expected = run(original)
    buf = io.BytesIO()
    torch.save(original.state_dict(), buf)
    assert run(other) != pytest.approx(expected)
    buf.seek(0)
    other.load_state_dict(torch.load(buf))
    assert run(other) == pytest.approx(run(original), rel=1e-6)


def test_dapt_defaults_reproduce_the_lambda_table():
    # DAPT overrides (λ1 label, λ2 embed, λ3 kd, λ4 srrl) per distiller; kd is our `kd` loss at T = 4.
    au, crd, srrl = (loss_params_model(n)() for n in ("align_uniform", "crd", "srrl"))
    assert (au.label_weight, au.embed_weight, au.kd_weight, au.temperature) == (1, 1, 1, 4)
    assert (crd.label_weight, crd.embed_weight, crd.kd_weight, crd.temperature) == (1, 1, 1, 4)
    assert (srrl.label_weight, srrl.feat_weight, srrl.kd_weight, srrl.srrl_weight) == (1, 1, 0, 1)
    assert loss_params_model("kd")().temperature == 4
    assert (au.align_alpha, au.unif_t, au.align_weight, au.unif_weight, au.projector, au.embed_dim) == \
        (2, 2, 1, 1, "mocov2", 128)
    assert (crd.nce_k, crd.nce_t, crd.nce_m) == (4096, 0.07, 0.5)


# ----------------------------------------------------------------------------------- align_uniform

def uniformity_np(u, t):
    i, j = np.triu_indices(len(u), k=1)
    return np.log(np.mean(np.exp(-t * np.sum((u[i] - u[j]) ** 2, -1))))


@pytest.mark.parametrize("projector", ["mocov2", "linear"])
@pytest.mark.parametrize("rows", [slice(None), slice(0, 3)])
@pytest.mark.parametrize("alpha", [3.0, 2.0])  # 2 (DAPT's) sums squared distances directly
def test_align_uniform_matches_formula(projector, rows, alpha):
    params = {"projector": projector, "embed_dim": 4, "align_alpha": alpha, "unif_t": 1.5, "align_weight": 0.7,
              "unif_weight": 0.4, "embed_weight": 2.0, "kd_weight": 0.5, "temperature": 3.0}
    loss = build("align_uniform", params)
    out = loss(inputs(rows=rows)[0])
    u_s, u_t = projector_np(loss.student_projector, F_S[rows]), projector_np(loss.teacher_projector, F_T[rows])
    align = np.mean(np.linalg.norm(u_s - u_t, axis=-1) ** alpha)
    unif = (uniformity_np(u_s, 1.5) + uniformity_np(u_t, 1.5)) / 2
    assert out["align"].item() == pytest.approx(align, rel=1e-5)
    assert out["unif"].item() == pytest.approx(unif, rel=1e-5)
    expected = ce_kd(3.0, kd_w=0.5, rows=rows) + 2.0 * (0.7 * align + 0.4 * unif)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("projector", ["simclr", "simclrv2"])
def test_simclr_projectors_give_unit_embeddings(projector):
    loss = build("align_uniform", {"projector": projector, "embed_dim": 4})
    u = loss.student_projector(F.tensor(F_S))
    assert u.shape == (N, 4)
    np.testing.assert_allclose(u.norm(dim=1).detach().numpy(), 1.0, rtol=1e-5)


def backward_through(loss):
    """Backpropagate the loss on inputs that require grad; check the teacher side gets none."""
    inp, t = inputs(grad=True)
    loss(inp)["loss"].backward()
    assert t["teacher_features"].grad is None and t["teacher_logits"].grad is None
    assert torch.count_nonzero(t["student_features"].grad) > 0


@pytest.mark.parametrize("name", ["align_uniform", "crd"])
def test_gradients_reach_student_and_both_projectors_not_teacher(name):
    loss = crd_loss() if name == "crd" else build(name)
    backward_through(loss)
    for pname, p in loss.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, pname
    assert all(not b.requires_grad for b in loss.buffers())  # CRD's memory banks are not learned


def test_alignment_at_alpha_2_has_the_norm_squared_gradient():
    """The squared distance summed directly (alpha 2) against the norm raised to 2: the same
    gradient, by hand: d/du_s mean_i ||u_s,i - u_t,i||^2 = 2 (u_s - u_t) / N."""
    from trainables.losses.align_uniform import alignment

    g = torch.Generator().manual_seed(0)
    u_s = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    u_t = torch.randn(5, 3, generator=g, dtype=torch.float64)
    u_t[2] = u_s[2].detach()  # a zero distance: gradient 0 there, not NaN
    (grad,) = torch.autograd.grad(alignment(u_s, u_t, 2.0), u_s)
    torch.testing.assert_close(grad, 2 * (u_s - u_t).detach() / 5)
    (generic,) = torch.autograd.grad(alignment(u_s, u_t, torch.tensor(2.0, dtype=torch.float64)), u_s)
    torch.testing.assert_close(generic, grad)


def test_align_uniform_batch_size_invariance_of_mean_terms():
    # align, CE and KD are means over samples; uniformity is a mean over pairs (checked above at 3 and 4).
    loss = build("align_uniform")
    single = loss(inputs()[0])
    rows = np.r_[0:N, 0:N]
    doubled = loss(inputs(rows=rows)[0])
    for key in ("align", "ce", "kd"):
        assert doubled[key].item() == pytest.approx(single[key].item(), rel=1e-5), key


def test_align_uniform_state_dict_round_trip():
    assert_round_trip(lambda seed: build("align_uniform", seed=seed), lambda loss: loss(inputs()[0])["loss"].item())


# --------------------------------------------------------------------------------------------- CRD

def crd_loss(params=None, seed=0):
    return build("crd", {"projector": "linear", "embed_dim": 4, "nce_k": 3, **(params or {})}, seed=seed,
                 num_samples=len(TRAIN_LABELS), train_labels=torch.tensor(TRAIN_LABELS))


def nce_np(p, n):
    noise = (p.shape[1] - 1) / n
    per_anchor = np.log(p[:, 0] / (p[:, 0] + noise + NCE_EPS)) + \
        np.sum(np.log(noise / (p[:, 1:] + noise + NCE_EPS)), axis=1)
    return -per_anchor.mean()


def test_nce_matches_formula_and_is_batch_size_invariant():
    scores = RNG.uniform(0.01, 2.0, size=(3, 6)) / 50
    assert nce_loss(F.tensor(scores), 50).item() == pytest.approx(nce_np(scores, 50), rel=1e-5)
    doubled = np.concatenate([scores, scores])
    assert nce_loss(F.tensor(doubled), 50).item() == pytest.approx(nce_np(scores, 50), rel=1e-5)


def test_crd_negatives_come_uniformly_from_other_classes():
    assert np.array_equal(TRAIN_LABELS[IDX], Y)
    loss = crd_loss()
    anchors = torch.tensor([0, 1, 2, 1])
    torch.manual_seed(0)
    negatives = loss.sample_negatives(anchors, 4000).numpy()
    for row, label in zip(negatives, anchors.tolist()):
        others = np.flatnonzero(TRAIN_LABELS != label)
        assert set(row) == set(others)  # only other classes, and every one of them
        counts = np.bincount(row, minlength=len(TRAIN_LABELS))[others]
        assert counts.min() > 0.75 * 4000 / len(others) and counts.max() < 1.25 * 4000 / len(others)


def test_crd_matches_formula_and_updates_memory():
    m, tau, n = 0.3, 0.5, len(TRAIN_LABELS)
    loss = crd_loss({"nce_m": m, "nce_t": tau, "kd_weight": 0.5, "embed_weight": 2.0})
    negatives = np.array([[0, 4, 9], [1, 6, 8], [2, 5, 8], [3, 4, 7]])  # other classes than the anchors'
    loss.sample_negatives = lambda labels, k: torch.tensor(negatives)
    mem_s, mem_t = loss.memory_s.double().numpy().copy(), loss.memory_t.double().numpy().copy()
    out = loss(inputs()[0])

    u_s, u_t = projector_np(loss.student_projector, F_S), projector_np(loss.teacher_projector, F_T)
    contrast = np.concatenate([IDX[:, None], negatives], axis=1)
    scores_t = np.exp(np.einsum("bkd,bd->bk", mem_s[contrast], u_t) / tau)  # student memory, teacher anchor
    scores_s = np.exp(np.einsum("bkd,bd->bk", mem_t[contrast], u_s) / tau)
    z_s, z_t = scores_s.mean() * n, scores_t.mean() * n
    nce_s, nce_t = nce_np(scores_s / z_s, n), nce_np(scores_t / z_t, n)
    assert loss.z_s.item() == pytest.approx(z_s, rel=1e-5) and loss.z_t.item() == pytest.approx(z_t, rel=1e-5)
    assert out["nce_s"].item() == pytest.approx(nce_s, rel=1e-5)
    assert out["nce_t"].item() == pytest.approx(nce_t, rel=1e-5)
    assert out["loss"].item() == pytest.approx(ce_kd(4.0, kd_w=0.5) + 2.0 * (nce_s + nce_t), rel=1e-5)

    untouched = np.setdiff1d(np.arange(n), IDX)
    for bank, old, u in ((loss.memory_s, mem_s, u_s), (loss.memory_t, mem_t, u_t)):
        np.testing.assert_allclose(bank.numpy()[IDX], F.normalize(m * old[IDX] + (1 - m) * u), rtol=1e-5)
        np.testing.assert_allclose(bank.numpy()[untouched], old[untouched], rtol=1e-6)

    z_first = loss.z_s.item()
    loss(inputs()[0])
    assert loss.z_s.item() == z_first  # Z is fixed on the first batch


@pytest.mark.parametrize("batch, n, k, dense", [(512, 50_000, 4096, True), (64, 1_281_167, 4096, False),
                                               (4, 10, 3, True), (4, 100, 3, False)])
def test_crd_scores_the_whole_bank_when_that_moves_fewer_bytes(batch, n, k, dense):
    loss = crd_loss({"nce_k": k, "embed_dim": 128})  # DAPT's D
    loss.num_samples = n  # the rule reads only the sizes
    assert loss.dense_scores(batch) is dense


def test_crd_dense_and_gathered_scores_agree_in_value_and_gradient():
    loss = crd_loss({"nce_t": 0.07})
    torch.manual_seed(1)
    u_s = torch.nn.functional.normalize(torch.randn(4, 4, dtype=torch.float64)).requires_grad_()
    u_t = torch.nn.functional.normalize(torch.randn(4, 4, dtype=torch.float64)).requires_grad_()
    loss.double()
    contrast = torch.tensor([[3, 0, 4, 9], [0, 6, 8, 4], [7, 5, 8, 1], [5, 4, 7, 2]])
    results = {}
    for dense in (True, False):
        loss.dense_scores = lambda batch, dense=dense: dense
        scores_s, scores_t = loss.side_scores(torch.stack([u_s, u_t]), contrast).unbind(0)
        grads = torch.autograd.grad((scores_s.log() * 0.3 + scores_t.log()).sum(), (u_s, u_t))
        results[dense] = (scores_s.detach(), scores_t.detach(), *grads)
    for dense_value, gathered_value in zip(results[True], results[False]):
        torch.testing.assert_close(dense_value, gathered_value, rtol=1e-12, atol=0)
    expected = np.exp(np.einsum("bkd,bd->bk", loss.memory_t.numpy()[contrast.numpy()], u_s.detach().numpy()) / 0.07)
    np.testing.assert_allclose(results[True][0].numpy(), expected, rtol=1e-12)


def test_crd_state_dict_round_trip_keeps_memory_and_normaliser():
    def make(seed):
        loss = crd_loss(seed=seed)
        loss(inputs()[0])  # fill Z and move the memory
        return loss

    def run(loss):
        torch.manual_seed(7)  # the same negatives for both
        return loss(inputs()[0])["loss"].item()

    original, other = make(0), make(1)
    other.load_state_dict(original.state_dict())
    assert torch.equal(other.memory_s, original.memory_s) and other.z_t.item() == original.z_t.item()
    assert run(other) == pytest.approx(run(original), rel=1e-6)
    assert "train_labels" not in original.state_dict()  # derived from the dataset, not checkpointed


def test_crd_loads_a_checkpoint_written_before_its_sides_were_stacked():
    original = crd_loss(seed=0)
    original(inputs()[0])  # fill Z and move the memory
    state = original.state_dict()
    memory, z = state.pop("memory"), state.pop("z")  # the old layout: one buffer per bank and side
    state.update(memory_t=memory[0], memory_s=memory[1], z_s=z[0], z_t=z[1])
    other = crd_loss(seed=1)
    other.load_state_dict(state)
    assert torch.equal(other.memory_s, original.memory_s) and torch.equal(other.memory_t, original.memory_t)
    assert other.z_s.item() == original.z_s.item() and other.z_t.item() == original.z_t.item()
    assert not torch.equal(original.memory_s, original.memory_t)  # the two banks are told apart


def test_crd_needs_two_classes():
    with pytest.raises(ValueError, match="two classes"):
        build("crd", num_samples=3, train_labels=torch.tensor([1, 1, 1]))


# -------------------------------------------------------------------------------------------- SRRL

def srrl_loss(params=None, seed=0, head=None):
    torch.manual_seed(100)
    head = nn.Linear(DT, C) if head is None else head
    return build("srrl", params, seed=seed, teacher_head=head)


@pytest.mark.parametrize("connector", ["mlp2", "mlp"])
def test_srrl_matches_formula(connector):
    params = {"connector": connector, "feat_weight": 0.7, "srrl_weight": 1.3, "kd_weight": 0.5, "label_weight": 0.9}
    loss = srrl_loss(params)
    out = loss(inputs()[0])
    linears = [m for m in loss.connector if isinstance(m, nn.Linear)]
    assert len(linears) == (2 if connector == "mlp2" else 1)
    if connector == "mlp2":
        assert linears[0].out_features == (DS + DT) // 2
    mapped = F_S
    for layer in linears:
        mapped = F.relu(F.linear(layer, mapped))  # every connector layer ends in a ReLU
    feat = np.mean((mapped - F_T) ** 2)
    srrl = np.mean((F.linear(loss.teacher_head, mapped) - T_LOGITS) ** 2)
    assert out["feat_mse"].item() == pytest.approx(feat, rel=1e-5)
    assert out["srrl"].item() == pytest.approx(srrl, rel=1e-5)
    expected = ce_kd(4.0, label_w=0.9, kd_w=0.5) + 0.7 * feat + 1.3 * srrl
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)


def test_srrl_gradients_reach_connector_and_student_not_teacher_head():
    head = nn.Linear(DT, C)
    loss = srrl_loss(head=head)
    assert head.weight.requires_grad  # the caller's module is copied, not frozen in place
    trainable = [n for n, p in loss.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("connector.") for n in trainable)
    backward_through(loss)
    assert all(p.grad is None for p in loss.teacher_head.parameters())
    assert all(p.grad is not None for p in loss.connector.parameters())


def test_srrl_teacher_head_stays_in_eval_mode():
    loss = srrl_loss(head=nn.Sequential(nn.Dropout(0.9), nn.Linear(DT, C)))
    loss.train()
    assert not loss.teacher_head.training
    a, b = loss(inputs()[0])["srrl"].item(), loss(inputs()[0])["srrl"].item()
    assert a == b  # no dropout noise


def test_srrl_batch_size_invariance_and_round_trip():
    loss = srrl_loss({"kd_weight": 1.0})
    single, doubled = loss(inputs()[0]), loss(inputs(rows=np.r_[0:N, 0:N])[0])
    for key in single:
        assert doubled[key].item() == pytest.approx(single[key].item(), rel=1e-5), key
    assert_round_trip(lambda seed: srrl_loss(seed=seed), lambda loss: loss(inputs()[0])["loss"].item())


def test_crd_scores_are_fp32_under_bf16_autocast():
    # exp(<m, u> / 0.07) amplifies bf16 rounding of the dot products ~14-fold; CRD opts out of autocast.
    def run(autocast):
        loss = crd_loss({"nce_t": 0.07})
        torch.manual_seed(3)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return loss(inputs()[0])["crd"].item()

    assert run(True) == pytest.approx(run(False), rel=1e-6)


@pytest.mark.parametrize("n", [2, 3, 17])
def test_uniformity_from_the_gram_matrix_has_pdists_value_and_gradient(n):
    """The loss computes pairwise distances from the Gram matrix (pdist's backward is slow on
    CUDA): same value as the formula over i < j with torch.pdist, and the same gradient."""
    from trainables.losses.align_uniform import uniformity

    g = torch.Generator().manual_seed(n)
    raw = torch.randn(n, 8, generator=g, dtype=torch.float64)
    for u0 in (torch.nn.functional.normalize(raw, dim=1), raw):  # unit (as projected) and not
        u = u0.clone().float().requires_grad_()
        ref = u0.clone().float().requires_grad_()
        value = uniformity(u, 1.5)
        expected = torch.pdist(ref, p=2).pow(2).mul(-1.5).exp().mean().log()
        value.backward()
        expected.backward()
        assert value.item() == pytest.approx(uniformity_np(u0.numpy(), 1.5), rel=1e-5, abs=1e-6)
        assert value.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
        torch.testing.assert_close(u.grad, ref.grad, rtol=1e-4, atol=1e-6)


def test_uniformity_of_stacked_embeddings_is_each_ones():
    """The loss scores the student's and the teacher's embeddings as one (2, N, D) stack: each
    row's value and gradient are what it gets alone."""
    from trainables.losses.align_uniform import uniformity

    g = torch.Generator().manual_seed(3)
    stack = torch.nn.functional.normalize(torch.randn(2, 5, 8, generator=g), dim=-1).requires_grad_()
    alone = [row.detach().clone().requires_grad_() for row in stack]
    values = uniformity(stack, 2.0)
    assert values.shape == (2,)
    (values * torch.tensor([1.0, 3.0])).sum().backward()
    for i, row in enumerate(alone):
        value = uniformity(row, 2.0)
        (value * (1.0, 3.0)[i]).backward()
        assert values[i].item() == pytest.approx(value.item(), rel=1e-6)
        assert values[i].item() == pytest.approx(uniformity_np(row.detach().double().numpy(), 2.0), rel=1e-5)
        torch.testing.assert_close(stack.grad[i], row.grad, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("lead, n, parts", [((2,), 10, 2), ((2,), 10, 3), ((3, 2), 23, 4), ((2,), 10, 1)])
def test_crd_dense_dots_backward_in_parts_is_the_plain_gradient(monkeypatch, lead, n, parts):
    """ContrastDots's backward reduces over the bank in parts (as on CUDA; 10 rows in 2 parts of 5,
    in 3 of 4 with the bank padded to 12; 23 in 4 of 6): the anchors' gradient equals autograd's
    through the plain matmul and gather, repeated contrast indices (which accumulate) included."""
    monkeypatch.setattr(crd_module, "reduction_parts", lambda rows, device: parts)
    g = torch.Generator().manual_seed(3)
    b, c, d = 5, 7, 6
    anchors = torch.randn(*lead, b, d, dtype=torch.float64, generator=g)
    bank = torch.randn(*lead, n, d, dtype=torch.float64, generator=g)
    contrast = torch.randint(0, n, (*lead, b, c), generator=g)
    contrast[..., 1] = contrast[..., 0]  # a repeated index in every row
    weights = torch.randn(*lead, b, c, dtype=torch.float64, generator=g)
    got_in, want_in = anchors.clone().requires_grad_(), anchors.clone().requires_grad_()
    with SyncCheck() as check:  # the parts' index arithmetic stays on the device
        got = crd_module.ContrastDots.apply(got_in, bank, contrast)
        (got * weights).sum().backward()
    assert not check.syncs, check.report()
    want = torch.matmul(want_in, bank.transpose(-1, -2)).gather(-1, contrast)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    (want * weights).sum().backward()
    torch.testing.assert_close(got_in.grad, want_in.grad, rtol=1e-12, atol=1e-12)
    # and against the formula: sum_j w[b, j] bank[contrast[b, j]]
    rows = torch.take_along_dim(bank.unsqueeze(-3), contrast.unsqueeze(-1), dim=-2)  # (..., B, C, D)
    torch.testing.assert_close(got_in.grad, (weights.unsqueeze(-1) * rows).sum(-2), rtol=1e-12, atol=1e-12)


def test_crd_reduction_parts_are_about_split_rows_each_on_cuda_and_one_on_a_cpu():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert crd_module.reduction_parts(50_000, cuda) == 50_000 // crd_module.SPLIT_ROWS == 12
    assert crd_module.reduction_parts(1_281_167, cuda) == crd_module.MAX_SPLITS
    assert crd_module.reduction_parts(1_000, cuda) == 1
    assert crd_module.reduction_parts(50_000, cpu) == 1
