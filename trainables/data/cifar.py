"""CIFAR-10 and CIFAR-100 from their python-pickle files (``cifar-10-batches-py/``,
``cifar-100-python/`` under ``data_root``), as torchvision downloads them.

The files are read directly, without torchvision's checksum step, so any files in the CIFAR
pickle format load (subsets, relabelled copies, test fixtures). Images are normalised with the
usual per-channel training-set statistics of each dataset.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass

import numpy as np
import torch

from trainables.data import register_dataset
from trainables.data.base import DatasetSplits, TorchvisionFiles, holdout_splits, normalize_uint8


@dataclass(frozen=True)
class CifarFormat:
    source: TorchvisionFiles
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def _cifar(name: str, folder: str, train: tuple[str, ...], test: tuple[str, ...], num_classes: int, mean, std,
           url: str, torchvision_class: str) -> CifarFormat:
    return CifarFormat(TorchvisionFiles(name, folder, train + test, torchvision_class, url), train, test,
                       num_classes, mean, std)


CIFAR10 = _cifar("cifar10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                 "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "CIFAR10")
CIFAR100 = _cifar("cifar100", "cifar-100-python", ("train",), ("test",), 100,
                  (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                  "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "CIFAR100")


def read_batches(folder: str, files: tuple[str, ...], label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 3, 32, 32) and int64 labels from CIFAR pickle files."""
    images, labels = [], []
    for name in files:
        with open(os.path.join(folder, name), "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[label_key] if label_key in batch else batch["labels"], dtype=np.int64))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def _loader(fmt: CifarFormat):
    def load(seed: int = 0, data_root: str | None = None, download: bool = False,
             val_fraction: float = 0.1, label_key: str = "fine_labels") -> DatasetSplits:
        folder = fmt.source.ensure(data_root, download)
        train_u8, train_y = read_batches(folder, fmt.train_files, label_key)
        test_u8, test_y = read_batches(folder, fmt.test_files, label_key)
        num_classes = fmt.num_classes if label_key == "fine_labels" else int(train_y.max()) + 1
        return holdout_splits(fmt.source.name, normalize_uint8(train_u8, fmt.mean, fmt.std), train_y,
                              normalize_uint8(test_u8, fmt.mean, fmt.std), test_y, val_fraction, seed,
                              num_classes, fmt.mean, fmt.std, {"source": folder, "label_key": label_key})

    load.__doc__ = (f"{fmt.source.name}: the official training set split into train/val by ``val_fraction``; "
                    f"the official test set as test. ``label_key`` ``coarse_labels`` gives CIFAR-100's 20 "
                    f"super-classes.")
    return load


for _fmt in (CIFAR10, CIFAR100):
    register_dataset(_fmt.source.name, available=_fmt.source.available, fetch=_fmt.source.fetch)(_loader(_fmt))
