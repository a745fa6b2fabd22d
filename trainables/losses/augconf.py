"""AugConf (Guo et al. 2024, "Vision Superalignment"; ggjy/vision_weak_to_strong): KD mixed with
self-training on the student's own top-1, under a global weight that ramps up over the epochs.

    alpha(e) = theta * ramp(e),   ramp(e) = e / (E * r) if e < floor(E * r) else 1     (e 0-based)
    L = label_weight * CE(z_s, y)
      + kd_weight * (1 - alpha) * mean_i T^2 KL(softmax(z_t/T) || softmax(z_s/T))
      + kd_weight * alpha * mean_i CE(z_s, argmax z_s)                              (temperature 1)

theta ("superalignment threshold") is the *maximum* self-training weight and r ("superalignment
rate") the fraction of the epochs the ramp lasts; r = 0 means alpha = theta from the first epoch.
alpha is piecewise constant per epoch, as in the reference code. Defaults: T 1, theta 0.5, r 0.3.
"""
from __future__ import annotations

import math

import torch
from pydantic import Field

from trainables.losses import register_loss
from trainables.losses.base import (DistillLoss, LossInputs, LossParams, scalar_like, self_training_ce_per_sample,
                                    soft_cross_entropy)
from trainables.losses.base import member_column, member_rows
from trainables.losses.kd import MemberColumns, kd_kl_per_sample, stacked_ce, stacked_kd_per_sample


class AugConfParams(LossParams):
    temperature: float = Field(1.0, gt=0.0)
    label_weight: float = Field(1.0, ge=0.0)
    kd_weight: float = Field(1.0, ge=0.0)
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="theta: the maximum self-training weight")
    rate: float = Field(0.3, ge=0.0, le=1.0, description="r: ramp length as a fraction of the epochs")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)


def superalignment_ramp(epoch: int, num_epochs: int, rate: float) -> float:
    """e / (E r) for e < floor(E r), else 1: linear from 0 at epoch 0, reaching 1 at epoch floor(E r)."""
    ramp_epochs = math.floor(num_epochs * rate)
    return epoch / (num_epochs * rate) if epoch < ramp_epochs else 1.0


@register_loss("augconf", params=AugConfParams)
class AugConf(DistillLoss):
    vectorised_members = True

    def forward(self, inputs: LossInputs):
        p = self.params
        alpha = self.epoch_value(inputs, "alpha",
                                 lambda: p.threshold * superalignment_ramp(inputs.epoch, inputs.num_epochs, p.rate))
        kd = kd_kl_per_sample(inputs.student_logits, inputs.teacher_logits, p.temperature).mean()
        self_ce = self_training_ce_per_sample(inputs.student_logits).mean()
        ce = soft_cross_entropy(inputs.student_logits, inputs.targets, p.label_smoothing)
        loss = p.label_weight * ce + p.kd_weight * ((1.0 - alpha) * kd + alpha * self_ce)
        return {"loss": loss, "ce": ce.detach(), "kd": kd.detach(), "self_ce": self_ce.detach(),
                "alpha": scalar_like(loss, alpha)}

    @classmethod
    def epoch_columns(cls, losses, epoch, num_epochs, device):
        """This epoch's alpha = theta * ramp per member."""
        return {"alpha": member_column(tuple(loss.params.threshold * superalignment_ramp(epoch, num_epochs,
                                                                                        loss.params.rate)
                                             for loss in losses), device)}

    @classmethod
    def forward_members(cls, losses, inputs, stacked=None):
        """K members at once: logits (K, N, C); T, weights, smoothing and this epoch's alpha (each
        member's theta and rate) as (K,) columns."""
        device = inputs.student_logits.device
        columns = MemberColumns(losses, device)
        alpha = (inputs.member_columns or cls.epoch_columns(losses, inputs.epoch, inputs.num_epochs, device))["alpha"]
        log_p = torch.log_softmax(inputs.student_logits.float(), dim=-1)
        ce = stacked_ce(log_p, inputs.targets, columns("label_smoothing"))
        kd = stacked_kd_per_sample(inputs.student_logits, inputs.teacher_logits, columns("temperature")).mean(dim=-1)
        self_ce = -log_p.max(dim=-1).values.mean(dim=-1)  # CE against the student's own top-1 (T = 1)
        loss = columns("label_weight") * ce + columns("kd_weight") * ((1.0 - alpha) * kd + alpha * self_ce)
        ce, kd, self_ce = ce.detach(), kd.detach(), self_ce.detach()
        return member_rows(loss=loss, ce=ce, kd=kd, self_ce=self_ce, alpha=alpha)
