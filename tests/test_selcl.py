"""Sel-CL's stage (trainables/selcl): each piece against the authors' definitions written out
naively here (their N x N pair matrix, their mask construction, their loss formulas), and the
stage on noisy digits, which must select a cleaner subset than the labels it was given."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainables.data import load_dataset
from trainables.models import create_model
from trainables.runtime.engine import seed_everything
from trainables.selcl.config import SelCLConfig
from trainables.selcl.losses import mixed_cross_entropy, moco_nce, similarity_bce, sup_contrastive
from trainables.selcl.memory import NegativesQueue, PairMemory
from trainables.selcl.selection import (PairRule, linear_quantile, neighbours, pair_threshold, per_class_quantile,
                                        select_examples, vote)
from trainables.selcl.stage import lr_factor, memory_masks, pair_masks, train_selcl, view_masks
from trainables.training.noise_params import with_label_noise

CPU = torch.device("cpu")


def unit(n, d, seed=0):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


# --- selection -------------------------------------------------------------------------------

def test_neighbours_are_the_most_similar_others_never_itself():
    f = unit(30, 4)
    nb = neighbours(f, 5, chunk=7)  # chunks smaller than N: the self-exclusion must follow the offset
    sims = f @ f.T
    for i in range(30):
        assert i not in nb[i].tolist()
        others = sims[i].clone()
        others[i] = -math.inf
        assert set(nb[i].tolist()) == set(others.topk(5).indices.tolist())


def test_votes_are_label_shares_and_the_two_rounds_select_the_agreeing_examples():
    # Two tight clusters of 6; example 0 (cluster A) carries cluster B's label, example 6 (B) A's.
    f = torch.zeros(12, 2)
    f[:6, 0], f[6:, 1] = 1.0, 1.0
    f += 0.01 * unit(12, 2, seed=1)
    f = F.normalize(f, dim=1)
    noisy = torch.tensor([1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    nb = neighbours(f, 5)
    shares = vote(nb, noisy, 2)
    assert torch.allclose(shares.sum(1), torch.ones(12))
    assert shares[0].tolist() == [1.0, 0.0]  # its 5 neighbours are the rest of cluster A, all labelled 0
    assert shares[1].tolist() == pytest.approx([0.8, 0.2])  # 4 of A's others say 0, the mislabelled one says 1
    sel = select_examples(f, noisy, 2, k=5, example_quantile=0.5)
    assert sel.corrected.tolist() == [0] * 6 + [1] * 6
    assert not sel.agree[0] and not sel.agree[6] and sel.agree[[1, 2, 3, 4, 5, 7, 8, 9, 10, 11]].all()
    assert sel.per_class == 5  # both classes have 5 agreeing examples; the median is 5
    assert not sel.selected[0] and not sel.selected[6] and int(sel.selected.sum()) == 10


def test_per_class_count_is_the_lower_median_and_the_quantiles_as_the_authors():
    counts = torch.tensor([4.0, 9.0, 1.0, 7.0])
    assert per_class_quantile(counts, 0.5) == 4  # torch.median: the lower of 4 and 7
    assert per_class_quantile(counts, 1.0) == 9 and per_class_quantile(counts, 0.0) == 1
    assert per_class_quantile(counts, 0.25) == int(np.quantile(counts.numpy(), 0.25))


@pytest.mark.parametrize("q", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_linear_quantile_is_numpys(q):
    v = torch.randn(101, generator=torch.Generator().manual_seed(3))
    assert linear_quantile(v, q) == pytest.approx(float(np.quantile(v.numpy(), q)), abs=1e-6)


def test_pair_rule_equals_the_authors_dense_pair_matrix():
    n, c = 40, 3
    f = unit(n, 5, seed=4)
    gen = torch.Generator().manual_seed(5)
    noisy = torch.randint(0, c, (n,), generator=gen)
    selected = torch.rand(n, generator=gen) < 0.6
    th = pair_threshold(f, noisy, selected, c, 0.25)
    # Theirs: the similarity graph, the same-label matrix, the threshold over the selected block's
    # same-label entries, pairs below it dropped, then the selected block restored to same-label.
    graph = (f @ f.T).numpy()
    same = (noisy[:, None] == noisy[None, :]).numpy()
    sel_idx = selected.nonzero().squeeze(1).numpy()
    block_same = same[np.ix_(sel_idx, sel_idx)]
    expected_th = np.quantile(graph[np.ix_(sel_idx, sel_idx)][block_same], 0.25)
    assert th == pytest.approx(float(expected_th), abs=1e-6)
    pairs = np.where(graph < expected_th, False, same)
    pairs[np.ix_(sel_idx, sel_idx)] = block_same
    rule = PairRule(f, noisy, selected, th)
    rows, cols = torch.arange(n), torch.arange(n)
    assert np.array_equal(rule(rows, cols).bool().numpy(), pairs)
    some = torch.tensor([3, 17, 3, 29])
    assert np.array_equal(rule(some, cols[5:]).bool().numpy(), pairs[some.numpy()][:, 5:])


# --- memories --------------------------------------------------------------------------------

def test_pair_memory_writes_wraps_and_returns_like_the_authors_queue():
    mem = PairMemory(size=10, dim=2, num_classes=3, device=CPU)
    f = lambda n, v: torch.full((n, 2), float(v))  # noqa: E731
    p = lambda n: torch.zeros(n, 3)  # noqa: E731
    mem.push(f(4, 1), p(4), torch.arange(4))
    assert mem.get()[2].tolist() == [0, 1, 2, 3] and mem.last_push(4) == slice(0, 4)
    mem.push(f(4, 2), p(4), torch.arange(4, 8))
    assert mem.ptr == 8 and not mem.full and mem.last_push(4) == slice(4, 8)
    mem.push(f(4, 3), p(4), torch.arange(8, 12))  # 8 + 4 > 10: the last 4 slots, ptr back to 0
    assert mem.ptr == 0 and mem.full
    assert mem.get()[2].tolist() == [0, 1, 2, 3, 4, 5, 8, 9, 10, 11]
    assert mem.last_push(4) == slice(6, 10)
    mem.push(f(2, 4), p(2), torch.tensor([20, 21]))
    assert mem.get()[2][:2].tolist() == [20, 21] and mem.last_push(2) == slice(0, 2)


def test_negatives_queue_starts_in_the_authors_range_and_overwrites_first_in_first_out():
    q = NegativesQueue(dim=12, size=5, device=CPU)
    assert q.keys.abs().max() <= 1 / math.sqrt(12 / 3)
    q.push(torch.ones(3, 12))
    q.push(2 * torch.ones(3, 12))
    assert q.keys[:, 0].tolist() == [2, 1, 1, 2, 2] and q.position == 1


# --- masks and losses ------------------------------------------------------------------------

def authors_masks(pairs, perm_a, perm_b):
    """Their unsupervised_masks_estimation / supervised_masks_estimation without the memory."""
    b = pairs.shape[0]
    eye2 = torch.eye(2 * b) == 1
    labels = torch.arange(b).unsqueeze(1)
    uns = torch.eye(b).repeat(2, 2)
    uns[eye2] = 0
    q1, q3 = torch.eq(labels[perm_a], labels.t()).float(), torch.eq(labels[perm_b], labels.t()).float()
    uns2 = torch.cat((torch.cat((q1, q1), 1), torch.cat((q3, q3), 1)), 0)
    uns2[eye2] = 0
    sup = pairs.clone()
    sup[torch.eye(b) == 1] = 0
    sup = sup.repeat(2, 2)
    sup[eye2] = 0
    s1, s3 = pairs[perm_a], pairs[perm_b]
    sup2 = torch.cat((torch.cat((s1, s1), 1), torch.cat((s3, s3), 1)), 0)
    sup2[eye2] = 0
    return sup, sup2, uns, uns2


def test_masks_equal_the_authors_construction():
    b = 6
    gen = torch.Generator().manual_seed(7)
    pairs = (torch.rand(b, b, generator=gen) < 0.5).float()
    pairs = ((pairs + pairs.T) > 0).float().fill_diagonal_(1)
    perm_a, perm_b = torch.randperm(b, generator=gen), torch.randperm(b, generator=gen)
    uns, uns2, logits_mask = view_masks(b, perm_a, perm_b)
    sup, sup2 = pair_masks(pairs, perm_a, perm_b)
    e_sup, e_sup2, e_uns, e_uns2 = authors_masks(pairs, perm_a, perm_b)
    for got, want in ((sup, e_sup), (sup2, e_sup2), (uns, e_uns), (uns2, e_uns2)):
        assert torch.equal(got, want)
    assert torch.equal(logits_mask, 1 - torch.eye(2 * b))
    # Memory: the batch's own columns take the batch masks, the rest the pairs (rows repeated for
    # the two views, or the mixing partners' rows).
    mem_pairs = (torch.rand(b, 15, generator=gen) < 0.5).float()
    block = slice(1, 1 + 2 * b)  # the batch's own entries: columns 1..12 of 15
    m_sup, m_sup2, m_uns, m_uns2, m_lm = memory_masks(mem_pairs, perm_a, perm_b, block,
                                                      (sup, sup2, uns, uns2, logits_mask))
    assert torch.equal(m_sup[:, block], sup) and torch.equal(m_sup[:b, 0], mem_pairs[:, 0])
    assert torch.equal(m_sup[b:, 0], mem_pairs[:, 0])
    assert torch.equal(m_sup2[:b, 0], mem_pairs[perm_a, 0]) and torch.equal(m_sup2[b:, 0], mem_pairs[perm_b, 0])
    assert m_uns[:, 0].sum() == 0 and m_lm[:, 0].sum() == 2 * b and torch.equal(m_lm[:, block], logits_mask)


def test_supervised_contrastive_loss_equals_its_formula_row_by_row():
    b, t = 4, 0.1
    gen = torch.Generator().manual_seed(8)
    emb = F.normalize(torch.randn(2 * b, 3, generator=gen), dim=1)
    pairs = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.float32)
    perm_a, perm_b = torch.tensor([1, 0, 3, 2]), torch.tensor([2, 3, 0, 1])
    uns, uns2, lm = view_masks(b, perm_a, perm_b)
    sup, sup2 = pair_masks(pairs, perm_a, perm_b)
    lam_a, lam_b = 0.7, 0.6
    got = sup_contrastive(emb @ emb.T, sup, sup2, uns, uns2, lm, lam_a, lam_b, t)
    sims = (emb @ emb.T).double() / t
    per_row = []
    for r in range(2 * b):
        log_den = math.log(sum(math.exp(sims[r, c]) for c in range(2 * b) if c != r))
        lp = [sims[r, c].item() - log_den for c in range(2 * b)]
        first = sum((sup[r, c] + uns[r, c]).item() * lp[c] for c in range(2 * b)) / (sup[r].sum() + uns[r].sum()).item()
        second = sum((sup2[r, c] + uns2[r, c]).item() * lp[c] for c in range(2 * b)) / (
            sup2[r].sum() + uns2[r].sum()).item()
        lam = lam_a if r < b else lam_b
        per_row.append(-lam * first - (1 - lam) * second)
    has_pos = [float(sup[i].sum() > 0) for i in range(b)]
    want = sum(has_pos[i] * (per_row[i] + per_row[b + i]) / 2 for i in range(b)) / b
    assert got.item() == pytest.approx(want, rel=1e-5)
    assert has_pos == [1.0, 1.0, 0.0, 0.0]  # images 2 and 3 have no selected partner: they add 0


def test_similarity_loss_equals_its_formula():
    b = 2
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
    ps = probs @ probs.T
    pairs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    perm_a, perm_b = torch.tensor([1, 0]), torch.tensor([0, 1])
    uns, uns2, lm = view_masks(b, perm_a, perm_b)
    sup, sup2 = pair_masks(pairs, perm_a, perm_b)
    got = similarity_bce(ps, sup, sup2, uns, uns2, lm, 0.75, 0.5)
    total = 0.0
    for r in range(4):
        lam = 0.75 if r < b else 0.5
        for c in range(4):
            if r == c:
                continue
            p = ps[r, c].item()
            bce = lambda pos: -pos * math.log(p + 1e-7) - (1 - pos) * math.log(1 - p + 1e-7)  # noqa: E731
            total += lam * bce((sup[r, c] + uns[r, c]).item()) + (1 - lam) * bce((sup2[r, c] + uns2[r, c]).item())
    assert got.item() == pytest.approx(total / 16, rel=1e-5)


def test_moco_and_mixed_cross_entropy_equal_their_formulas():
    q, k = unit(3, 4, seed=9), unit(3, 4, seed=10)
    mem = unit(5, 4, seed=11)
    got = moco_nce(q, k, mem, 0.1)
    for i in range(3):
        pos = (q[i] @ k[i]).item() / 0.1
        negs = [(q[i] @ mem[j]).item() / 0.1 for j in range(5)]
        want = -pos + math.log(math.exp(pos) + sum(math.exp(v) for v in negs))
        assert got[i].item() == pytest.approx(want, rel=1e-5)
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    y, yp = torch.tensor([0, 2]), torch.tensor([1, 0])
    lam = torch.tensor([0.7, 0.7])
    lsm = logits.log_softmax(1)
    want = sum(-(0.7 * lsm[i, y[i]] + 0.3 * lsm[i, yp[i]]).item() for i in range(2)) / 2
    assert mixed_cross_entropy(logits, y, yp, lam).item() == pytest.approx(want, rel=1e-6)


def test_lr_warms_up_per_update_from_a_hundredth_then_decays_at_the_milestones():
    cfg = SelCLConfig(epochs=10, warmup_epochs=2, milestones=[5, 8])
    spe = 4
    assert lr_factor(0, spe, cfg) == pytest.approx(0.01)
    assert lr_factor(4, spe, cfg) == pytest.approx((1 + 99 * 4 / 8) / 100)
    assert lr_factor(8, spe, cfg) == pytest.approx(1.0) and lr_factor(19, spe, cfg) == pytest.approx(1.0)
    assert lr_factor(20, spe, cfg) == pytest.approx(0.1) and lr_factor(32, spe, cfg) == pytest.approx(0.01)


def test_config_refuses_what_the_stage_cannot_run():
    with pytest.raises(ValueError, match="uns_epochs"):
        SelCLConfig(epochs=3, uns_epochs=3)
    with pytest.raises(ValueError, match="milestones"):
        SelCLConfig(epochs=10, milestones=[8, 5])
    with pytest.raises(ValueError, match="extra"):
        SelCLConfig(queue=5)


# --- the stage -------------------------------------------------------------------------------

def test_stage_on_noisy_digits_selects_a_cleaner_subset_than_its_labels():
    data = load_dataset("digits", seed=0)
    clean = data.train_y.clone()
    data, rate = with_label_noise(data, {"kind": "symmetric", "rate": 0.4, "seed": 42}, "digits")
    cfg = SelCLConfig(epochs=3, batch_size=128, milestones=[], warmup_epochs=1, uns_queue=256, queue_per_class=20,
                      k_val=20, sup_queue_begin=1, low_dim=16, augment="simple", seed=1)
    seed_everything(cfg.seed)
    model = create_model("cnn", num_classes=10, input_shape=data.input_shape)
    result = train_selcl(model, data, cfg, clean_train_y=clean)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert all(math.isfinite(h["train_loss"]) for h in result.history)
    last = result.history[-1]
    n_selected = int(result.selection.selected.sum())
    assert last["selected"] == n_selected and 0 < n_selected <= 10 * result.selection.per_class
    # At most per_class per noisy class.
    per_class = torch.bincount(data.train_y[result.selection.selected], minlength=10)
    assert per_class.max() <= result.selection.per_class
    # The selection is much cleaner than the labels it was given (about 60 % correct).
    label_acc = float((data.train_y == clean).float().mean())
    assert label_acc == pytest.approx(1 - rate)
    assert last["selected_precision"] > label_acc + 0.15
    assert -1.0 <= last["pair_threshold"] <= 1.0 and 0.0 <= last["val_acc"] <= 1.0


def test_a_selective_step_with_the_memory_makes_no_host_sync():
    """The contrastive step (selected pairs, the pair memory, the draw of selected examples, the
    similarity term's clipped gradient, the EMA) runs without a device-to-host sync."""
    from trainables.runtime.sync_check import SyncCheck
    from trainables.selcl.stage import SelCLRun

    data = load_dataset("digits", seed=0)
    cfg = SelCLConfig(epochs=3, batch_size=32, milestones=[], warmup_epochs=1, uns_queue=64, queue_per_class=8,
                      k_val=5, sup_queue_begin=0, low_dim=8, augment="simple", seed=1)
    seed_everything(1)
    run = SelCLRun(create_model("cnn_small", num_classes=10, input_shape=data.input_shape), data, cfg)
    run.select()
    batches = run.batches(2)
    run.step(batches[0], epoch=2)  # fills the memory, so the next step contrasts with it
    with SyncCheck() as check:
        loss = run.step(batches[1], epoch=2)
    assert not check.syncs, check.report()
    assert math.isfinite(loss.item()) and run.memory.ptr == 4 * cfg.batch_size


@pytest.mark.parametrize("kind", ["simple", "complex"])
def test_the_two_views_are_drawn_on_the_device_without_a_sync_and_simple_pads_black(kind):
    from trainables.runtime.sync_check import SyncCheck
    from trainables.selcl.views import TwoViewAugment

    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    x = (torch.rand(16, 3, 8, 8) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    views = TwoViewAugment(kind, mean, std, (3, 8, 8), seed=0, device=CPU)
    views(x)  # the first call imports kornia's colour ops, whose module constants are no step's work
    with SyncCheck() as check:
        a, b = views(x), views(x)
    assert not check.syncs, check.report()
    assert a.shape == x.shape and not torch.equal(a, b)
    if kind == "simple":  # every view is a shifted window: its pixels are the image's or black
        black = (-torch.tensor(mean) / torch.tensor(std)).view(1, 3, 1, 1)
        is_black = torch.isclose(a, black.expand_as(a), atol=1e-5).all(1)
        assert is_black.any()  # 16 images with offsets up to 4 px: some border shows
        values = set(torch.round(x * 1e4).flatten().tolist()) | set(torch.round(black * 1e4).flatten().tolist())
        assert set(torch.round(a * 1e4).flatten().tolist()) <= values

