"""Hinton et al. knowledge distillation.

    L = label_weight * CE(z_s, y) + kd_weight * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))

The KL is summed over classes and averaged over the batch ("batchmean"); the T^2 factor keeps the
gradient scale of the soft term independent of T.
"""
from __future__ import annotations

import torch
from pydantic import Field

from trainables.losses import register_loss
from trainables.losses.base import DistillLoss, LossInputs, LossParams, member_column, soft_cross_entropy


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
    def forward_members(cls, losses, inputs):
        """The K members' KD losses at once: logits (K, N, C), each member's T, weights and label
        smoothing as (K,) columns. Cross-entropy with smoothing eps is
        (1 - eps) * CE(q) + eps * mean_c(-log p_c), q the labels (one-hot) or probability targets,
        which is what ``F.cross_entropy(..., label_smoothing=eps)`` computes."""
        z = inputs.student_logits.float()
        k = len(losses)
        device = z.device

        def column(name: str) -> torch.Tensor:
            return member_column(tuple(float(getattr(loss.params, name)) for loss in losses), device)

        t = column("temperature")
        log_p_s = torch.log_softmax(z / t.view(k, 1, 1), dim=-1)
        log_p_t = torch.log_softmax(inputs.teacher_logits.detach().float().unsqueeze(0) / t.view(k, 1, 1), dim=-1)
        kd = t.square() * (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1).mean(dim=-1)
        log_p = torch.log_softmax(z, dim=-1)
        y = inputs.targets
        if y.dim() == 1:
            nll = -log_p.gather(-1, y.view(1, -1, 1).expand(k, -1, 1)).squeeze(-1)
        else:
            nll = -(y.float().unsqueeze(0) * log_p).sum(dim=-1)
        eps = column("label_smoothing").view(k, 1)
        ce = ((1 - eps) * nll + eps * -log_p.mean(dim=-1)).mean(dim=-1)
        loss = column("label_weight") * ce + column("kd_weight") * kd
        ce, kd = ce.detach(), kd.detach()
        return [{"loss": loss[i], "ce": ce[i], "kd": kd[i]} for i in range(k)]
