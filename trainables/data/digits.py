"""scikit-learn's handwritten digits: 1,797 real 8x8 grey-scale images in 10 classes, shipped
inside the scikit-learn wheel, so it works offline and in CI."""
from __future__ import annotations

import numpy as np
import torch

from trainables.data import register_dataset
from trainables.data.base import DatasetSplits, split_indices


@register_dataset("digits")
def load_digits_splits(seed: int = 0, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> DatasetSplits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0  # pixel values are 0..16
    labels = bunch.target.astype(np.int64)
    train_idx, val_idx, test_idx = split_indices(labels, tuple(fractions), seed)
    # Normalisation statistics come from the training split only.
    mean = float(images[train_idx].mean())
    std = float(images[train_idx].std())
    x = torch.from_numpy((images - mean) / std).unsqueeze(1)
    y = torch.from_numpy(labels)
    return DatasetSplits(
        name="digits",
        train_x=x[train_idx], train_y=y[train_idx],
        val_x=x[val_idx], val_y=y[val_idx],
        test_x=x[test_idx], test_y=y[test_idx],
        num_classes=10, mean=(mean,), std=(std,),
        meta={"seed": seed, "fractions": list(fractions), "source": "sklearn.datasets.load_digits"},
    )
