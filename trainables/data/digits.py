"""scikit-learn's handwritten digits: 1,797 real 8x8 grey-scale images in 10 classes, shipped
inside the scikit-learn wheel, so it works offline and in CI."""
from __future__ import annotations

import numpy as np
import torch

from trainables.data import register_dataset
from trainables.data.base import NOVEL_KEY, DatasetSplits, FewShotSplit, NovelClasses, split_indices


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


def _digits_novel(base_classes: int = 6, **_: object) -> NovelClasses:
    from sklearn.datasets import load_digits

    counts = np.bincount(load_digits().target, minlength=10)[base_classes:]
    return NovelClasses(count=len(counts), min_per_class=int(counts.min()) if len(counts) else 0)


@register_dataset("digits_fewshot", novel=_digits_novel)
def load_digits_fewshot(seed: int = 0, base_classes: int = 6,
                        fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> DatasetSplits:
    """The few-shot variant of the digits: classes below ``base_classes`` (0-5 by default) are the
    base classes, split into train / val / test as ``digits`` is; the others (6-9) are the novel
    classes, every image of them, relabelled 0.., in ``meta["novel"]`` for episodic evaluation."""
    if not 2 <= base_classes <= 8:
        raise ValueError(f"base_classes must leave at least 2 base and 2 novel digits (2..8), got {base_classes}")
    full = load_digits_splits(seed, fractions)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)

    def base(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keep = y < base_classes
        return x[keep], y[keep]

    tr, va, te = base(full.train_x, full.train_y), base(full.val_x, full.val_y), base(full.test_x, full.test_y)
    # Normalised with the base training images' statistics: the novel classes are unseen data.
    mean = float(((tr[0] * full.std[0]) + full.mean[0]).mean())
    std = float(((tr[0] * full.std[0]) + full.mean[0]).std())
    norm = lambda x: ((x * full.std[0] + full.mean[0]) - mean) / std  # noqa: E731
    novel = labels >= base_classes
    split = FewShotSplit(x=(images[novel] - mean) / std, y=labels[novel] - base_classes,
                         classes=[str(c) for c in range(base_classes, 10)])
    return DatasetSplits(name="digits_fewshot", train_x=norm(tr[0]), train_y=tr[1], val_x=norm(va[0]), val_y=va[1],
                         test_x=norm(te[0]), test_y=te[1], num_classes=base_classes, mean=(mean,), std=(std,),
                         meta={"seed": seed, "fractions": list(fractions), "base_classes": base_classes,
                               NOVEL_KEY: split, "source": "sklearn.datasets.load_digits"})
