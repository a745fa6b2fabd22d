"""Auxiliary-confidence loss of Burns et al. 2023, "Weak-to-Strong Generalization"
(openai/weak-to-strong, ``logconf_loss_fn``), ported to many classes.

With weak soft labels ``q = softmax(z_weak)``, student logits ``z`` and training progress ``f`` in
[0, 1]:

    coef   = aux_coef * (1 if f > warmup_frac else f)
    target = (1 - coef) * q + coef * onehot(argmax z)          (stop-gradient)
    L      = mean_i CE(z_i, target_i)

Two details follow the reference code on purpose. During warm-up the coefficient is ``f`` itself,
not ``f / warmup_frac``, so it jumps from ``warmup_frac`` to 1 (times ``aux_coef``) when warm-up
ends. The binary original hardens the student by a batch quantile matching the weak-label prior;
with many classes the hardening here is the student's argmax. ``aux_coef = 0`` is plain soft-label
cross-entropy against the weak labels.

In the ``distill`` loop ``f`` is ``epoch / epochs`` (per epoch); the ``w2s_probe`` trainable's
vectorised probes use the per-step value, as the reference does.
"""
from __future__ import annotations

import torch
from pydantic import Field

from trainables.losses import register_loss
from trainables.losses.base import (DistillLoss, LossInputs, LossParams, member_column, member_rows, scalar_like,
                                    soft_cross_entropy)


class AuxConfParams(LossParams):
    aux_coef: float = Field(0.5, ge=0.0, le=1.0, description="weight of the hardened student prediction")
    warmup_frac: float = Field(0.1, ge=0.0, le=1.0, description="fraction of training before the full weight")


def auxconf_coef(progress: float | torch.Tensor, aux_coef: float | torch.Tensor,
                 warmup_frac: float | torch.Tensor) -> float | torch.Tensor:
    """``aux_coef * (1 if progress > warmup_frac else progress)``, for floats or per-probe tensors."""
    if isinstance(progress, torch.Tensor):
        return aux_coef * torch.where(progress > warmup_frac, torch.ones_like(progress), progress)
    return aux_coef * (1.0 if progress > warmup_frac else progress)


def auxconf_target(weak_probs: torch.Tensor, student_logits: torch.Tensor,
                   coef: float | torch.Tensor) -> torch.Tensor:
    """``(1 - coef) * q + coef * onehot(argmax z)``, detached. ``coef`` is a float or a tensor that
    broadcasts against the targets with a trailing class axis (e.g. shape (P, 1))."""
    student_logits = student_logits.detach()
    hardened = torch.zeros_like(student_logits).scatter_(-1, student_logits.argmax(-1, keepdim=True), 1.0)
    return ((1.0 - coef) * weak_probs + coef * hardened).detach()


@register_loss("auxconf", params=AuxConfParams)
class AuxConf(DistillLoss):
    """The teacher is the weak supervisor; the ground-truth ``targets`` are not used."""

    vectorised_members = True

    def forward(self, inputs: LossInputs):
        p = self.params
        q = torch.softmax(inputs.teacher_logits.detach().float(), dim=-1)
        coef = self.epoch_value(inputs, "coef", lambda: auxconf_coef(inputs.progress, p.aux_coef, p.warmup_frac))
        target = auxconf_target(q, inputs.student_logits, coef)
        loss = soft_cross_entropy(inputs.student_logits, target)
        # a fill, not torch.tensor(float(coef), device=...): no host-to-device copy, and a tensor coef
        # (per-step progress) is never read back to the host
        logged = coef.detach() if isinstance(coef, torch.Tensor) else scalar_like(loss, coef)
        return {"loss": loss, "aux_coef": logged}

    @classmethod
    def epoch_columns(cls, losses, epoch, num_epochs, device):
        """This epoch's coefficient per member, at the distill loop's progress ``epoch / epochs``."""
        return {"coef": cls.coef_column(losses, epoch / num_epochs, device)}

    @staticmethod
    def coef_column(losses, progress: float, device: torch.device) -> torch.Tensor:
        return member_column(tuple(auxconf_coef(progress, loss.params.aux_coef, loss.params.warmup_frac)
                                   for loss in losses), device)

    @classmethod
    def forward_members(cls, losses, inputs, stacked=None):
        """K members at once: logits (K, N, C) against the one weak teacher's soft labels, each
        member's coefficient a (K,) column (from ``inputs.progress`` when no columns are passed)."""
        coef = (inputs.member_columns["coef"] if inputs.member_columns is not None
                else cls.coef_column(losses, inputs.progress, inputs.student_logits.device))
        q = torch.softmax(inputs.teacher_logits.detach().float(), dim=-1).unsqueeze(0)
        target = auxconf_target(q, inputs.student_logits, coef.view(-1, 1, 1))
        loss = -(target * torch.log_softmax(inputs.student_logits.float(), dim=-1)).sum(dim=-1).mean(dim=-1)
        return member_rows(loss=loss, aux_coef=coef)
