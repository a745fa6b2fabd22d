"""Hinton et al. knowledge distillation.

    L = label_weight * CE(z_s, y) + kd_weight * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))

The KL is summed over classes and averaged over the batch ("batchmean"); the T^2 factor keeps the
gradient scale of the soft term independent of T.
"""
from __future__ import annotations

import torch
from pydantic import Field

from trainables.losses import register_loss
from trainables.losses.base import DistillLoss, LossInputs, LossParams, soft_cross_entropy


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
    def forward(self, inputs: LossInputs):
        p = self.params
        kd = kd_kl_per_sample(inputs.student_logits, inputs.teacher_logits, p.temperature).mean()
        ce = soft_cross_entropy(inputs.student_logits, inputs.targets, p.label_smoothing)
        loss = p.label_weight * ce + p.kd_weight * kd
        return {"loss": loss, "ce": ce.detach(), "kd": kd.detach()}
