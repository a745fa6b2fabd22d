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

import functools
import math

import torch
from pydantic import Field

from trainables.losses import register_loss
from trainables.losses.base import LossInputs, members_call
from trainables.losses.dapt import DaptLoss, DaptParams, ProjectorKind, feature_pair, make_projector


class AlignUniformParams(DaptParams):
    embed_weight: float = Field(1.0, ge=0.0, description="λ2")
    align_weight: float = Field(1.0, ge=0.0)
    unif_weight: float = Field(1.0, ge=0.0)
    align_alpha: float = Field(2.0, gt=0.0)
    unif_t: float = Field(2.0, gt=0.0)
    projector: ProjectorKind = "mocov2"
    embed_dim: int = Field(128, ge=1)


def alignment(u_s: torch.Tensor, u_t: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """mean_i ||u_s,i - u_t,i||^alpha over the rows of (..., N, D); alpha a number or one per
    leading index.

    DAPT's alpha 2 is the squared distance summed directly: the same value and gradient as the
    norm raised to 2, with 4 operators fewer forward and 6 backward (the norm's backward guards
    a zero distance; the square's needs no guard)."""
    diff = u_s - u_t
    if not isinstance(alpha, torch.Tensor) and alpha == 2.0:
        return diff.square().sum(-1).mean(-1)
    if isinstance(alpha, torch.Tensor):
        alpha = alpha.unsqueeze(-1)
    return diff.norm(p=2, dim=-1).pow(alpha).mean(-1)


def uniformity(u: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """log mean_{i<j} exp(-t ||u_i - u_j||^2) over the rows of u (..., N, D), one value per leading
    index (the student's and the teacher's embeddings at once); t a number or one per leading
    index (fused members' own).

    From the Gram matrix rather than ``torch.pdist``: pdist's backward is one slow kernel on CUDA
    (the reason this loss ran 2.4x KD's step on an H100, bench/results/loss_steps.jsonl), while
    -t ||u_i - u_j||^2 = -t (||u_i||^2 + ||u_j||^2) + 2t <u_i, u_j> is one batched matmul with
    its addition (``baddbmm``), whose backward is matmuls too. Every ordered pair i != j counts
    each unordered pair twice, which leaves the mean unchanged; the diagonal is -inf, so it drops
    out of the logsumexp (and gets no gradient). In fp32 even under autocast: exp(-t d^2) would
    amplify a bf16 Gram's rounding."""
    n, d = u.shape[-2:]
    if n < 2:  # a trailing one-sample batch has no pairs: no uniformity signal, not NaN
        return u.sum((-2, -1)) * 0.0
    with torch.autocast(u.device.type, enabled=False):
        u3 = u.float().reshape(-1, n, d)
        sq = (u3 * u3).sum(-1)
        if isinstance(t, torch.Tensor):  # one t per matrix: in the matmul's left factor, not its alpha
            t = t.float().reshape(-1, 1, 1)
            left, alpha = u3 * (2.0 * t), 1.0
        else:
            left, alpha = u3, 2.0 * t
        base = (sq.unsqueeze(-1) + sq.unsqueeze(-2)) * -t + off_diagonal(n, u.device)
        # clamped at 0, i.e. d^2 >= 0: rounding can leave a near-duplicate pair's d^2 just below
        scores = torch.baddbmm(base, left, u3.transpose(1, 2), alpha=alpha).clamp_max(0.0)
        return (torch.logsumexp(scores.flatten(1), 1) - math.log(n * (n - 1))).reshape(u.shape[:-2])


def off_diagonal(n: int, device: torch.device) -> torch.Tensor:
    """(n, n): -inf on the diagonal, 0 elsewhere; made once per size and device in eager mode
    (two kernels a step otherwise)."""
    if torch.compiler.is_compiling():
        return torch.full((n,), float("-inf"), device=device).diag()
    return _cached_off_diagonal(n, device)


@functools.lru_cache(maxsize=16)
def _cached_off_diagonal(n: int, device: torch.device) -> torch.Tensor:
    return torch.full((n,), float("-inf"), device=device).diag()


@register_loss("align_uniform", params=AlignUniformParams)
class AlignUniform(DaptLoss):
    member_shape_params = ("projector", "embed_dim")
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
        unif = uniformity(torch.stack([u_s, u_t]), p.unif_t).mean()  # (unif(u_s) + unif(u_t)) / 2
        return p.embed_weight * (p.align_weight * align + p.unif_weight * unif), {"align": align, "unif": unif}

    @classmethod
    def extra_members(cls, losses, inputs, stacked, columns):
        """The members' projectors as one vmapped call each side; alignment and uniformity with
        each member's alpha and t."""
        f_s, f_t = feature_pair(inputs)
        first = losses[0]
        u_s = members_call(first.student_projector, stacked, "student_projector", f_s).float()
        u_t = members_call(first.teacher_projector, stacked, "teacher_projector", f_t, batched=False).float()
        align = alignment(u_s, u_t, columns("align_alpha"))
        t = columns("unif_t")
        unif = uniformity(torch.stack([u_s, u_t], dim=1), t[:, None].expand(-1, 2)).mean(-1)
        embed = columns("embed_weight") * (columns("align_weight") * align + columns("unif_weight") * unif)
        return embed, {"align": align, "unif": unif}
