"""Plain cross-entropy on the labels: the no-teacher baseline and the teacher's own objective."""
from __future__ import annotations

from pydantic import Field

from trainables.losses import register_loss
from trainables.losses.base import DistillLoss, LossInputs, LossParams, soft_cross_entropy


class CEParams(LossParams):
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)


@register_loss("ce", params=CEParams)
class CrossEntropy(DistillLoss):
    needs_teacher = False

    def forward(self, inputs: LossInputs):
        loss = soft_cross_entropy(inputs.student_logits, inputs.targets, self.params.label_smoothing)
        return {"loss": loss, "ce": loss.detach()}
