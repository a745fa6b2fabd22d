"""Image datasets too large to hold as tensors (ImageNet val is 50,000 JPEGs), streamed from disk
through a ``DataLoader`` with the standard evaluation transform. Only passes that compute cached
outputs (weak-teacher logits, embeddings) read them, once per model; trials read the cache.

``imagenet`` reads ``<data_root>/<split>/<wnid>/*.JPEG`` (the usual ImageFolder layout, classes in
sorted-wnid order, which is torchvision's ImageNet class order) or, if that folder is absent, the
official archives in ``data_root`` (``ILSVRC2012_devkit_t12.tar.gz`` and
``ILSVRC2012_img_val.tar``) through ``torchvision.datasets.ImageNet``, which unpacks them there
once. Nothing is downloaded.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from trainables.data.base import DatasetUnavailable

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class FolderDataset:
    num_classes: int
    input_shape: tuple[int, int, int]
    transform: str  # named, so it can be part of a cache key
    splits: tuple[str, ...]


FOLDER_DATASETS: dict[str, FolderDataset] = {
    "imagenet": FolderDataset(num_classes=1000, input_shape=(3, 224, 224), transform="resize256-crop224-imagenet-norm",
                              splits=("val", "train")),
}


def is_folder_dataset(name: str) -> bool:
    return name in FOLDER_DATASETS


def eval_transform(name: str):
    from torchvision import transforms

    if name == "resize256-crop224-imagenet-norm":
        return transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                   transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    raise KeyError(f"unknown transform {name!r}")


def open_folder_dataset(name: str, data_root: str, split: str = "val"):
    """A torchvision dataset yielding (transformed image, label) in a fixed order."""
    from torchvision import datasets

    spec = FOLDER_DATASETS[name]
    root = os.path.abspath(os.path.expanduser(data_root))
    folder = os.path.join(root, split)
    transform = eval_transform(spec.transform)
    if os.path.isdir(folder) and any(e.is_dir() for e in os.scandir(folder)):
        data = datasets.ImageFolder(folder, transform=transform)
    elif os.path.exists(os.path.join(root, "ILSVRC2012_devkit_t12.tar.gz")):
        data = datasets.ImageNet(root, split=split, transform=transform)
    else:
        raise DatasetUnavailable(
            f"{name}: no images under {folder}/<class>/ and no ILSVRC2012_devkit_t12.tar.gz in {root}. Put the "
            f"{split} images there (one folder per class), or the official archives in {root}; nothing is "
            "downloaded")
    if len(data.classes) != spec.num_classes:
        raise DatasetUnavailable(f"{name}: {folder} has {len(data.classes)} class folders, expected {spec.num_classes}")
    return data
