"""Plain cross-entropy on the labels: the no-teacher baseline and the teacher's own objective."""
from __future__ import annotations

import torch
from pydantic import Field

from trainables.losses import register_loss
from trainables.losses.base import DistillLoss, LossInputs, LossParams, member_rows, soft_cross_entropy
from trainables.losses.kd import MemberColumns, stacked_ce


class CEParams(LossParams):
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)


@register_loss("ce", params=CEParams)
class CrossEntropy(DistillLoss):
    needs_teacher = False
    vectorised_members = True

    def forward(self, inputs: LossInputs):
        loss = soft_cross_entropy(inputs.student_logits, inputs.targets, self.params.label_smoothing)
        return {"loss": loss, "ce": loss.detach()}

    @classmethod
    def forward_members(cls, losses, inputs, stacked=None):
        """K members' cross-entropies at once: logits (K, N, C), label smoothing a (K,) column."""
        log_p = torch.log_softmax(inputs.student_logits.float(), dim=-1)
        ce = stacked_ce(log_p, inputs.targets, MemberColumns(losses, log_p.device)("label_smoothing"))
        return member_rows(loss=ce, ce=ce.detach())
