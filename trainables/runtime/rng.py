"""Random generators as checkpoint entries (:class:`~trainables.runtime.epochs.Checkpointed`), so a
resumed loop draws what an uninterrupted one would: its crops, mixing weights and permutations."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch


class RngState:
    """torch's global generators (CPU, and every CUDA device in use), and numpy's global one when
    ``numpy`` is set (for loops that draw from it, as mixup's lambda)."""

    def __init__(self, numpy: bool = False):
        self.numpy = numpy

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        if self.numpy:
            state["numpy"] = np.random.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["cpu"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        if self.numpy and "numpy" in state:
            np.random.set_state(state["numpy"])


class GeneratorState:
    """One :class:`torch.Generator` of a loop's own (an augmentation's)."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def state_dict(self) -> dict[str, Any]:
        return {"state": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["state"])
