"""DAPT's SRRL distiller (Yang et al. 2021, "Knowledge distillation via softmax regression
representation learning", as used by DAPT): a learnable connector maps student features into the
teacher's feature space, where they are regressed onto the teacher's features and, through the
teacher's own frozen classifier, onto the teacher's logits.

    c = connector:  mlp2: Linear(d_s, (d_s + d_t)//2)-ReLU-Linear(., d_t)-ReLU;  mlp: Linear(d_s, d_t)-ReLU
    L_feat = MSE(c(f_s), f_t)                     (DAPT's "embedding" term)
    L_srrl = MSE(head_t(c(f_s)), z_t)             (head_t frozen; gradient flows through it to c and the student)
    L = label_weight·CE + feat_weight·L_feat + kd_weight·T²·KL + srrl_weight·L_srrl

Defaults reproduce DAPT's srrl row (λ1 1, λ2 1, λ3 0, λ4 1). MSE is a mean over all elements.
The connector ends in a ReLU, as in DAPT, which suits teachers whose pooled features are post-ReLU.
"""
from __future__ import annotations

import copy
from typing import Literal

from pydantic import Field
from torch import nn

from trainables.losses import register_loss
from trainables.losses.base import LossInputs, members_call
from trainables.losses.dapt import DaptLoss, DaptParams, feature_pair


class SRRLParams(DaptParams):
    kd_weight: float = Field(0.0, ge=0.0, description="λ3 (0 in DAPT's srrl)")
    feat_weight: float = Field(1.0, ge=0.0, description="λ2: MSE(c(f_s), f_t)")
    srrl_weight: float = Field(1.0, ge=0.0, description="λ4: MSE(head_t(c(f_s)), z_t)")
    connector: Literal["mlp2", "mlp"] = "mlp2"


def make_connector(kind: str, student_dim: int, teacher_dim: int) -> nn.Sequential:
    if kind == "mlp":
        return nn.Sequential(nn.Linear(student_dim, teacher_dim), nn.ReLU())
    mid = (student_dim + teacher_dim) // 2
    return nn.Sequential(nn.Linear(student_dim, mid), nn.ReLU(), nn.Linear(mid, teacher_dim), nn.ReLU())


@register_loss("srrl", params=SRRLParams)
class SRRL(DaptLoss):
    member_shape_params = ("connector",)
    needs_teacher_head = True

    def __init__(self, params: SRRLParams, **context):
        super().__init__(params, **context)
        self.connector = make_connector(params.connector, self.require(context, "student_dim"),
                                        self.require(context, "teacher_dim"))
        self.teacher_head = copy.deepcopy(self.require(context, "teacher_head")).requires_grad_(False).eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher_head.eval()  # frozen teacher: its dropout/norm layers never switch to training
        return self

    def extra_terms(self, inputs: LossInputs):
        p = self.params
        f_s, f_t = feature_pair(inputs)
        mapped = self.connector(f_s)
        feat = nn.functional.mse_loss(mapped.float(), f_t)
        srrl = nn.functional.mse_loss(self.teacher_head(mapped).float(), inputs.teacher_logits.detach().float())
        return p.feat_weight * feat + p.srrl_weight * srrl, {"feat_mse": feat, "srrl": srrl}

    @classmethod
    def extra_members(cls, losses, inputs, stacked, columns):
        """The members' connectors as one vmapped call; the frozen teacher head, the same for all,
        applied once to every member's mapped features."""
        f_s, f_t = feature_pair(inputs)
        mapped = members_call(losses[0].connector, stacked, "connector", f_s)
        feat = (mapped.float() - f_t).square().mean((-2, -1))
        logits = losses[0].teacher_head(mapped.flatten(0, 1)).unflatten(0, mapped.shape[:2])
        srrl = (logits.float() - inputs.teacher_logits.detach().float()).square().mean((-2, -1))
        return columns("feat_weight") * feat + columns("srrl_weight") * srrl, {"feat_mse": feat, "srrl": srrl}
