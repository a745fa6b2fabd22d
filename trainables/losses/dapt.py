"""Pieces shared by the DAPT distillers (Farhat & Chen 2024; sfarhat/dapt): the learnable
projectors and the label + KD part of their objective.

DAPT's total loss is ``λ1·CE(z_s, y) + λ2·L_embed + λ3·T²·KL(softmax(z_t/T) || softmax(z_s/T)) + λ4·L_srrl``
with λ fixed per distiller; each distiller here is one loss whose default weights reproduce that row:

    distiller        λ1 label   λ2 embed   λ3 kd   λ4 srrl
    kd               1          0          1       0          -> the ``kd`` loss with temperature 4
    align_uniform    1          1          1       0
    crd              1          1          1       0
    srrl             1          1          0       1
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from trainables.losses.base import (DistillLoss, LossInputs, LossParams, StackedState, member_rows,
                                    soft_cross_entropy)
from trainables.losses.kd import MemberColumns, kd_kl_per_sample, stacked_ce, stacked_kd_per_sample
from trainables.models.layers import L2Normalize

ProjectorKind = Literal["mocov2", "linear", "simclr", "simclrv2"]


class DaptParams(LossParams):
    label_weight: float = Field(1.0, ge=0.0, description="λ1")
    kd_weight: float = Field(1.0, ge=0.0, description="λ3")
    temperature: float = Field(4.0, gt=0.0, description="KD temperature (DAPT's kd_T)")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)


def make_projector(kind: str, in_dim: int, out_dim: int = 128) -> nn.Sequential:
    """DAPT's ``Embed``: features -> ``out_dim``, L2-normalised. ``mocov2``: Linear(d,d)-ReLU-Linear(d,out);
    ``linear``: Linear(d,out); ``simclr``: Linear(d,d,no bias)-BN-ReLU-Linear(d,out,no bias)-BN(no affine);
    ``simclrv2``: one more Linear-BN-ReLU block than ``simclr``."""
    if kind == "mocov2":
        layers = [nn.Linear(in_dim, in_dim), nn.ReLU(), nn.Linear(in_dim, out_dim)]
    elif kind == "linear":
        layers = [nn.Linear(in_dim, out_dim)]
    elif kind in ("simclr", "simclrv2"):
        blocks = 1 if kind == "simclr" else 2
        layers = []
        for _ in range(blocks):
            layers += [nn.Linear(in_dim, in_dim, bias=False), nn.BatchNorm1d(in_dim), nn.ReLU()]
        layers += [nn.Linear(in_dim, out_dim, bias=False), nn.BatchNorm1d(out_dim, affine=False)]
    else:
        raise ValueError(f"unknown projector {kind!r}; known: mocov2, linear, simclr, simclrv2")
    return nn.Sequential(*layers, L2Normalize())


class DaptLoss(DistillLoss):
    """CE + KD, plus whatever feature term the subclass adds through :meth:`extra_terms` (and,
    for the K members of a fused trial at once, :meth:`extra_members`)."""

    needs_features = True
    vectorised_members = True

    def extra_terms(self, inputs: LossInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError  # pragma: no cover - abstract

    @classmethod
    def extra_members(cls, losses: list["DaptLoss"], inputs: LossInputs, stacked: StackedState,
                      columns: MemberColumns) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:meth:`extra_terms` of K members: the weighted term (K,) and its parts as (K,) columns,
        from features (K, N, D_s), the shared teacher's, and the members' stacked parameters."""
        raise NotImplementedError  # pragma: no cover - abstract

    @classmethod
    def forward_members(cls, losses, inputs, stacked=None):
        """K members at once: CE and KD as the logit losses stack them, plus :meth:`extra_members`."""
        if stacked is None:
            raise ValueError(f"loss {cls.registry_name!r}: a fused step passes the members' stacked parameters")
        columns = MemberColumns(losses, inputs.student_logits.device)
        ce = stacked_ce(torch.log_softmax(inputs.student_logits.float(), dim=-1), inputs.targets,
                        columns("label_smoothing"))
        kd = stacked_kd_per_sample(inputs.student_logits, inputs.teacher_logits, columns("temperature")).mean(dim=-1)
        extra, parts = cls.extra_members(losses, inputs, stacked, columns)
        loss = columns("label_weight") * ce + columns("kd_weight") * kd + extra
        return member_rows(loss=loss, ce=ce.detach(), kd=kd.detach(), **{k: v.detach() for k, v in parts.items()})

    def forward(self, inputs: LossInputs):
        p = self.params
        ce = soft_cross_entropy(inputs.student_logits, inputs.targets, p.label_smoothing)
        kd = kd_kl_per_sample(inputs.student_logits, inputs.teacher_logits, p.temperature).mean()
        extra, parts = self.extra_terms(inputs)
        loss = p.label_weight * ce + p.kd_weight * kd + extra
        return {"loss": loss, "ce": ce.detach(), "kd": kd.detach(), **{k: v.detach() for k, v in parts.items()}}


def feature_pair(inputs: LossInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Student features (with gradient) and teacher features (detached), in float32."""
    if inputs.student_features is None or inputs.teacher_features is None:
        raise ValueError("this loss needs student and teacher features; the training loop passed none")
    return inputs.student_features.float(), inputs.teacher_features.detach().float()
