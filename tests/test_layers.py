"""``l2_normalize`` (trainables/models/layers.py): F.normalize's values and gradient with a
backward written from the formula, fewer operators, and a batching rule for fused members."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, vmap

from trainables.models.layers import l2_normalize
from trainables.runtime.op_count import OpCount


def rows(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64)
    x[1] = 0.0  # a zero row: F.normalize gives 0 and gradient g / eps
    x[2] *= 1e-14  # below eps: the same constant-divisor branch
    x[3] *= 1e6
    return x


@pytest.mark.parametrize("shape", [(6, 5), (2, 3, 5)])
def test_values_and_gradient_equal_f_normalize(shape):
    x = rows().reshape(shape)
    w = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got_x, want_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    got, want = l2_normalize(got_x), F.normalize(want_x, dim=-1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    (got * w).sum().backward()
    (want * w).sum().backward()
    torch.testing.assert_close(got_x.grad, want_x.grad, rtol=1e-10, atol=0)


def test_gradient_is_the_tangent_projection_by_hand():
    """For ||x|| > eps: dx = (g - y <g, y>) / ||x||, the component of g along y removed."""
    x = torch.tensor([[3.0, 4.0]], dtype=torch.float64, requires_grad=True)
    g = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    l2_normalize(x).backward(g)
    y = torch.tensor([[0.6, 0.8]], dtype=torch.float64)
    torch.testing.assert_close(x.grad, (g - y * 0.6) / 5.0)
    assert torch.autograd.gradcheck(l2_normalize, (rows()[[0, 3, 4]].clone().requires_grad_(),))


def test_under_vmap_each_member_gets_its_own_gradient():
    xs, ws = rows().reshape(2, 3, 5), torch.randn(2, 3, 5, dtype=torch.float64)
    got = vmap(grad(lambda x, w: (l2_normalize(x) * w).sum()))(xs, ws)
    want = vmap(grad(lambda x, w: (F.normalize(x, dim=-1) * w).sum()))(xs, ws)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=0)


def test_fewer_operators_than_f_normalize():
    def ops(fn) -> int:
        x = torch.randn(4, 8, requires_grad=True)
        with OpCount() as count:
            fn(x).backward(torch.ones(4, 8))
        return count.total

    ours, autograds = ops(l2_normalize), ops(lambda x: F.normalize(x, dim=-1))
    assert ours <= 3 + 6 + 1, ours  # 3 forward, 6 backward, the leaf's gradient written
    assert ours <= autograds - 7, (ours, autograds)
