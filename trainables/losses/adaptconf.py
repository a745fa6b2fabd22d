"""AdaptConf (Guo et al. 2024, "Vision Superalignment"; ggjy/vision_weak_to_strong): KD mixed with
self-training on the student's own top-1 under a per-sample, stop-gradient weight alpha_i.

    a_i = CE(z_s,i, argmax z_s,i)                     (student's confidence in its own top-1)
    b_i = CE(z_s,i, argmax z_t,i)   confidence: student_vs_teacher_label   (the reference code; default)
        = CE(z_t,i, argmax z_t,i)   confidence: teacher_self              (the teacher's own confidence)
    alpha_i = sg( exp(a_i/θ) / (exp(a_i/θ) + exp(b_i/θ)) ) = sg( sigmoid((a_i - b_i) / θ) ) * ramp(e)
    L = label_weight * CE(z_s, y)
      + kd_weight * mean_i [ (1 - alpha_i) * T^2 KL_i(softmax(z_t/T) || softmax(z_s/T))
                             + alpha_i * CE(z_s,i, argmax z_s,i) ]

θ ("superalignment threshold") is a temperature on the confidence margin, not a weight.

``student_vs_teacher_label`` (what the code does): both CEs use the student's logits, so a_i <= b_i
and alpha_i <= 0.5, with alpha_i = 0.5 exactly where student and teacher agree on the top-1 and
alpha_i -> 0 as the student grows confident in a class the teacher does not pick. θ -> 0 gives
0.5 on agreement and 0 on disagreement; θ -> inf gives 0.5 everywhere.

``teacher_self`` (one reading of the paper's "discrepancy between soft and hard labels", which I
could not check against the paper's equation): b_i is the teacher's own soft-vs-hard CE, so alpha_i
spans (0, 1): it exceeds 0.5 where the student is less sure of its top-1 than the teacher of its own.

``rate`` adds the linear ramp of the few-shot and noisy-label variants (the AugConf ramp applied to
alpha); the classification code has none (rate 0). Defaults: T 1, θ 0.5.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from trainables.losses import register_loss
from trainables.losses.augconf import superalignment_ramp
from trainables.losses.base import DistillLoss, LossInputs, LossParams, self_training_ce_per_sample, soft_cross_entropy
from trainables.losses.base import member_column, member_rows
from trainables.losses.kd import MemberColumns, kd_kl_per_sample, stacked_ce, stacked_kd_per_sample


class AdaptConfParams(LossParams):
    temperature: float = Field(1.0, gt=0.0)
    label_weight: float = Field(1.0, ge=0.0)
    kd_weight: float = Field(1.0, ge=0.0)
    threshold: float = Field(0.5, gt=0.0, description="θ: temperature of the confidence margin")
    confidence: Literal["student_vs_teacher_label", "teacher_self"] = "student_vs_teacher_label"
    rate: float = Field(0.0, ge=0.0, le=1.0, description="ramp of alpha over this fraction of the epochs; 0 = none")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)


def adaptconf_alpha(student_logits: torch.Tensor, teacher_logits: torch.Tensor, threshold: float,
                    confidence: str = "student_vs_teacher_label") -> torch.Tensor:
    """Per-sample self-training weight, detached."""
    with torch.no_grad():
        log_p_s = torch.log_softmax(student_logits.float(), dim=-1)
        a = -log_p_s.max(dim=-1).values
        teacher_top1 = teacher_logits.argmax(dim=-1, keepdim=True)
        if confidence == "student_vs_teacher_label":
            b = -log_p_s.gather(1, teacher_top1).squeeze(1)
        else:
            b = -torch.log_softmax(teacher_logits.float(), dim=-1).gather(1, teacher_top1).squeeze(1)
        return torch.sigmoid((a - b) / threshold)


@register_loss("adaptconf", params=AdaptConfParams)
class AdaptConf(DistillLoss):
    vectorised_members = True

    def forward(self, inputs: LossInputs):
        p = self.params
        alpha = adaptconf_alpha(inputs.student_logits, inputs.teacher_logits, p.threshold, p.confidence)
        ramp = self.epoch_value(inputs, "ramp", lambda: superalignment_ramp(inputs.epoch, inputs.num_epochs, p.rate))
        alpha = alpha * ramp
        kd = kd_kl_per_sample(inputs.student_logits, inputs.teacher_logits, p.temperature)
        self_ce = self_training_ce_per_sample(inputs.student_logits)
        ce = soft_cross_entropy(inputs.student_logits, inputs.targets, p.label_smoothing)
        loss = p.label_weight * ce + p.kd_weight * ((1.0 - alpha) * kd + alpha * self_ce).mean()
        return {"loss": loss, "ce": ce.detach(), "kd": kd.detach().mean(), "self_ce": self_ce.detach().mean(),
                "alpha": alpha.mean()}

    @classmethod
    def epoch_columns(cls, losses, epoch, num_epochs, device):
        """This epoch's ramp of alpha per member."""
        return {"ramp": member_column(tuple(superalignment_ramp(epoch, num_epochs, loss.params.rate)
                                            for loss in losses), device)}

    @classmethod
    def forward_members(cls, losses, inputs, stacked=None):
        """K members at once: logits (K, N, C); T, weights, smoothing, θ and this epoch's ramp as
        (K,) columns; members may differ in ``confidence`` (a per-member choice between the two
        b's, computed only where some member uses it)."""
        z, teacher = inputs.student_logits, inputs.teacher_logits
        k, device = len(losses), z.device
        columns = MemberColumns(losses, device)
        log_p = torch.log_softmax(z.float(), dim=-1)
        with torch.no_grad():  # alpha is a stop-gradient weight
            a = -log_p.max(dim=-1).values
            top1 = teacher.argmax(dim=-1)
            modes = {loss.params.confidence for loss in losses}
            if "student_vs_teacher_label" in modes:
                b = -log_p.gather(-1, top1.view(1, -1, 1).expand(k, -1, 1)).squeeze(-1)
            if "teacher_self" in modes:
                b_teacher = -torch.log_softmax(teacher.float(), dim=-1).gather(1, top1[:, None]).squeeze(1)
                b = b_teacher.expand(k, -1) if len(modes) == 1 else torch.where(
                    member_column(tuple(float(loss.params.confidence == "teacher_self") for loss in losses),
                                  device).view(k, 1) > 0, b_teacher, b)
            ramp = (inputs.member_columns or cls.epoch_columns(losses, inputs.epoch, inputs.num_epochs, device))["ramp"]
            alpha = torch.sigmoid((a - b) / columns("threshold").view(k, 1)) * ramp.view(k, 1)
        kd = stacked_kd_per_sample(z, teacher, columns("temperature"))
        self_ce = -log_p.max(dim=-1).values
        ce = stacked_ce(log_p, inputs.targets, columns("label_smoothing"))
        loss = columns("label_weight") * ce + columns("kd_weight") * ((1.0 - alpha) * kd + alpha * self_ce).mean(dim=-1)
        ce, kd, self_ce, alpha = ce.detach(), kd.detach().mean(-1), self_ce.detach().mean(-1), alpha.mean(-1)
        return member_rows(loss=loss, ce=ce, kd=kd, self_ce=self_ce, alpha=alpha)
