"""Sel-CL's selection, run on the whole training set after every epoch (``pair_selection`` in the
authors' ``utils_noise.py``), from the L2-normalised embeddings of the un-augmented images:

1. **kNN label correction.** Each example's ``k`` nearest neighbours (cosine similarity, itself
   excluded) vote with their noisy labels, one vote each; the corrected label is the top class.
2. **Agreement.** The neighbours vote again with their *corrected* labels; an example agrees when
   the top class of that vote is its noisy label. Its discrepancy is
   ``-log(clamp(share of votes for its noisy label, 0.01, 0.99))``.
3. **Examples.** ``n`` = the ``example_quantile`` of the per-class numbers of agreeing examples
   (0.5: ``torch.median``, the lower median, as the authors; 1: max; 0: min); each class (by noisy
   label) keeps its ``min(n, class size)`` examples of lowest discrepancy.
4. **Pairs.** The threshold is the ``pair_quantile`` (linear interpolation, numpy's default) of
   the similarities of all same-label pairs of selected examples, each example with itself
   included. Two examples form a positive pair when their noisy labels agree and either both are
   selected or their similarity reaches the threshold (:class:`PairRule`).

Differences from the authors', and why:

* They store the N x N similarity graph and the N x N pair matrix on the host (10 GB and 2.5 GB
  for CIFAR); :class:`PairRule` keeps the N embeddings and the threshold instead and evaluates a
  pair when a step asks for it, which gives the same pairs.
* Their self-exclusion writes -1 into columns ``0..99`` of every chunk of 100 rows, which excludes
  an example from its own neighbours only in the first chunk (and hides examples 0-99 from
  everyone); here each example is excluded from its own neighbours, as their comment intends.
* Ties (the corrected label's top class, equal discrepancies) break by lowest index here (argmax,
  stable sort); theirs depend on the device's sort.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def neighbours(features: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """(N, k) indices of each row's ``k`` most similar other rows (``features`` L2-normalised);
    ``k`` is capped at N - 1."""
    n = features.shape[0]
    k = min(k, n - 1)
    out = torch.empty(n, k, dtype=torch.long, device=features.device)
    for start in range(0, n, chunk):
        sims = features[start:start + chunk] @ features.T
        rows = torch.arange(sims.shape[0], device=features.device)
        sims[rows, rows + start] = float("-inf")  # never its own neighbour
        out[start:start + chunk] = sims.topk(k, dim=1).indices
    return out


def vote(neighbour_idx: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, C) share of each row's neighbours carrying each label (the authors weigh every vote 1)."""
    votes = torch.zeros(neighbour_idx.shape[0], num_classes, device=neighbour_idx.device)
    votes.scatter_add_(1, labels[neighbour_idx], torch.ones_like(neighbour_idx, dtype=votes.dtype))
    return votes / neighbour_idx.shape[1]


def per_class_quantile(counts: torch.Tensor, q: float) -> int:
    """The authors' number of examples kept per class from the per-class agreement counts."""
    if q == 0.5:
        value = counts.median()  # the lower median for an even number of classes, as theirs
    elif q == 1.0:
        value = counts.max()
    elif q == 0.0:
        value = counts.min()
    else:
        value = torch.quantile(counts, q)
    return int(value)


def linear_quantile(values: torch.Tensor, q: float) -> float:
    """numpy's default (linear) quantile of a 1-D tensor, through ``kthvalue`` (no full sort, and
    no size limit as ``torch.quantile`` has)."""
    pos = q * (values.numel() - 1)
    lo, hi = int(pos), min(int(pos) + 1, values.numel() - 1)
    v_lo = values.kthvalue(lo + 1).values.item()
    v_hi = values.kthvalue(hi + 1).values.item() if hi != lo else v_lo
    return v_lo + (pos - lo) * (v_hi - v_lo)


@dataclass
class Selection:
    selected: torch.Tensor  # (N,) bool
    corrected: torch.Tensor  # (N,) the kNN-corrected labels
    agree: torch.Tensor  # (N,) bool: the second vote's top class is the noisy label
    per_class: int  # examples kept per class (at most)


def select_examples(features: torch.Tensor, noisy: torch.Tensor, num_classes: int, k: int,
                    example_quantile: float) -> Selection:
    """Steps 1-3 of the module docstring."""
    nb = neighbours(features, k)
    corrected = vote(nb, noisy, num_classes).argmax(1)
    second = vote(nb, corrected, num_classes)
    agree = second.argmax(1) == noisy
    own_share = second.gather(1, noisy[:, None]).squeeze(1).clamp(0.01, 0.99)
    discrepancy = -own_share.log()
    counts = torch.zeros(num_classes, device=noisy.device).scatter_add_(0, noisy, agree.float())
    keep = per_class_quantile(counts, example_quantile)
    selected = torch.zeros_like(agree)
    for c in range(num_classes):
        members = (noisy == c).nonzero().squeeze(1)
        order = discrepancy[members].sort(stable=True).indices
        selected[members[order[:keep]]] = True
    return Selection(selected, corrected, agree, keep)


def pair_threshold(features: torch.Tensor, noisy: torch.Tensor, selected: torch.Tensor, num_classes: int,
                   quantile: float) -> float:
    """Step 4's threshold: over the selected same-label pairs (self-pairs included), class by class."""
    sims = []
    for c in range(num_classes):
        f = features[(selected & (noisy == c)).nonzero().squeeze(1)]
        if len(f):
            sims.append((f @ f.T).flatten())
    if not sims:
        raise ValueError("Sel-CL selected no example; the pair threshold is undefined")
    return linear_quantile(torch.cat(sims).float(), quantile)


@dataclass
class PairRule:
    """Which pairs count as positives in the supervised contrastive terms, per the last selection:
    same noisy label, and both selected or similar enough (in the embeddings the selection saw)."""

    features: torch.Tensor  # (N, D) the selection's embeddings
    labels: torch.Tensor  # (N,) noisy labels
    selected: torch.Tensor  # (N,) bool
    threshold: float

    def __call__(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """(len(rows), len(cols)) float mask for the example indices ``rows`` x ``cols``."""
        same = self.labels[rows][:, None] == self.labels[cols][None, :]
        both = self.selected[rows][:, None] & self.selected[cols][None, :]
        # float32 as the threshold was computed: under a step's bf16 autocast, similarities near 1
        # would round to steps of 1/256, enough to move pairs across the threshold.
        with torch.autocast(self.features.device.type, enabled=False):
            close = (self.features[rows] @ self.features[cols].T) >= self.threshold
        return (same & (both | close)).float()

