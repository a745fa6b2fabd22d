"""Sel-CL's two memories, filled with the momentum encoder's outputs. Write positions are host
integers that follow from the batch sizes alone, so neither memory syncs with the device."""
from __future__ import annotations

import math

import torch


class NegativesQueue:
    """MoCo's queue of negatives (the authors' ``MemoryMoCo``): ``size`` keys, initialised uniform in
    +-1/sqrt(dim/3) as theirs, overwritten first in, first out."""

    def __init__(self, dim: int, size: int, device: torch.device):
        bound = 1.0 / math.sqrt(dim / 3)
        self.keys = torch.rand(size, dim, device=device).mul_(2 * bound).sub_(bound)
        self.position = 0

    def state_dict(self) -> dict:
        return {"keys": self.keys, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.keys.copy_(state["keys"])
        self.position = int(state["position"])

    def push(self, keys: torch.Tensor) -> None:
        n, size = keys.shape[0], self.keys.shape[0]
        slots = (torch.arange(n, device=keys.device) + self.position) % size
        self.keys.index_copy_(0, slots, keys.detach().to(self.keys.dtype))
        self.position = (self.position + n) % size


class PairMemory:
    """The supervised memory (their ``queue_with_pro``): embeddings, class probabilities and example
    indices of past mixed views, ``size`` entries. Pushes land at ``ptr``; one that would run past the
    end overwrites the last entries instead and sends ``ptr`` back to 0, as theirs does."""

    def __init__(self, size: int, dim: int, num_classes: int, device: torch.device):
        self.feats = torch.full((size, dim), -1.0, device=device)
        self.probs = torch.full((size, num_classes), -1.0, device=device)
        self.index = torch.full((size,), -1, dtype=torch.long, device=device)
        self.ptr = 0
        self.full = False

    @property
    def size(self) -> int:
        return self.index.shape[0]

    def state_dict(self) -> dict:
        return {"feats": self.feats, "probs": self.probs, "index": self.index, "ptr": self.ptr, "full": self.full}

    def load_state_dict(self, state: dict) -> None:
        for name in ("feats", "probs", "index"):
            getattr(self, name).copy_(state[name])
        self.ptr, self.full = int(state["ptr"]), bool(state["full"])

    def push(self, feats: torch.Tensor, probs: torch.Tensor, index: torch.Tensor) -> None:
        n = index.shape[0]
        if n > self.size:
            raise ValueError(f"a push of {n} entries does not fit a memory of {self.size}")
        if self.ptr + n > self.size:
            at, self.ptr = slice(self.size - n, self.size), 0
        else:
            at = slice(self.ptr, self.ptr + n)
            self.ptr += n
        self.feats[at], self.probs[at], self.index[at] = feats.detach().float(), probs.detach().float(), index
        self.full = self.full or at.stop == self.size

    def get(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        end = self.size if self.full else self.ptr
        return self.feats[:end], self.probs[:end], self.index[:end]

    def last_push(self, n: int) -> slice:
        """Where the last push of ``n`` entries sits in :meth:`get`'s columns."""
        end = self.ptr if self.ptr else self.size
        return slice(end - n, end)
