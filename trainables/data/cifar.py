"""CIFAR-10 and CIFAR-100 from their python-pickle files (``cifar-10-batches-py/``,
``cifar-100-python/`` under ``data_root``), as torchvision downloads them.

The files are read directly, without torchvision's checksum step, so any files in the CIFAR
pickle format load (subsets, relabelled copies, test fixtures). Images are normalised with the
usual per-channel training-set statistics of each dataset.

``image_size`` other than 32 upsamples every image as DAPT feeds CIFAR to ImageNet backbones
(``Resize(image_size / 0.875)``, ``CenterCrop(image_size)``: 256 then 224): sets that fit
``memory_limit_gb`` as float32 are resized once, larger ones (CIFAR at 224 px is 30 GB) are
resized batch by batch when indexed (:class:`~trainables.data.lazy.LazyImages`).
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from trainables.data import register_dataset
from trainables.data.base import DatasetSplits, TorchvisionFiles, holdout_splits, normalize_uint8, train_val_split
from trainables.data.lazy import LazyImages


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


def _upscaled(index: int, images: torch.Tensor, size: int, resize: int, mean, std) -> torch.Tensor:
    from torchvision.transforms.v2 import functional as TF

    image = TF.center_crop(TF.resize(images[index], [resize], antialias=True), [size, size])
    return (image.float() / 255.0 - mean) / std


def _at_size(images: torch.Tensor, index: np.ndarray, fmt: CifarFormat, size: int, memory_limit_gb: float):
    """``images[index]`` at ``size`` px, normalised: one tensor when it fits, else a lazy array."""
    decode = partial(_upscaled, images=images, size=size, resize=round(size / 0.875),
                     mean=torch.tensor(fmt.mean).view(-1, 1, 1), std=torch.tensor(fmt.std).view(-1, 1, 1))
    lazy = LazyImages([int(i) for i in index], decode, (3, size, size))
    if len(index) * 3 * size * size * 4 > memory_limit_gb * 2**30:
        return lazy
    return lazy[:] if len(index) else torch.empty((0, 3, size, size))


def _resized_splits(fmt, train_u8, train_y, test_u8, test_y, val_fraction, seed, num_classes, size,
                    memory_limit_gb, meta) -> DatasetSplits:
    """As :func:`holdout_splits`, split on the uint8 images before any is resized."""
    test_x = _at_size(test_u8, np.arange(len(test_y)), fmt, size, memory_limit_gb)
    if val_fraction == 0:
        train_idx, val_x, val_y, meta = np.arange(len(train_y)), test_x, test_y, {**meta, "val_is_test": True}
    else:
        train_idx, val_idx = train_val_split(train_y.numpy(), val_fraction, seed)
        val_x, val_y = _at_size(train_u8, val_idx, fmt, size, memory_limit_gb), train_y[torch.from_numpy(val_idx)]
    return DatasetSplits(fmt.source.name, _at_size(train_u8, train_idx, fmt, size, memory_limit_gb),
                         train_y[torch.from_numpy(train_idx)], val_x, val_y, test_x, test_y, num_classes,
                         fmt.mean, fmt.std, {"seed": seed, "val_fraction": val_fraction, "image_size": size, **meta})


def _loader(fmt: CifarFormat):
    def load(seed: int = 0, data_root: str | None = None, download: bool = False,
             val_fraction: float = 0.1, label_key: str = "fine_labels", image_size: int = 32,
             memory_limit_gb: float = 4.0) -> DatasetSplits:
        folder = fmt.source.ensure(data_root, download)
        train_u8, train_y = read_batches(folder, fmt.train_files, label_key)
        test_u8, test_y = read_batches(folder, fmt.test_files, label_key)
        num_classes = fmt.num_classes if label_key == "fine_labels" else int(train_y.max()) + 1
        if image_size != 32:
            return _resized_splits(fmt, train_u8, train_y, test_u8, test_y, val_fraction, seed, num_classes,
                                   image_size, memory_limit_gb, {"source": folder, "label_key": label_key})
        return holdout_splits(fmt.source.name, normalize_uint8(train_u8, fmt.mean, fmt.std), train_y,
                              normalize_uint8(test_u8, fmt.mean, fmt.std), test_y, val_fraction, seed,
                              num_classes, fmt.mean, fmt.std, {"source": folder, "label_key": label_key})

    load.__doc__ = (f"{fmt.source.name}: the official training set split into train/val by ``val_fraction``; "
                    f"the official test set as test. ``label_key`` ``coarse_labels`` gives CIFAR-100's 20 "
                    f"super-classes.")
    return load


for _fmt in (CIFAR10, CIFAR100):
    register_dataset(_fmt.source.name, available=_fmt.source.available, fetch=_fmt.source.fetch)(_loader(_fmt))
