"""DAPT's proposed distiller: CE + KD + alignment/uniformity of projected embeddings
(Wang & Isola 2020's contrastive properties, applied across student and teacher).

    u_s = g_s(f_s),  u_t = g_t(f_t)                           (learnable projectors, unit-norm outputs;
                                                               the teacher's projector trains too)
    align   = mean_i ||u_s,i - u_t,i||_2^α
    unif(U) = log mean_{i<j} exp(-t ||U_i - U_j||_2^2)         (pairs within the batch)
    L = label_weight·CE + kd_weight·T²·KL
      + embed_weight·(align_weight·align + unif_weight·(unif(u_s) + unif(u_t)) / 2)

Defaults are DAPT's (T 4, α 2, t 2, all weights 1, mocov2 projectors to 128-d). Uniformity is a
mean over the pairs of the (per-rank) batch, so unlike the other terms it depends on batch size.
"""
from __future__ import annotations

import torch
from pydantic import Field

from trainables.losses import register_loss
from trainables.losses.base import LossInputs
from trainables.losses.dapt import DaptLoss, DaptParams, ProjectorKind, feature_pair, make_projector


class AlignUniformParams(DaptParams):
    embed_weight: float = Field(1.0, ge=0.0, description="λ2")
    align_weight: float = Field(1.0, ge=0.0)
    unif_weight: float = Field(1.0, ge=0.0)
    align_alpha: float = Field(2.0, gt=0.0)
    unif_t: float = Field(2.0, gt=0.0)
    projector: ProjectorKind = "mocov2"
    embed_dim: int = Field(128, ge=1)


def alignment(u_s: torch.Tensor, u_t: torch.Tensor, alpha: float) -> torch.Tensor:
    return (u_s - u_t).norm(p=2, dim=1).pow(alpha).mean()


def uniformity(u: torch.Tensor, t: float) -> torch.Tensor:
    if len(u) < 2:  # a trailing one-sample batch has no pairs: no uniformity signal, not NaN
        return u.sum() * 0.0
    return torch.pdist(u, p=2).pow(2).mul(-t).exp().mean().log()


@register_loss("align_uniform", params=AlignUniformParams)
class AlignUniform(DaptLoss):
    def __init__(self, params: AlignUniformParams, **context):
        super().__init__(params, **context)
        self.student_projector = make_projector(params.projector, self.require(context, "student_dim"),
                                                params.embed_dim)
        self.teacher_projector = make_projector(params.projector, self.require(context, "teacher_dim"),
                                                params.embed_dim)

    def extra_terms(self, inputs: LossInputs):
        p = self.params
        f_s, f_t = feature_pair(inputs)
        u_s, u_t = self.student_projector(f_s).float(), self.teacher_projector(f_t).float()
        align = alignment(u_s, u_t, p.align_alpha)
        unif = (uniformity(u_s, p.unif_t) + uniformity(u_t, p.unif_t)) / 2
        return p.embed_weight * (p.align_weight * align + p.unif_weight * unif), {"align": align, "unif": unif}
