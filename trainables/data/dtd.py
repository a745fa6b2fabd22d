"""The Describable Textures Dataset (47 classes) with its official splits, as ``dtd-r1.0.1.tar.gz``
unpacks under ``<data_root>/dtd/``: ``images/<class>/<file>.jpg`` and
``labels/{train,val,test}<partition>.txt`` (``class/file.jpg`` lines; 10 partitions of 40
images per class each). DAPT uses partition 1 (torchvision's ``DTD`` default), training on
``train1`` and testing on ``test1``; the official ``val1`` is the val split here.

Classes are the sorted folder names of ``images/``. Images are resized to ``resize`` (256),
centre-cropped to ``image_size`` (224), normalised with ImageNet's statistics.
"""
from __future__ import annotations

import os

import numpy as np

from trainables.data import register_dataset
from trainables.data.base import DatasetSplits
from trainables.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD, image_splits, official_root

FOLDER = "dtd"
ARCHIVE = "dtd-r1.0.1.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/dtd/"


def _required(partition: int) -> tuple[str, ...]:
    return ("images",) + tuple(os.path.join("labels", f"{s}{partition}.txt") for s in ("train", "val", "test"))


def available(data_root: str | None = None, partition: int = 1, **_: object) -> None:
    if not 1 <= partition <= 10:
        raise ValueError(f"partition must be 1 to 10 (DTD's official splits), got {partition}")
    official_root("dtd", data_root, FOLDER, _required(partition), ARCHIVE)


@register_dataset("dtd", available=available)
def load_dtd(seed: int = 0, data_root: str | None = None, partition: int = 1, image_size: int = 224,
             resize: int | None = 256, memory_limit_gb: float = 4.0, threads: int = 4) -> DatasetSplits:
    available(data_root, partition)
    root = official_root("dtd", data_root, FOLDER, _required(partition), ARCHIVE)
    classes = sorted(d for d in os.listdir(os.path.join(root, "images"))
                     if os.path.isdir(os.path.join(root, "images", d)))
    lookup = {c: i for i, c in enumerate(classes)}
    splits = {}
    for split in ("train", "val", "test"):
        listing = os.path.join(root, "labels", f"{split}{partition}.txt")
        with open(listing) as f:
            files = [line.strip() for line in f if line.strip()]
        unknown = [name for name in files if name.split("/")[0] not in lookup]
        if unknown:
            raise ValueError(f"{listing}: {unknown[0]!r} names no class folder of {os.path.join(root, 'images')}")
        splits[split] = ([os.path.join(root, "images", name) for name in files],
                         np.asarray([lookup[name.split("/")[0]] for name in files], dtype=np.int64))
    return image_splits("dtd", splits, classes, image_size, resize, IMAGENET_MEAN, IMAGENET_STD, memory_limit_gb,
                        threads, {"seed": seed, "source": root, "partition": partition})
