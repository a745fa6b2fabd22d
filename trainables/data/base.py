from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


class DatasetUnavailable(RuntimeError):
    """The dataset is not on disk and cannot be downloaded (offline, or `download: false`)."""


@dataclass
class DatasetSplits:
    """Normalised image tensors (N, C, H, W) and int64 labels for train / val / test."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    meta: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    def split(self, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        if which not in ("train", "val", "test"):
            raise KeyError(f"unknown split {which!r}")
        return getattr(self, f"{which}_x"), getattr(self, f"{which}_y")

    def to(self, device: torch.device | str) -> "DatasetSplits":
        moved = {
            k: getattr(self, k).to(device, non_blocking=True)
            for k in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")
        }
        return DatasetSplits(self.name, **moved, num_classes=self.num_classes, mean=self.mean,
                             std=self.std, meta=dict(self.meta))

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train_y), "val": len(self.val_y), "test": len(self.test_y)}


def split_indices(labels: np.ndarray, fractions: tuple[float, float, float], seed: int):
    """Stratified, seeded split into train/val/test index arrays.

    Stratifying keeps every class in every split even on tiny datasets, so accuracies on the
    val and test splits are comparable across seeds.
    """
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[], [], []]
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        n_train = int(round(fractions[0] * len(idx)))
        n_val = int(round(fractions[1] * len(idx)))
        parts[0].extend(idx[:n_train])
        parts[1].extend(idx[n_train:n_train + n_val])
        parts[2].extend(idx[n_train + n_val:])
    return tuple(np.sort(np.asarray(p, dtype=np.int64)) for p in parts)
