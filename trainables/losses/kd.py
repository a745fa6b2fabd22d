"""Hinton et al. knowledge distillation.

    L = label_weight * CE(z_s, y) + kd_weight * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))

The KL is summed over classes and averaged over the batch ("batchmean"); the T^2 factor keeps the
gradient scale of the soft term independent of T.
"""
from __future__ import annotations

import torch
from pydantic import Field

from trainables.losses import register_loss
from trainables.losses.base import (DistillLoss, LossInputs, LossParams, member_column, member_rows,
                                    soft_cross_entropy)


class KDParams(LossParams):
    temperature: float = Field(4.0, gt=0.0)
    label_weight: float = Field(1.0, ge=0.0)
    kd_weight: float = Field(1.0, ge=0.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)


def kd_kl_per_sample(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(p_t || p_s) at temperature T, one value per sample. The teacher is detached."""
    log_p_s = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_t = torch.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    return (temperature ** 2) * (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1)


@register_loss("kd", params=KDParams)
class KD(DistillLoss):
    vectorised_members = True

    def forward(self, inputs: LossInputs):
        p = self.params
        kd = kd_kl_per_sample(inputs.student_logits, inputs.teacher_logits, p.temperature).mean()
        ce = soft_cross_entropy(inputs.student_logits, inputs.targets, p.label_smoothing)
        loss = p.label_weight * ce + p.kd_weight * kd
        return {"loss": loss, "ce": ce.detach(), "kd": kd.detach()}

    @classmethod
    def forward_members(cls, losses, inputs, stacked=None):
        """The K members' KD losses at once: logits (K, N, C), each member's T, weights and label
        smoothing as (K,) columns."""
        columns = MemberColumns(losses, inputs.student_logits.device)
        log_p = torch.log_softmax(inputs.student_logits.float(), dim=-1)
        ce = stacked_ce(log_p, inputs.targets, columns("label_smoothing"))
        kd = stacked_kd_per_sample(inputs.student_logits, inputs.teacher_logits, columns("temperature")).mean(dim=-1)
        loss = columns("label_weight") * ce + columns("kd_weight") * kd
        ce, kd = ce.detach(), kd.detach()
        return member_rows(loss=loss, ce=ce, kd=kd)


class MemberColumns:
    """One parameter of K fused members' losses as a (K,) float32 column on the device (cached by
    value, so the host-to-device copy happens once per member set)."""

    def __init__(self, losses, device: torch.device):
        self.losses, self.device = losses, device

    def __call__(self, name: str) -> torch.Tensor:
        return member_column(tuple(float(getattr(loss.params, name)) for loss in self.losses), self.device)


def stacked_ce(log_p: torch.Tensor, targets: torch.Tensor, label_smoothing: torch.Tensor) -> torch.Tensor:
    """Each member's mean cross-entropy (K,) from its log-probabilities (K, N, C) at temperature 1,
    against shared labels (N,) or probability targets (N, C), with a (K,) label smoothing eps:
    (1 - eps) * CE(q) + eps * mean_c(-log p_c), what ``F.cross_entropy(..., label_smoothing=eps)``
    computes."""
    k = log_p.shape[0]
    if targets.dim() == 1:
        nll = -log_p.gather(-1, targets.view(1, -1, 1).expand(k, -1, 1)).squeeze(-1)
    else:
        nll = -(targets.float().unsqueeze(0) * log_p).sum(dim=-1)
    eps = label_smoothing.view(k, 1)
    return ((1 - eps) * nll + eps * -log_p.mean(dim=-1)).mean(dim=-1)


def stacked_kd_per_sample(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                          temperature: torch.Tensor) -> torch.Tensor:
    """:func:`kd_kl_per_sample` for K members at once: (K, N) from logits (K, N, C), the shared
    teacher's (N, C) and a (K,) temperature column."""
    t = temperature.view(-1, 1, 1)
    log_p_s = torch.log_softmax(student_logits.float() / t, dim=-1)
    log_p_t = torch.log_softmax(teacher_logits.detach().float().unsqueeze(0) / t, dim=-1)
    return temperature.square().view(-1, 1) * (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1)
