"""Layers the model families and the losses' projectors share.

``l2_normalize`` is ``F.normalize(x, dim=-1)`` with a backward written from its formula: autograd's
own chain through norm, clamp and division dispatches 13 operators, this one 6 (3 forward either
way). A small step on a GPU is launch-bound (bench/loss_steps.py), and DAPT's projectors and
DINO's heads normalise twice a step or more."""
from __future__ import annotations

import torch
from torch import nn

EPS = 1e-12  # F.normalize's


class _L2Normalize(torch.autograd.Function):
    """y = x / c, c = max(||x||, eps) over the last dim; dx = (g - y <g, y> [||x|| > eps]) / c.

    Below eps, c is the constant eps and the projection term drops (F.normalize's gradient too).
    ``c > eps`` is the same test as ``||x|| > eps``. Written in the ``setup_context`` form so
    ``torch.func.vmap`` (fused trials' members) derives its batching rule."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, eps: float):
        c = torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(eps)
        return x / c, c

    @staticmethod
    def setup_context(ctx, inputs, output):
        y, c = output
        ctx.eps = inputs[1]
        ctx.mark_non_differentiable(c)
        ctx.set_materialize_grads(False)  # c's gradient is None: no zeros made for it
        ctx.save_for_backward(y, c)

    @staticmethod
    def backward(ctx, g, _):
        if g is None:
            return None, None
        y, c = ctx.saved_tensors
        inner = (g * y).sum(-1, keepdim=True) * (c > ctx.eps)
        return torch.addcmul(g, y, inner, value=-1.0) / c, None


def l2_normalize(x: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``F.normalize(x, dim=-1, eps=eps)``, values and gradient, in fewer operators."""
    return _L2Normalize.apply(x, eps)[0]


class L2Normalize(nn.Module):
    """Rows to unit L2 norm (the last dim)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2_normalize(x)
