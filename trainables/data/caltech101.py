"""Caltech-101 (101 object classes, without ``BACKGROUND_Google``) as ``caltech-101.zip`` unpacks
(and torchvision stores it) under ``<data_root>/caltech101/101_ObjectCategories/<class>/image_NNNN.jpg``.

Caltech-101 has no official train/test split; DAPT's (``utils/datasets.py``) is used: in every
class, the first 80% of its images in file order (``int(0.8 n)``) are train and the rest test.
Val is ``val_fraction`` of the training images (``0``: the test set, as DAPT). Classes are the
sorted folder names (torchvision's order). Images (some grey-scale) are decoded as RGB, resized to
``resize`` (256), centre-cropped to ``image_size`` (224), normalised with ImageNet's statistics.
"""
from __future__ import annotations

import os

import numpy as np

from trainables.data import register_dataset
from trainables.data.base import DatasetSplits
from trainables.data.imagefolder import (IMAGE_SUFFIXES, IMAGENET_MEAN, IMAGENET_STD, holdout_val, image_splits,
                                         official_root)

FOLDER = os.path.join("caltech101", "101_ObjectCategories")
ARCHIVE = "caltech-101.zip from https://data.caltech.edu/records/mzrjq-6wc02 (101_ObjectCategories.tar.gz inside)"
TRAIN_SHARE = 0.8


def available(data_root: str | None = None, **_: object) -> None:
    official_root("caltech101", data_root, FOLDER, (), ARCHIVE)


@register_dataset("caltech101", available=available)
def load_caltech101(seed: int = 0, data_root: str | None = None, image_size: int = 224, resize: int | None = 256,
                    val_fraction: float = 0.1, memory_limit_gb: float = 4.0, threads: int = 4) -> DatasetSplits:
    root = official_root("caltech101", data_root, FOLDER, (), ARCHIVE)
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and d != "BACKGROUND_Google")
    train: tuple[list[str], list[int]] = ([], [])
    test: tuple[list[str], list[int]] = ([], [])
    for label, name in enumerate(classes):
        files = sorted(f for f in os.listdir(os.path.join(root, name)) if f.lower().endswith(IMAGE_SUFFIXES))
        cut = int(TRAIN_SHARE * len(files))
        for i, f in enumerate(files):
            part = train if i < cut else test
            part[0].append(os.path.join(root, name, f))
            part[1].append(label)
    as_split = lambda part: (part[0], np.asarray(part[1], dtype=np.int64))  # noqa: E731
    return image_splits("caltech101", holdout_val(as_split(train), as_split(test), val_fraction, seed), classes,
                        image_size, resize, IMAGENET_MEAN, IMAGENET_STD, memory_limit_gb, threads,
                        {"seed": seed, "source": root, "val_fraction": val_fraction})
