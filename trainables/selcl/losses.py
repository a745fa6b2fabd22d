"""Sel-CL's loss terms (the authors' ``losses.py``, ``MemoryMoCo`` and ``NCESoftmaxLoss``), on
two mixed views of a batch of ``b`` examples: rows ``0..b-1`` are view A (mixed with weight
``lam_a``), rows ``b..2b-1`` view B (``lam_b``). Masks are float (rows x columns) with 1 marking a
positive; ``logits_mask`` zeroes the columns a row must not contrast with (itself).

* ``mask_uns`` / ``mask2_uns``: the same image's other view / the image it was mixed with (the
  minor component), i.e. the positives without labels;
* ``mask_sup`` / ``mask2_sup``: the selected pairs (:class:`~trainables.selcl.selection.PairRule`)
  of the image / of its mixing partner.

The first term of each row weighs its log-probabilities with ``lam``, the second (partner) term with
``1 - lam``, each averaged over that term's positives."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def moco_nce(q: torch.Tensor, k: torch.Tensor, memory: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-row InfoNCE: the positive ``q . k`` against the memory's negatives ``q . m``."""
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ memory.T], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device), reduction="none")


def _lam_rows(lam_a: float, lam_b: float, b: int, like: torch.Tensor) -> torch.Tensor:
    return torch.cat([like.new_full((b,), lam_a), like.new_full((b,), lam_b)])


def sup_contrastive(sims: torch.Tensor, mask_sup: torch.Tensor, mask2_sup: torch.Tensor, mask_uns: torch.Tensor,
                    mask2_uns: torch.Tensor, logits_mask: torch.Tensor, lam_a: float, lam_b: float,
                    temperature: float) -> torch.Tensor:
    """The mixup supervised contrastive loss (their ``Supervised_ContrastiveLearning_loss`` with
    ``aprox`` 1): rows without any selected positive in view A's rows add 0 to the mean."""
    b = sims.shape[0] // 2
    logits = sims / temperature
    log_prob = logits - (logits.exp() * logits_mask).sum(1, keepdim=True).log()
    den1 = mask_sup.sum(1) + mask_uns.sum(1)
    den2 = mask2_sup.sum(1) + mask2_uns.sum(1)
    first = ((mask_sup + mask_uns) * log_prob).sum(1) / den1
    second = ((mask2_sup + mask2_uns) * log_prob).sum(1) / den2
    lam = _lam_rows(lam_a, lam_b, b, sims)
    per_row = -lam * first - (1 - lam) * second
    per_image = per_row.view(2, b).mean(0)
    return ((mask_sup[:b].sum(1) > 0) * per_image).mean()


def similarity_bce(prob_sims: torch.Tensor, mask_sup: torch.Tensor, mask2_sup: torch.Tensor, mask_uns: torch.Tensor,
                   mask2_uns: torch.Tensor, logits_mask: torch.Tensor, lam_a: float, lam_b: float) -> torch.Tensor:
    """Their ``Simi_loss``: binary cross-entropy of the class-probability inner products against
    the positives, mixup-weighted like :func:`sup_contrastive`, averaged over every entry."""
    b = prob_sims.shape[0] // 2
    log_p, log_q = (prob_sims + 1e-7).log(), (1 - prob_sims + 1e-7).log()

    def bce(pos: torch.Tensor) -> torch.Tensor:
        return logits_mask * (-pos * log_p - (1 - pos) * log_q)

    lam = _lam_rows(lam_a, lam_b, b, prob_sims)[:, None]
    return (lam * bce(mask_sup + mask_uns) + (1 - lam) * bce(mask2_sup + mask2_uns)).mean()


def mixed_cross_entropy(logits: torch.Tensor, y: torch.Tensor, y_partner: torch.Tensor,
                        lam: torch.Tensor) -> torch.Tensor:
    """Their ``ClassificationLoss``: ``lam`` CE(label) + (1 - lam) CE(partner's label), row mean."""
    return (lam * F.cross_entropy(logits, y, reduction="none")
            + (1 - lam) * F.cross_entropy(logits, y_partner, reduction="none")).mean()
