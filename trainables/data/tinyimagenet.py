"""Tiny-ImageNet (200 classes, 64x64) as the official ``tiny-imagenet-200.zip`` unpacks, under
``<data_root>/tiny-imagenet-200/``: ``wnids.txt`` (the classes; labels follow its order),
``train/<wnid>/images/*.JPEG`` (500 per class) and ``val/images/*.JPEG`` with
``val/val_annotations.txt`` (``file<TAB>wnid<TAB>box...``; 50 per class). The official ``test/``
has no labels and is not read.

The official val set is the test split; val is ``val_fraction`` of the training set (stratified,
seeded), as for CIFAR (``val_fraction: 0`` uses the test split as val too, ``meta.val_is_test``).
Val labels come from ``val_annotations.txt``, never from folders.

Images are decoded once into uint8 (100,000 training images are 1.2 GB) and normalised with the
per-channel statistics commonly published for Tiny-ImageNet (mean 0.4802, 0.4481, 0.3975; std
0.2770, 0.2691, 0.2821), resized when ``image_size`` is not 64. Sets that fit in
``memory_limit_gb`` as float32 are held as float32, larger ones as uint8 normalised when indexed.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from trainables.data import register_dataset
from trainables.data.base import (DatasetSplits, DatasetUnavailable, download_lock, download_or_explain,
                                  resolve_root, train_val_split)
from trainables.data.stl10 import fits, image_array, normalizer

NAME = "tinyimagenet"
FOLDER = "tiny-imagenet-200"
URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
MEAN = (0.4802, 0.4481, 0.3975)
STD = (0.2770, 0.2691, 0.2821)
SIZE = 64
REQUIRED = ("wnids.txt", "train", os.path.join("val", "images"), os.path.join("val", "val_annotations.txt"))


def folder(data_root: str | None) -> str:
    return os.path.join(resolve_root(data_root), FOLDER)


def missing(data_root: str | None) -> list[str]:
    return [p for p in REQUIRED if not os.path.exists(os.path.join(folder(data_root), p))]


def available(data_root: str | None = None, download: bool = False, **_: object) -> None:
    lacking = missing(data_root)
    if lacking and not download:
        raise DatasetUnavailable(
            f"dataset 'tinyimagenet' is not in {folder(data_root)} (missing {', '.join(lacking)}; expected "
            f"{URL} unzipped there); set dataset_kwargs.download: true to download it, or "
            f"dataset_kwargs.data_root to the directory that holds tiny-imagenet-200/")


def fetch(data_root: str | None = None, download: bool = False, **_: object) -> None:
    if not download or not missing(data_root):
        return
    root = resolve_root(data_root)
    with download_lock(root):
        if missing(data_root):
            from torchvision.datasets.utils import download_and_extract_archive

            download_or_explain(NAME, URL, folder(data_root),
                                lambda: download_and_extract_archive(URL, root, remove_finished=True))


def read_wnids(src: str) -> list[str]:
    with open(os.path.join(src, "wnids.txt")) as f:
        wnids = [line.strip() for line in f if line.strip()]
    if len(set(wnids)) != len(wnids):
        raise ValueError(f"{src}/wnids.txt lists a class twice")
    return wnids


def train_files(src: str, wnids: list[str]) -> tuple[list[str], np.ndarray]:
    paths, labels = [], []
    for label, wnid in enumerate(wnids):
        images = os.path.join(src, "train", wnid, "images")
        if not os.path.isdir(images):
            raise DatasetUnavailable(f"dataset 'tinyimagenet': {images} is missing (class {wnid} of wnids.txt)")
        for name in sorted(os.listdir(images)):
            if name.lower().endswith((".jpeg", ".jpg", ".png")):
                paths.append(os.path.join(images, name))
                labels.append(label)
    return paths, np.asarray(labels, dtype=np.int64)


def val_files(src: str, wnids: list[str]) -> tuple[list[str], np.ndarray]:
    """The official val images and their labels from ``val_annotations.txt``."""
    lookup = {w: i for i, w in enumerate(wnids)}
    paths, labels = [], []
    annotations = os.path.join(src, "val", "val_annotations.txt")
    with open(annotations) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 2 or fields[1] not in lookup:
                raise ValueError(f"{annotations}:{n}: expected 'file<TAB>wnid...' with a wnid of wnids.txt, "
                                 f"got {line.strip()!r}")
            paths.append(os.path.join(src, "val", "images", fields[0]))
            labels.append(lookup[fields[1]])
    order = np.argsort(paths, kind="stable")
    return [paths[i] for i in order], np.asarray(labels, dtype=np.int64)[order]


def decode_all(paths: list[str], threads: int) -> torch.Tensor:
    """uint8 (N, 3, 64, 64); grey-scale JPEGs (a few in Tiny-ImageNet) become RGB."""
    from torchvision.io import ImageReadMode, decode_image

    def one(path: str) -> torch.Tensor:
        image = decode_image(path, mode=ImageReadMode.RGB)
        if image.shape[1:] != (SIZE, SIZE):
            raise ValueError(f"{path}: expected a 64x64 image, got {tuple(image.shape[1:])}")
        return image

    if not paths:
        return torch.empty((0, 3, SIZE, SIZE), dtype=torch.uint8)
    with ThreadPoolExecutor(threads) as pool:
        return torch.stack(list(pool.map(one, paths)))


@register_dataset(NAME, available=available, fetch=fetch)
def load_tinyimagenet(seed: int = 0, data_root: str | None = None, download: bool = False, val_fraction: float = 0.1,
                      image_size: int = 64, memory_limit_gb: float = 4.0, threads: int = 4) -> DatasetSplits:
    """Tiny-ImageNet: ``val_fraction`` of the official train set is val, the official val set is test."""
    fetch(data_root, download)
    available(data_root)
    src = folder(data_root)
    wnids = read_wnids(src)
    tr_paths, tr_labels = train_files(src, wnids)
    te_paths, te_labels = val_files(src, wnids)
    if val_fraction == 0:
        keep, val_idx = np.arange(len(tr_labels)), None
    else:
        keep, val_idx = train_val_split(tr_labels, val_fraction, seed)
    item_shape = (3, image_size, image_size)
    in_memory = fits(len(tr_labels) + len(te_labels) + (len(te_labels) if val_idx is None else 0), item_shape,
                     memory_limit_gb)
    norm = normalizer(MEAN, STD, image_size, SIZE)
    train_u8, test_u8 = decode_all(tr_paths, threads), decode_all(te_paths, threads)
    test_x, test_y = image_array(test_u8, norm, item_shape, in_memory), torch.from_numpy(te_labels)
    meta = {"seed": seed, "val_fraction": val_fraction, "source": src, "classes": wnids, "image_size": image_size,
            "lazy": not in_memory}
    if val_idx is None:
        val_x, val_y = test_x, test_y
        meta["val_is_test"] = True
    else:
        vi = torch.from_numpy(val_idx)
        val_x, val_y = image_array(train_u8[vi], norm, item_shape, in_memory), torch.from_numpy(tr_labels[val_idx])
    ki = torch.from_numpy(keep)
    return DatasetSplits(name=NAME, train_x=image_array(train_u8[ki], norm, item_shape, in_memory),
                         train_y=torch.from_numpy(tr_labels[keep]), val_x=val_x, val_y=val_y, test_x=test_x,
                         test_y=test_y, num_classes=len(wnids), mean=MEAN, std=STD, meta=meta)
