"""MNIST and Fashion-MNIST from their IDX files (``<data_root>/MNIST/raw/``,
``<data_root>/FashionMNIST/raw/``, torchvision's layout), 1x28x28 grey-scale."""
from __future__ import annotations

import os
from dataclasses import dataclass

from trainables.data import register_dataset
from trainables.data.base import (DatasetSplits, download_lock, download_or_explain, holdout_splits,
                                  missing_dataset, normalize_uint8, resolve_root)

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class IdxFormat:
    name: str
    torchvision_class: str
    mean: float
    std: float
    url: str


MNIST = IdxFormat("mnist", "MNIST", 0.1307, 0.3081, "https://ossci-datasets.s3.amazonaws.com/mnist/")
FASHION = IdxFormat("fashionmnist", "FashionMNIST", 0.2860, 0.3530,
                    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/")


def _raw(fmt: IdxFormat, data_root: str | None) -> str:
    return os.path.join(resolve_root(data_root), fmt.torchvision_class, "raw")


def _missing(fmt: IdxFormat, data_root: str | None) -> list[str]:
    return [f for f in FILES if not os.path.isfile(os.path.join(_raw(fmt, data_root), f))]


def _available(fmt: IdxFormat):
    def available(data_root: str | None = None, download: bool = False, **_: object) -> None:
        if not download and _missing(fmt, data_root):
            raise missing_dataset(fmt.name, _raw(fmt, data_root), ", ".join(FILES))

    return available


def _fetch(fmt: IdxFormat):
    def fetch(data_root: str | None = None, download: bool = False, **_: object) -> None:
        if not download or not _missing(fmt, data_root):
            return
        import torchvision.datasets

        root = resolve_root(data_root)
        with download_lock(root):
            if _missing(fmt, data_root):
                cls = getattr(torchvision.datasets, fmt.torchvision_class)
                download_or_explain(fmt.name, fmt.url, _raw(fmt, data_root), lambda: cls(root, train=True, download=True))

    return fetch


def _loader(fmt: IdxFormat):
    def load(seed: int = 0, data_root: str | None = None, download: bool = False,
             val_fraction: float = 0.1) -> DatasetSplits:
        from torchvision.datasets.mnist import read_image_file, read_label_file

        _fetch(fmt)(data_root, download)
        _available(fmt)(data_root, download=False)
        raw = _raw(fmt, data_root)
        images = [read_image_file(os.path.join(raw, FILES[i])).unsqueeze(1) for i in (0, 2)]
        labels = [read_label_file(os.path.join(raw, FILES[i])).long() for i in (1, 3)]
        norm = lambda u8: normalize_uint8(u8, (fmt.mean,), (fmt.std,))  # noqa: E731
        return holdout_splits(fmt.name, norm(images[0]), labels[0], norm(images[1]), labels[1], val_fraction, seed,
                              10, (fmt.mean,), (fmt.std,), {"source": raw})

    return load


for _fmt in (MNIST, FASHION):
    register_dataset(_fmt.name, available=_available(_fmt), fetch=_fetch(_fmt))(_loader(_fmt))
