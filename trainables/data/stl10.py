"""STL-10 from its official binary files (``<data_root>/stl10_binary/``, as the
``stl10_binary.tar.gz`` archive unpacks and as torchvision downloads it): ``train_X.bin`` /
``train_y.bin`` (5,000 labelled images), ``test_X.bin`` / ``test_y.bin`` (8,000) and, for the
self-supervised setting, ``unlabeled_X.bin`` (100,000). Each image is 3x96x96 uint8 stored
channel by channel and *column-major* within a channel (the official readme), so it is read as
``(C, W, H)`` and transposed; labels are 1..10 on disk and 0..9 here.

``split`` picks the training images: ``train`` (labelled), ``unlabeled``, or
``train+unlabeled`` (DINO's setting). Unlabelled images carry the label ``-1``
(:data:`UNLABELED`): they are for self-supervised training only, and anything that needs labels
(probes, supervised targets, stratified subsets) must keep ``train_y >= 0``. Val is always
``val_fraction`` of the *labelled* training set (stratified, seeded), test the official test set.

Normalisation uses the per-channel statistics commonly published for STL-10
(mean 0.4467, 0.4398, 0.4066; std 0.2603, 0.2566, 0.2713). ``image_size`` other than 96 resizes
(bilinear, antialiased). Images are held as float32 when the whole set fits in
``memory_limit_gb``; otherwise as uint8 and normalised batch by batch when indexed (a
:class:`~trainables.data.lazy.LazyImages` over the uint8 rows; 100,000 unlabelled images are
2.8 GB as uint8, 11 GB as float32).
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np
import torch

from trainables.data import register_dataset
from trainables.data.base import (DatasetSplits, DatasetUnavailable, download_lock, download_or_explain,
                                  resolve_root, train_val_split)
from trainables.data.lazy import LazyImages

NAME = "stl10"
FOLDER = "stl10_binary"
URL = "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"
MEAN = (0.4467, 0.4398, 0.4066)
STD = (0.2603, 0.2566, 0.2713)
SIZE = 96
UNLABELED = -1
SPLITS = ("train", "unlabeled", "train+unlabeled")
LABELLED_FILES = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin")


def needed_files(split: str) -> tuple[str, ...]:
    if split not in SPLITS:
        raise ValueError(f"dataset 'stl10': split must be one of {', '.join(SPLITS)}, got {split!r}")
    return LABELLED_FILES + (("unlabeled_X.bin",) if "unlabeled" in split else ())


def folder(data_root: str | None) -> str:
    return os.path.join(resolve_root(data_root), FOLDER)


def missing(data_root: str | None, split: str) -> list[str]:
    return [f for f in needed_files(split) if not os.path.isfile(os.path.join(folder(data_root), f))]


def available(data_root: str | None = None, download: bool = False, split: str = "train", **_: object) -> None:
    lacking = missing(data_root, split)
    if lacking and not download:
        raise DatasetUnavailable(
            f"dataset 'stl10' is not in {folder(data_root)} (missing {', '.join(lacking)}; expected the "
            f"stl10_binary/ folder of {URL}); set dataset_kwargs.download: true to download it, or "
            f"dataset_kwargs.data_root to the directory that holds stl10_binary/")


def fetch(data_root: str | None = None, download: bool = False, split: str = "train", **_: object) -> None:
    if not download or not missing(data_root, split):
        return
    root = resolve_root(data_root)
    with download_lock(root):
        if missing(data_root, split):
            import torchvision.datasets

            # torchvision's downloader fetches and unpacks the whole archive (all splits) into root.
            download_or_explain(NAME, URL, folder(data_root),
                                lambda: torchvision.datasets.STL10(root, split="train", download=True))


def read_images(path: str) -> np.ndarray:
    """uint8 (N, 3, 96, 96), upright: the file's column-major images transposed. A memory map, so
    the unlabelled set is only read as it is used."""
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    if raw.size % (3 * SIZE * SIZE):
        raise ValueError(f"{path}: {raw.size} bytes is not a whole number of 3x96x96 images")
    return raw.reshape(-1, 3, SIZE, SIZE).transpose(0, 1, 3, 2)


def read_labels(path: str) -> np.ndarray:
    """Labels 1..10 on disk -> int64 0..9."""
    labels = np.fromfile(path, dtype=np.uint8).astype(np.int64) - 1
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: STL-10 labels must be 1..10")
    return labels


def normalizer(mean, std, image_size: int, source_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 (..., C, H, W) -> normalised float32, resized to ``image_size`` when it differs."""
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def apply(u8: torch.Tensor) -> torch.Tensor:
        x = (u8.float() / 255.0 - m) / s
        if image_size != source_size:
            from torchvision.transforms.v2 import functional as TF

            x = TF.resize(x, [image_size, image_size], antialias=True)
        return x

    return apply


