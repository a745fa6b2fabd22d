"""Image-folder datasets (ImageNet, Tiny-ImageNet, the DAPT fine-grained sets …): ``data_root``
holds ``train/<class>/<image>`` and a held-out ``val/`` and/or ``test/`` with the same class
folders (classes are the sorted folder names of ``train/``).

* ``train/`` + ``val/`` + ``test/``: used as they are.
* ``train/`` + one of ``val/`` or ``test/``: that folder is the test split and ``val_fraction`` of
  ``train/`` (stratified, seeded) becomes val, as for CIFAR.

Images are resized (shorter side to ``resize``, default ``image_size / 0.875``), centre-cropped
to ``image_size`` and normalised with ``mean``/``std`` (ImageNet's unless given). Sets up to
``memory_limit_gb`` (as float32) are decoded once into tensors; larger ones become
:class:`~trainables.data.lazy.LazyImages`, decoded batch by batch.

Tiny-ImageNet's ``val/`` ships as ``images/`` plus ``val_annotations.txt``: move each image into
its class folder first.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import torch

from trainables.data import register_dataset
from trainables.data.base import DatasetSplits, DatasetUnavailable, train_val_split
from trainables.data.lazy import LazyImages

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _require_root(data_root: str | None) -> str:
    if not data_root:
        raise DatasetUnavailable("dataset 'imagefolder' needs dataset_kwargs.data_root: the directory holding "
                                 "train/ and val/ (or test/)")
    root = os.path.expanduser(data_root)
    if not os.path.isabs(root):
        raise ValueError(f"data_root must be an absolute path, got {data_root!r}")
    return root


def available(data_root: str | None = None, **_: object) -> None:
    root = _require_root(data_root)
    if not os.path.isdir(os.path.join(root, "train")):
        raise DatasetUnavailable(f"dataset 'imagefolder': no train/ folder in {root}; set dataset_kwargs.data_root "
                                 f"to the directory holding train/ and val/ (or test/) with one folder per class")
    if not any(os.path.isdir(os.path.join(root, s)) for s in ("val", "test")):
        raise DatasetUnavailable(f"dataset 'imagefolder': {root} has train/ but neither val/ nor test/")


def scan(folder: str, classes: list[str] | None = None) -> tuple[list[str], np.ndarray, list[str]]:
    """Image paths, labels and class names of one split folder (labels follow ``classes``)."""
    found = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    classes = classes if classes is not None else found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise ValueError(f"{folder} has class folders missing from train/: {', '.join(unknown[:5])}")
    lookup = {c: i for i, c in enumerate(classes)}
    paths, labels = [], []
    for name in found:
        for dirpath, _, files in sorted(os.walk(os.path.join(folder, name))):
            for f in sorted(files):
                if f.lower().endswith(IMAGE_SUFFIXES):
                    paths.append(os.path.join(dirpath, f))
                    labels.append(lookup[name])
    return paths, np.asarray(labels, dtype=np.int64), classes


def decode(path: str, image_size: int, resize: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2 import functional as TF

    image = decode_image(path, mode=ImageReadMode.RGB)
    image = TF.center_crop(TF.resize(image, [resize], antialias=True), [image_size, image_size])
    return (image.float() / 255.0 - mean) / std


@register_dataset("imagefolder", available=available)
def load_imagefolder(seed: int = 0, data_root: str | None = None, image_size: int = 224, resize: int | None = None,
                     val_fraction: float = 0.1, mean: list[float] | None = None, std: list[float] | None = None,
                     memory_limit_gb: float = 4.0, threads: int = 4) -> DatasetSplits:
    available(data_root)
    root = _require_root(data_root)
    mean_t = tuple(mean or IMAGENET_MEAN)
    std_t = tuple(std or IMAGENET_STD)
    train_paths, train_y, classes = scan(os.path.join(root, "train"))
    held_out = {s: scan(os.path.join(root, s), classes) for s in ("val", "test") if os.path.isdir(os.path.join(root, s))}
    if len(held_out) == 2:
        splits = {"train": (train_paths, train_y), "val": held_out["val"][:2], "test": held_out["test"][:2]}
    else:
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1) when {root} has no separate val/ and test/")
        tr, va = train_val_split(train_y, val_fraction, seed)
        splits = {"train": ([train_paths[i] for i in tr], train_y[tr]), "val": ([train_paths[i] for i in va], train_y[va]),
                  "test": next(iter(held_out.values()))[:2]}
    return image_splits("imagefolder", splits, classes, image_size, resize, mean_t, std_t, memory_limit_gb, threads,
                        {"seed": seed, "source": root})


def image_splits(name: str, splits: dict[str, tuple[list[str], np.ndarray]], classes: list[str], image_size: int,
                 resize: int | None, mean, std, memory_limit_gb: float, threads: int, meta: dict) -> DatasetSplits:
    """``DatasetSplits`` from image files listed per split (``train``, ``val``, ``test``): resized
    (shorter side to ``resize``, default ``image_size / 0.875``), centre-cropped, normalised;
    decoded once into tensors when they fit ``memory_limit_gb`` as float32, else lazily."""
    decode_one = partial(decode, image_size=image_size, resize=resize or round(image_size / 0.875),
                         mean=torch.tensor(mean).view(-1, 1, 1), std=torch.tensor(std).view(-1, 1, 1))
    item_shape = (3, image_size, image_size)
    total = sum(len(p) for p, _ in splits.values())
    in_memory = total * int(np.prod(item_shape)) * 4 <= memory_limit_gb * 2**30

    def images(paths: list[str]):
        if not in_memory:
            return LazyImages(paths, decode_one, item_shape, threads=threads)
        if not paths:
            return torch.empty((0, *item_shape))
        with ThreadPoolExecutor(threads) as pool:
            return torch.stack(list(pool.map(decode_one, paths)))

    tensors = {k: (images(p), torch.from_numpy(np.asarray(y, dtype=np.int64))) for k, (p, y) in splits.items()}
    return DatasetSplits(
        name=name, train_x=tensors["train"][0], train_y=tensors["train"][1],
        val_x=tensors["val"][0], val_y=tensors["val"][1], test_x=tensors["test"][0], test_y=tensors["test"][1],
        num_classes=len(classes), mean=tuple(mean), std=tuple(std),
        meta={**meta, "classes": classes, "lazy": not in_memory, "image_size": image_size},
    )


def holdout_val(train: tuple[list[str], np.ndarray], test: tuple[list[str], np.ndarray], val_fraction: float,
                seed: int) -> dict[str, tuple[list[str], np.ndarray]]:
    """Splits of a dataset whose official split has no validation set: ``val_fraction`` of the
    training files (stratified, seeded) as val; ``val_fraction: 0`` uses the test files as val too
    (DAPT selects on test)."""
    paths, labels = train
    if val_fraction == 0:
        return {"train": train, "val": test, "test": test}
    tr, va = train_val_split(labels, val_fraction, seed)
    return {"train": ([paths[i] for i in tr], labels[tr]), "val": ([paths[i] for i in va], labels[va]), "test": test}


def official_root(name: str, data_root: str | None, folder: str, required: tuple[str, ...], archive: str) -> str:
    """``<data_root>/<folder>`` after checking that the official archive's files are there."""
    from trainables.data.base import resolve_root

    root = os.path.join(resolve_root(data_root), folder)
    missing = [r for r in required or (".",) if not os.path.exists(os.path.join(root, r))]
    if missing:
        raise DatasetUnavailable(f"dataset {name!r}: {os.path.normpath(os.path.join(root, missing[0]))} is "
                                 f"missing; unpack the "
                                 f"official archive ({archive}) into {os.path.dirname(root)}, or set "
                                 f"dataset_kwargs.data_root to the directory that holds {folder}/")
    return root
