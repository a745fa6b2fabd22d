"""The DINO self-distillation loss (Caron et al. 2021), with the switches of the "Random Teachers
are Good Teachers" code (safelix/dinopl), for self-distillation trainables (``multicrop`` interface:
it takes per-crop head outputs, not classifier logits, so ``distill`` cannot select it).

For head outputs ("projections") x of each crop, teacher and student each centre and sharpen:

    P_t[k] = softmax((x_t[k] - c_t) / τ_t(e)),     log P_s[m] = log_softmax((x_s[m] - c_s) / τ_s)
    CE = mean over pairs (k, m) of  mean over the batch of  -Σ_c P_t[k]_c log P_s[m]_c
    KL = CE - mean over pairs of H(P_t[k])            (same gradient: the teacher side is detached)

and, as dinopl's other two objectives, on the centred, temperature-scaled logits
z_t[k] = (x_t[k] - c_t) / τ_t(e), z_s[m] = (x_s[m] - c_s) / τ_s:

    MSE    = mean over pairs (k, m) of  mean over the batch of  mean over c of (z_t[k]_c - z_s[m]_c)²
    H_pred = mean over student crops m and the batch of  H(P_s[m])   (the student's entropy; no teacher)

``objective`` picks the loss to minimise (``ce``, ``kl``, ``mse``, ``h_pred``); ``ce``, ``kl`` and
the entropies are reported whatever it is, ``mse`` when it is the objective.

Pairs by multi-crop index: ``opposite`` (DINO) k != m, ``same`` k == m, ``all`` every (k, m).
Crop k of the teacher and crop m of the student are the same view when k == m (global crops first).

Centres are applied, then updated with this batch: c <- μ c + (1 - μ) mean(x) over crops and batch
(all ranks), before temperature, detached. μ = NaN switches centring off (c stays 0), as for the
student by default and for both sides in the random-teacher v2 config.

τ_t(e) warms up linearly per epoch, as DINO's schedule: from ``warmup_teacher_temp`` at epoch 0 to
``teacher_temp`` at epoch W - 1, then constant (W = ``warmup_teacher_temp_epochs``; 0 = none).
Defaults are DINO's / dinopl's (τ_t 0.04, τ_s 0.1, μ_t 0.9, μ_s NaN, opposite); the random-teacher
v2 config is τ_t = τ_s = 1, μ_t = μ_s = NaN, pairing same, one crop.
"""
from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
from pydantic import Field, field_validator
from torch import nn

from trainables.losses import register_loss
from trainables.losses.base import LossParams, all_reduce_mean, scalar_like


class DINOLossParams(LossParams):
    teacher_temp: float = Field(0.04, gt=0.0)
    warmup_teacher_temp: float | None = Field(None, gt=0.0, description="start of the warm-up; None = teacher_temp")
    warmup_teacher_temp_epochs: int = Field(0, ge=0)
    student_temp: float = Field(0.1, gt=0.0)
    teacher_center_momentum: float = Field(0.9, description="NaN = no centring")
    student_center_momentum: float = Field(float("nan"), description="NaN = no centring")
    pairing: Literal["opposite", "same", "all"] = "opposite"
    objective: Literal["ce", "kl", "mse", "h_pred"] = "ce"

    @field_validator("teacher_center_momentum", "student_center_momentum")
    @classmethod
    def _momentum(cls, v: float) -> float:
        if not (math.isnan(v) or 0.0 <= v <= 1.0):
            raise ValueError("a centre momentum is in [0, 1], or NaN for no centring")
        return v


def crop_pairs(n_teacher: int, n_student: int, pairing: str) -> list[tuple[int, int]]:
    """The (teacher crop k, student crop m) pairs a loss averages over, in plain Python: crop counts
    are known on the host, so counting or listing pairs needs no tensor (and no sync)."""
    keep = {"opposite": lambda k, m: k != m, "same": lambda k, m: k == m, "all": lambda k, m: True}[pairing]
    return [(k, m) for k in range(n_teacher) for m in range(n_student) if keep(k, m)]


def pair_mask(n_teacher: int, n_student: int, pairing: str, device: torch.device | str = "cpu") -> torch.Tensor:
    """(n_teacher, n_student) bool mask of :func:`crop_pairs`, built on ``device`` from aranges."""
    k = torch.arange(n_teacher, device=device)[:, None]
    m = torch.arange(n_student, device=device)[None, :]
    if pairing == "opposite":
        return k != m
    if pairing == "same":
        return k == m
    return torch.ones(n_teacher, n_student, dtype=torch.bool, device=device)


