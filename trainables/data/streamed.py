"""Image datasets too large to hold as tensors (ImageNet val is 50,000 JPEGs), streamed from disk
through a ``DataLoader`` with the standard evaluation transform. Only passes that compute cached
outputs (weak-teacher logits, embeddings) read them, once per model; trials read the cache.

``imagenet`` reads ``<data_root>/<split>/<wnid>/*.JPEG`` (the usual ImageFolder layout, classes in
sorted-wnid order, which is torchvision's ImageNet class order) or, if that folder is absent, the
official archives in ``data_root`` (``ILSVRC2012_devkit_t12.tar.gz`` and
``ILSVRC2012_img_val.tar``) through ``torchvision.datasets.ImageNet``, which unpacks them there
once. Nothing is downloaded.

A streamed dataset is a dataset entry like any other (``register_dataset(name, stream=...)``),
whose loader opens it: its parameters (``data_root``, ``split``) are checked the same way.
"""
from __future__ import annotations

import functools
import os

from trainables.data import DATASETS, register_dataset
from trainables.data.base import DatasetUnavailable, FolderDataset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def folder_dataset(name: str) -> FolderDataset | None:
    """What streamed dataset ``name`` holds; None for an in-memory (or unknown) dataset."""
    return DATASETS.get(name).stream if name in DATASETS else None


def is_folder_dataset(name: str) -> bool:
    return folder_dataset(name) is not None


def eval_transform(name: str):
    from torchvision import transforms

    if name == "resize256-crop224-imagenet-norm":
        return transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                   transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    raise KeyError(f"unknown transform {name!r}")


def open_folder_dataset(name: str, data_root: str, split: str = "val"):
    """A torchvision dataset yielding (transformed image, label) in a fixed order."""
    from torchvision import datasets

    spec = DATASETS.get(name).stream
    transform = eval_transform(spec.transform)
    root, folder, layout = _layout(name, data_root, split)
    if layout == "folder":
        data = datasets.ImageFolder(folder, transform=transform)
    else:
        data = datasets.ImageNet(root, split=split, transform=transform)
    if len(data.classes) != spec.num_classes:
        raise DatasetUnavailable(f"{name}: {folder} has {len(data.classes)} class folders, expected {spec.num_classes}")
    return data


def _layout(name: str, data_root: str, split: str) -> tuple[str, str, str]:
    """(root, split folder, ``folder`` or ``archives``): how the data is on disk, or
    :class:`DatasetUnavailable` saying where it was looked for."""
    root = os.path.abspath(os.path.expanduser(data_root))
    folder = os.path.join(root, split)
    if os.path.isdir(folder) and any(e.is_dir() for e in os.scandir(folder)):
        return root, folder, "folder"
    if os.path.exists(os.path.join(root, "ILSVRC2012_devkit_t12.tar.gz")):
        return root, folder, "archives"
    raise DatasetUnavailable(
        f"{name}: no images under {folder}/<class>/ and no ILSVRC2012_devkit_t12.tar.gz in {root}. Put the "
        f"{split} images there (one folder per class), or the official archives in {root}; nothing is "
        "downloaded")


def folder_available(name: str, data_root: str, split: str = "val") -> None:
    """The pre-flight's check (``check_dataset``): the layout :func:`open_folder_dataset` reads is there.
    Lists no files: a class count mismatch is found when the pass opens it."""
    _layout(name, data_root, split)


IMAGENET = FolderDataset(num_classes=1000, input_shape=(3, 224, 224), transform="resize256-crop224-imagenet-norm",
                         splits=("val", "train"))
register_dataset("imagenet", stream=IMAGENET, available=functools.partial(folder_available, "imagenet"))(
    functools.partial(open_folder_dataset, "imagenet"))
