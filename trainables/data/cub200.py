"""CUB-200-2011 (200 bird species) with its official split, as ``CUB_200_2011.tgz`` unpacks under
``<data_root>/CUB_200_2011/``: ``images.txt`` (``id path``), ``image_class_labels.txt``
(``id label``, 1-based), ``train_test_split.txt`` (``id is_training``: 5,994 train, 5,794 test),
``classes.txt`` and ``images/<class>/<file>.jpg``. DAPT reads the same files (its ``Cub2011``).

Val is ``val_fraction`` of the official training images (``0``: the test set, as DAPT). Images are
resized to ``resize`` (default 256), centre-cropped to ``image_size`` (224) and normalised with
ImageNet's statistics, DAPT's test view.
"""
from __future__ import annotations

import os

import numpy as np

from trainables.data import register_dataset
from trainables.data.base import DatasetSplits
from trainables.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD, holdout_val, image_splits, official_root

FOLDER = "CUB_200_2011"
FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt", "images")
ARCHIVE = "CUB_200_2011.tgz from https://data.caltech.edu/records/65de6-vp158"


def _table(path: str) -> dict[int, str]:
    """``id value`` lines of one of the archive's index files."""
    with open(path) as f:
        rows = [line.split(maxsplit=1) for line in f if line.strip()]
    try:
        return {int(k): v.strip() for k, v in rows}
    except ValueError:
        raise ValueError(f"{path}: expected 'id value' lines") from None


def available(data_root: str | None = None, **_: object) -> None:
    official_root("cub200", data_root, FOLDER, FILES, ARCHIVE)


@register_dataset("cub200", available=available)
def load_cub200(seed: int = 0, data_root: str | None = None, image_size: int = 224, resize: int | None = 256,
                val_fraction: float = 0.1, memory_limit_gb: float = 4.0, threads: int = 4) -> DatasetSplits:
    root = official_root("cub200", data_root, FOLDER, FILES, ARCHIVE)
    paths = _table(os.path.join(root, "images.txt"))
    labels = _table(os.path.join(root, "image_class_labels.txt"))
    is_train = _table(os.path.join(root, "train_test_split.txt"))
    names = _table(os.path.join(root, "classes.txt"))
    classes = [names[k] for k in sorted(names)]
    parts: dict[str, tuple[list[str], list[int]]] = {"train": ([], []), "test": ([], [])}
    for image_id in sorted(paths):
        part = parts["train" if is_train[image_id] == "1" else "test"]
        part[0].append(os.path.join(root, "images", paths[image_id]))
        part[1].append(int(labels[image_id]) - 1)  # the archive's labels start at 1
    train, test = ((p, np.asarray(y, dtype=np.int64)) for p, y in (parts["train"], parts["test"]))
    return image_splits("cub200", holdout_val(train, test, val_fraction, seed), classes, image_size, resize,
                        IMAGENET_MEAN, IMAGENET_STD, memory_limit_gb, threads,
                        {"seed": seed, "source": root, "val_fraction": val_fraction})
