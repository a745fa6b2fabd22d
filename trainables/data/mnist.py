"""MNIST and Fashion-MNIST from their IDX files (``<data_root>/MNIST/raw/``,
``<data_root>/FashionMNIST/raw/``, torchvision's layout), 1x28x28 grey-scale."""
from __future__ import annotations

import os

from trainables.data import register_dataset
from trainables.data.base import DatasetSplits, TorchvisionFiles, holdout_splits, normalize_uint8

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# (files, mean, std)
FORMATS = (
    (TorchvisionFiles("mnist", os.path.join("MNIST", "raw"), FILES, "MNIST",
                      "https://ossci-datasets.s3.amazonaws.com/mnist/"), 0.1307, 0.3081),
    (TorchvisionFiles("fashionmnist", os.path.join("FashionMNIST", "raw"), FILES, "FashionMNIST",
                      "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"), 0.2860, 0.3530),
)


def _loader(source: TorchvisionFiles, mean: float, std: float):
    def load(seed: int = 0, data_root: str | None = None, download: bool = False,
             val_fraction: float = 0.1) -> DatasetSplits:
        from torchvision.datasets.mnist import read_image_file, read_label_file

        raw = source.ensure(data_root, download)
        images = [normalize_uint8(read_image_file(os.path.join(raw, FILES[i])).unsqueeze(1), (mean,), (std,))
                  for i in (0, 2)]
        labels = [read_label_file(os.path.join(raw, FILES[i])).long() for i in (1, 3)]
        return holdout_splits(source.name, images[0], labels[0], images[1], labels[1], val_fraction, seed,
                              10, (mean,), (std,), {"source": raw})

    return load


for _source, _mean, _std in FORMATS:
    register_dataset(_source.name, available=_source.available, fetch=_source.fetch)(_loader(_source, _mean, _std))