def image_array(u8, norm: Callable[[torch.Tensor], torch.Tensor], item_shape: tuple[int, ...], in_memory: bool,
                threads: int = 4, chunk: int = 4096):
    """A float32 tensor of ``u8`` (uint8 (N, C, H, W), array or tensor) normalised by ``norm``, or
    a lazy image array that normalises the rows it is indexed with."""
    u8 = torch.as_tensor(np.ascontiguousarray(u8)) if isinstance(u8, np.ndarray) else u8
    if not in_memory:
        return LazyImages(u8, norm, item_shape, threads=threads)
    out = torch.empty((len(u8), *item_shape), dtype=torch.float32)
    for start in range(0, len(u8), chunk):
        out[start:start + chunk] = norm(u8[start:start + chunk])
    return out


def fits(n_images: int, item_shape: tuple[int, ...], memory_limit_gb: float) -> bool:
    return n_images * int(np.prod(item_shape)) * 4 <= memory_limit_gb * 2**30


@register_dataset(NAME, available=available, fetch=fetch)
def load_stl10(seed: int = 0, data_root: str | None = None, download: bool = False, split: str = "train",
               val_fraction: float = 0.1, image_size: int = 96, memory_limit_gb: float = 4.0) -> DatasetSplits:
    """STL-10's binary files; ``split`` train | unlabeled | train+unlabeled (unlabelled images get
    label -1); val is ``val_fraction`` of the labelled train set, test the official test set."""
    fetch(data_root, download, split)
    available(data_root, split=split)
    src = folder(data_root)
    train_u8, train_y = read_images(os.path.join(src, "train_X.bin")), read_labels(os.path.join(src, "train_y.bin"))
    test_u8, test_y = read_images(os.path.join(src, "test_X.bin")), read_labels(os.path.join(src, "test_y.bin"))
    if len(train_u8) != len(train_y) or len(test_u8) != len(test_y):
        raise ValueError(f"{src}: image and label files disagree in length")
    if val_fraction == 0:
        keep, val_idx = np.arange(len(train_y)), None
    else:
        keep, val_idx = train_val_split(train_y, val_fraction, seed)
    parts_x, parts_y = [], []
    if "train" in split.split("+"):
        parts_x.append(train_u8[keep])
        parts_y.append(train_y[keep])
    n_unlabeled = 0
    if "unlabeled" in split:
        unlabeled = read_images(os.path.join(src, "unlabeled_X.bin"))
        n_unlabeled = len(unlabeled)
        parts_x.append(unlabeled)
        parts_y.append(np.full(n_unlabeled, UNLABELED, dtype=np.int64))
    tr_u8 = parts_x[0] if len(parts_x) == 1 else np.concatenate(parts_x)
    tr_y = np.concatenate(parts_y)
    item_shape = (3, image_size, image_size)
    n_val = len(test_y) if val_idx is None else len(val_idx)
    in_memory = fits(len(tr_y) + n_val + len(test_y), item_shape, memory_limit_gb)
    norm = normalizer(MEAN, STD, image_size, SIZE)
    test_x = image_array(test_u8, norm, item_shape, in_memory)
    if val_idx is None:  # val_fraction 0: the test set as val too (as holdout_splits does)
        val_x, val_y = test_x, test_y
    else:
        val_x, val_y = image_array(train_u8[val_idx], norm, item_shape, in_memory), train_y[val_idx]
    meta = {"seed": seed, "val_fraction": val_fraction, "source": src, "split": split, "image_size": image_size,
            "unlabeled": n_unlabeled, "lazy": not in_memory}
    if val_idx is None:
        meta["val_is_test"] = True
    return DatasetSplits(name=NAME, train_x=image_array(tr_u8, norm, item_shape, in_memory),
                         train_y=torch.from_numpy(tr_y), val_x=val_x, val_y=torch.from_numpy(val_y),
                         test_x=test_x, test_y=torch.from_numpy(test_y), num_classes=10, mean=MEAN, std=STD,
                         meta=meta)
