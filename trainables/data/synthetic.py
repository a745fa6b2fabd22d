"""A learnable synthetic image dataset: class-dependent Gaussian templates plus noise.

Used by tests and benchmarks that need a given shape (for example CIFAR-shaped 3x32x32 with 100
classes) without any download.
"""
from __future__ import annotations

import torch

from trainables.data import register_dataset
from trainables.data.base import DatasetSplits


@register_dataset("synthetic")
def load_synthetic(seed: int = 0, num_classes: int = 10, image_size: int = 8, channels: int = 1,
                   train_size: int = 1000, val_size: int = 200, test_size: int = 200,
                   noise: float = 1.0) -> DatasetSplits:
    gen = torch.Generator().manual_seed(seed)
    templates = torch.randn(num_classes, channels, image_size, image_size, generator=gen)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, num_classes, (n,), generator=gen)
        x = templates[y] + noise * torch.randn(n, channels, image_size, image_size, generator=gen)
        return x, y

    train_x, train_y = draw(train_size)
    val_x, val_y = draw(val_size)
    test_x, test_y = draw(test_size)
    mean, std = train_x.mean().item(), train_x.std().item()
    norm = lambda t: (t - mean) / std  # noqa: E731
    return DatasetSplits(
        name="synthetic", train_x=norm(train_x), train_y=train_y, val_x=norm(val_x), val_y=val_y,
        test_x=norm(test_x), test_y=test_y, num_classes=num_classes,
        mean=(mean,) * channels, std=(std,) * channels,
        meta={"seed": seed, "noise": noise},
    )
