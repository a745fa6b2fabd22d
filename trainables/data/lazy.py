"""A lazily decoded image array for datasets too large to hold as one tensor (ImageNet).

It stands in for an ``(N, C, H, W)`` float tensor in :class:`DatasetSplits` and supports what the
training and evaluation code does with one (see the ``DatasetSplits`` docstring): indexing with an
index tensor or a contiguous slice decodes those images into a real tensor on the array's device;
a strided slice is a lazy view; ``.to(device)`` and ``.cpu()`` only rebind the device.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np
import torch


class LazyImages:
    def __init__(self, files: Sequence[str], decode: Callable[[str], torch.Tensor], item_shape: tuple[int, ...],
                 device: torch.device | str = "cpu", index: np.ndarray | None = None, threads: int = 4):
        self.files = files
        self.decode = decode  # one path -> normalised float (C, H, W) on the CPU
        self.item_shape = tuple(item_shape)
        self.device = torch.device(device)
        self.index = np.arange(len(files)) if index is None else index
        self.threads = threads

    def _view(self, index: np.ndarray | None = None, device: torch.device | str | None = None) -> "LazyImages":
        return LazyImages(self.files, self.decode, self.item_shape, device or self.device,
                          self.index if index is None else index, self.threads)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.item_shape))

    dtype = torch.float32

    def to(self, device, non_blocking: bool = False, **_: object) -> "LazyImages":
        return self._view(device=device)

    def cpu(self) -> "LazyImages":
        return self._view(device="cpu")

    def materialize(self, positions: np.ndarray) -> torch.Tensor:
        paths = [self.files[i] for i in self.index[positions]]
        if not paths:
            return torch.empty((0, *self.item_shape))
        with ThreadPoolExecutor(self.threads) as pool:  # decoding releases the GIL
            batch = torch.stack(list(pool.map(self.decode, paths)))
        return batch.to(self.device, non_blocking=True)

    def __getitem__(self, key):
        if isinstance(key, slice):
            positions = np.arange(len(self))[key]
            if key.step not in (None, 1):
                return self._view(index=self.index[positions])
            return self.materialize(positions)
        if isinstance(key, torch.Tensor):
            key = key.detach().cpu().numpy()
        return self.materialize(np.asarray(key, dtype=np.int64).reshape(-1))
