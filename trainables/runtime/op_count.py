"""Operations that reach a kernel, counted: a device-independent measure of the host work that
bounds a small GPU step, where each operation costs a launch (bench/loss_steps.py,
bench/fused_ops.py, and tests that hold a step's count)."""
from __future__ import annotations

import collections
from typing import Any, Callable

from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes


class OpCount(TorchDispatchMode):
    """Counts the aten operations a region dispatches, by name; views are left out (they launch
    no kernel). ``total`` is their sum."""

    def __init__(self):
        super().__init__()
        self.counts: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.counts[func.__name__.split(".")[0]] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def uncounted(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` run outside any active count (an optimiser's step, say, counted apart because on
    CUDA it is one fused kernel per parameter group)."""
    def quiet(*args, **kwargs):
        with _disable_current_modes():
            return fn(*args, **kwargs)

    return quiet