@register_loss("dino", params=DINOLossParams, interface="multicrop")
class DINOLoss(nn.Module):
    registry_name = "dino"

    def __init__(self, params: DINOLossParams, *, out_dim: int, **context):
        super().__init__()
        self.params = params
        self.register_buffer("teacher_center", torch.zeros(1, out_dim))
        self.register_buffer("student_center", torch.zeros(1, out_dim))

    def teacher_temperature(self, epoch: int) -> float:
        p = self.params
        warm = p.warmup_teacher_temp_epochs
        if epoch >= warm:
            return p.teacher_temp
        start = p.teacher_temp if p.warmup_teacher_temp is None else p.warmup_teacher_temp
        return start if warm == 1 else start + (p.teacher_temp - start) * epoch / (warm - 1)

    @torch.no_grad()
    def _update_center(self, center: torch.Tensor, outputs: torch.Tensor, momentum: float) -> None:
        if not math.isnan(momentum):
            batch_center = all_reduce_mean(outputs.mean(dim=(0, 1)))
            center.mul_(momentum).add_((1.0 - momentum) * batch_center)

    def forward(self, student_outputs: Sequence[torch.Tensor] | torch.Tensor,
                teacher_outputs: Sequence[torch.Tensor] | torch.Tensor, epoch: int = 0) -> dict[str, torch.Tensor]:
        """``*_outputs``: one (N, out_dim) head output per crop (a list, or a stacked (crops, N, out_dim)
        tensor). Returns ``loss`` and detached ``ce``, ``kl``, entropies and the teacher temperature."""
        p = self.params
        x_s = torch.stack(list(student_outputs)).float()
        x_t = torch.stack(list(teacher_outputs)).detach().float()
        pairs = crop_pairs(len(x_t), len(x_s), p.pairing)
        n_pairs = len(pairs)
        if n_pairs == 0:
            raise ValueError(f"pairing {p.pairing!r} leaves no (teacher, student) crop pair for "
                             f"{len(x_t)} teacher and {len(x_s)} student crops")
        t_temp = self.teacher_temperature(epoch)
        # fp32 throughout: under bf16 autocast the pair matmul below would round a sum over batch x out_dim.
        with torch.autocast(x_s.device.type, enabled=False):
            log_p_t = torch.log_softmax((x_t - self.teacher_center) / t_temp, dim=-1)
            p_t = log_p_t.exp()
            log_p_s = torch.log_softmax((x_s - self.student_center) / p.student_temp, dim=-1)
            batch = x_s.shape[1]
            # ce[k, m] = mean over the batch of -Σ_c P_t[k] log P_s[m]: every pair in one matmul.
            ce_pairs = -(p_t.flatten(1) @ log_p_s.flatten(1).T) / batch
            h_t = -(p_t * log_p_t).sum(-1).mean(-1)  # per teacher crop
            # a mask, not indexing: no data-dependent shape
            weights = pair_mask(len(x_t), len(x_s), p.pairing, ce_pairs.device).to(ce_pairs.dtype) / n_pairs
            ce = (ce_pairs * weights).sum()
            kl = ((ce_pairs - h_t[:, None]) * weights).sum()
            h_s = -(log_p_s.exp() * log_p_s).sum(-1).mean()  # H_pred: over every student crop
            extra = {}
            if p.objective == "mse":
                z_t = (x_t - self.teacher_center) / t_temp
                z_s = (x_s - self.student_center) / p.student_temp
                # pair by pair (the pairs are a host list: no sync), so an exact match gives exactly 0
                extra["mse"] = sum(((z_t[k] - z_s[m]) ** 2).mean() for k, m in pairs) / n_pairs
        self._update_center(self.teacher_center, x_t, p.teacher_center_momentum)
        self._update_center(self.student_center, x_s.detach(), p.student_center_momentum)
        loss = {"ce": ce, "kl": kl, "h_pred": h_s, **extra}[p.objective]
        out = {"loss": loss, "ce": ce.detach(), "kl": kl.detach(), "teacher_entropy": h_t.mean(),
               "student_entropy": h_s.detach(), "teacher_temp": scalar_like(loss, t_temp)}
        return out | {name: value.detach() for name, value in extra.items()}
