"""Decoupled knowledge distillation (Zhao et al., CVPR 2022).

At temperature T, with p = softmax(z / T) and y the ground-truth class, the KD loss splits into

    TCKD = KL(b_t || b_s),        b = [p_y, 1 - p_y]                          (target vs the rest)
    NCKD = KL(p̂_t || p̂_s),       p̂ = softmax over the non-target logits z_{c≠y} / T
    KD   = TCKD + (1 - p_t,y) * NCKD

and DKD reweights the two parts independently, freeing NCKD from the (1 - p_t,y) factor that
suppresses it on samples the teacher is sure of:

    L = label_weight * CE(z_s, y) + w(e) * T^2 * mean_i (alpha * TCKD_i + beta * NCKD_i)
    w(e) = min((e + 1) / warmup_epochs, 1)   (e 0-based; mdistiller's min(epoch / warmup, 1) with 1-based epochs)

Defaults are mdistiller's CIFAR-100 ones (alpha 1, beta 8, T 4, 20 warm-up epochs). Soft targets
(mixup, weak labels) use their argmax as y.
"""
from __future__ import annotations

import torch
from pydantic import Field

from trainables.losses import register_loss
from trainables.losses.base import (DistillLoss, LossInputs, LossParams, hard_labels, member_column, member_rows,
                                    scalar_like, soft_cross_entropy)
from trainables.losses.kd import MemberColumns, stacked_ce


class DKDParams(LossParams):
    temperature: float = Field(4.0, gt=0.0)
    alpha: float = Field(1.0, ge=0.0, description="weight of the target-class term TCKD")
    beta: float = Field(8.0, ge=0.0, description="weight of the non-target-class term NCKD")
    label_weight: float = Field(1.0, ge=0.0)
    warmup_epochs: int = Field(20, ge=0, description="linear warm-up of the DKD term; 0 = none")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)


def dkd_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (TCKD, NCKD) at temperature T, without the T^2 factor. The teacher is detached."""
    return scaled_dkd_terms(student_logits.float() / temperature, teacher_logits.detach().float() / temperature,
                            labels)


def scaled_dkd_terms(zs: torch.Tensor, zt: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD) per sample from logits already divided by T: (..., N, C) each (fused members
    stack theirs in front), labels (N,) shared."""
    c = zs.shape[-1]
    if c < 2:
        raise ValueError("DKD needs at least two classes")
    # a comparison, not one_hot: off CUDA one_hot reads labels.min() / .max() on the host to check them
    target = labels[:, None] == torch.arange(c, device=labels.device)

    def log_probs(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log b, log p̂): b = [p_y, 1 - p_y] and the non-target distribution, from one logsumexp
        over the non-target logits. Few ops on purpose: a small step is launch-bound on a GPU, so
        every op here is host time (bench/loss_steps.py counts them)."""
        # the target masked to -inf rather than removed (z[~target]): boolean-mask indexing has a
        # data-dependent shape, a device-to-host sync every step
        rest = z.masked_fill(target, float("-inf"))
        lse_rest = torch.logsumexp(rest, dim=-1, keepdim=True)  # log sum_{c != y} e^{z_c}
        z_y = z.gather(-1, labels.view(*([1] * (z.dim() - 2)), -1, 1).expand(*z.shape[:-1], 1))
        log_b = torch.cat([z_y, lse_rest], dim=-1) - torch.logaddexp(z_y, lse_rest)
        return log_b, rest - lse_rest

    def kl(log_p_t: torch.Tensor, log_p_s: torch.Tensor) -> torch.Tensor:
        return (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1)

    (bt, lt), (bs, ls) = log_probs(zt), log_probs(zs)
    tckd = kl(bt, bs)
    # the target's term is 0 · (−inf − −inf): left out explicitly, so it is 0, not NaN
    nckd = torch.where(target, 0.0, lt.exp() * (lt - ls)).sum(dim=-1)
    return tckd, nckd


def dkd_warmup(epoch: int, warmup_epochs: int) -> float:
    return 1.0 if warmup_epochs == 0 else min((epoch + 1) / warmup_epochs, 1.0)


@register_loss("dkd", params=DKDParams)
class DKD(DistillLoss):
    vectorised_members = True

    def forward(self, inputs: LossInputs):
        p = self.params
        tckd, nckd = dkd_terms(inputs.student_logits, inputs.teacher_logits, hard_labels(inputs.targets),
                               p.temperature)
        t2 = p.temperature ** 2
        tckd, nckd = t2 * tckd.mean(), t2 * nckd.mean()
        warm = self.epoch_value(inputs, "warmup", lambda: dkd_warmup(inputs.epoch, p.warmup_epochs))
        ce = soft_cross_entropy(inputs.student_logits, inputs.targets, p.label_smoothing)
        loss = p.label_weight * ce + warm * (p.alpha * tckd + p.beta * nckd)
        return {"loss": loss, "ce": ce.detach(), "tckd": tckd.detach(), "nckd": nckd.detach(),
                "dkd_warmup": scalar_like(loss, warm)}

    @classmethod
    def epoch_columns(cls, losses, epoch, num_epochs, device):
        """This epoch's warm-up weight w(e) per member."""
        return {"warmup": member_column(tuple(dkd_warmup(epoch, loss.params.warmup_epochs) for loss in losses),
                                        device)}

    @classmethod
    def forward_members(cls, losses, inputs, stacked=None):
        """K members at once: logits (K, N, C); T, alpha, beta, weights, smoothing and this epoch's
        warm-up weight as (K,) columns; the teacher's logits scaled by each member's T."""
        device = inputs.student_logits.device
        columns = MemberColumns(losses, device)
        warm = (inputs.member_columns or cls.epoch_columns(losses, inputs.epoch, inputs.num_epochs, device))["warmup"]
        temperature = columns("temperature")
        t = temperature.view(-1, 1, 1)
        zs = inputs.student_logits.float() / t
        zt = inputs.teacher_logits.detach().float().unsqueeze(0) / t
        tckd, nckd = scaled_dkd_terms(zs, zt, hard_labels(inputs.targets))
        t2 = temperature.square()
        tckd, nckd = t2 * tckd.mean(dim=-1), t2 * nckd.mean(dim=-1)
        ce = stacked_ce(torch.log_softmax(inputs.student_logits.float(), dim=-1), inputs.targets,
                        columns("label_smoothing"))
        loss = columns("label_weight") * ce + warm * (columns("alpha") * tckd + columns("beta") * nckd)
        ce, tckd, nckd = ce.detach(), tckd.detach(), nckd.detach()
        return member_rows(loss=loss, ce=ce, tckd=tckd, nckd=nckd, dkd_warmup=warm)
