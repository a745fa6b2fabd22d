"""Batch norm of K fused members as one batch norm over K x C channels.

Under ``torch.func.vmap`` with per-member weights, torch's batching rule for ``batch_norm``
normalises without the affine and then applies each member's weight and bias as separate
operations: every batch-norm layer costs, per step, two fill kernels (a dummy weight and bias),
two elementwise passes over the activations forward and four backward (the affine and its
gradients), none of which a single trial's cuDNN batch norm has. Members' channels are
independent, so the K members' batch norm *is* one batch norm over K x C channels: the activations
(K, N, C, ...) are viewed as (N, K x C, ...) and the stacked weights, biases and running statistics
(K, C) as (K x C,), all views. Here that is the ``vmap`` rule of an ``autograd.Function``; the ops
it runs are recorded by ordinary autograd, so backward is batch norm's own.

:func:`fold_member_batch_norm` switches a member's ``BatchNorm1d/2d/3d`` modules to
:class:`MemberBatchNorm` variants (same parameters, buffers and state-dict keys); they differ
from torch's only inside :func:`members_vmapped`, the fused forward's vmap. Outside it (a member's
own forward, evaluation) and under ``torch.compile`` (whose fusion absorbs the separate affine and
which would trace the Function's rule) they are torch's batch norm.
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar

import torch
from torch import nn
from torch.nn import functional as F

_IN_MEMBERS_VMAP: ContextVar[bool] = ContextVar("w2s_members_vmap", default=False)


def members_vmapped() -> contextlib.AbstractContextManager:
    """The fused members' vmapped forward runs inside this: their batch norms fold (see module).
    Nothing while ``torch.compile`` traces (setting a ContextVar would break its graph; compiled,
    the batch norms are torch's anyway)."""
    return contextlib.nullcontext() if torch.compiler.is_compiling() else _folding()


@contextlib.contextmanager
def _folding():
    token = _IN_MEMBERS_VMAP.set(True)
    try:
        yield
    finally:
        _IN_MEMBERS_VMAP.reset(token)


class _FoldedBatchNorm(torch.autograd.Function):
    """``F.batch_norm``; under vmap, over the members' channels folded into one channel dimension.

    Used only under vmap (:meth:`MemberBatchNorm.forward`): there ``vmap`` below runs, with
    ordinary tensors, and ordinary autograd records what it does. ``forward`` is what ``apply``
    needs to exist; ``setup_context`` is never reached (autograd does not record this Function
    itself under vmap)."""

    @staticmethod
    def forward(x, running_mean, running_var, weight, bias, use_batch_stats, momentum, eps):
        return F.batch_norm(x, running_mean, running_var, weight, bias, use_batch_stats, momentum, eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        raise RuntimeError("the folded member batch norm runs only inside the fused members' vmap")

    @staticmethod
    def backward(ctx, grad):  # pragma: no cover - see setup_context
        raise RuntimeError("the folded member batch norm runs only inside the fused members' vmap")

    @staticmethod
    def vmap(info, in_dims, x, running_mean, running_var, weight, bias, use_batch_stats, momentum, eps):
        k = info.batch_size

        def members_first(t: torch.Tensor | None, dim: int | None) -> torch.Tensor | None:
            if t is None:
                return None
            return t.movedim(dim, 0) if dim is not None else t.expand(k, *t.shape)

        xs = members_first(x, in_dims[0])  # (K, N, C, ...)
        n, c, rest = xs.shape[1], xs.shape[2], xs.shape[3:]
        # (N, K, C, ...) -> (N, K*C, ...): a view when the members' activations lie side by side
        # in channels, as vmap's grouped convolution writes them (channels_last too).
        wide = xs.transpose(0, 1).reshape(n, k * c, *rest)
        # Running statistics must stay views of the stacked buffers: batch norm updates them in place.
        flat = [None if t is None else members_first(t, d).reshape(k * c)
                for t, d in zip((running_mean, running_var, weight, bias), in_dims[1:5])]
        out = F.batch_norm(wide, *flat, use_batch_stats, momentum, eps)
        return out.reshape(n, k, c, *rest).transpose(0, 1), 0


class MemberBatchNorm(nn.modules.batchnorm._BatchNorm):
    """torch's batch norm, folded over the members inside :func:`members_vmapped`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # momentum None (a cumulative average) reads the batch count on the host: torch's rule.
        if torch.compiler.is_compiling() or not _IN_MEMBERS_VMAP.get() or self.momentum is None:
            return super().forward(x)
        # torch's _BatchNorm.forward, with the normalisation folded over the members.
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        track = not self.training or self.track_running_stats
        return _FoldedBatchNorm.apply(x, self.running_mean if track else None, self.running_var if track else None,
                                      self.weight, self.bias, use_batch_stats, self.momentum, self.eps)


class MemberBatchNorm1d(MemberBatchNorm, nn.BatchNorm1d):
    pass


class MemberBatchNorm2d(MemberBatchNorm, nn.BatchNorm2d):
    pass


class MemberBatchNorm3d(MemberBatchNorm, nn.BatchNorm3d):
    pass


_FOLDED = {nn.BatchNorm1d: MemberBatchNorm1d, nn.BatchNorm2d: MemberBatchNorm2d, nn.BatchNorm3d: MemberBatchNorm3d}


def fold_member_batch_norm(model: nn.Module) -> int:
    """Switch ``model``'s torch batch norms (exactly ``BatchNorm1d/2d/3d``; subclasses and
    SyncBatchNorm keep their own forward) to their member variants, in place. Returns how many."""
    n = 0
    for module in model.modules():
        folded = _FOLDED.get(type(module))
        if folded is not None:
            module.__class__ = folded
            n += 1
    return n
