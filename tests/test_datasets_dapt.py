"""DAPT's datasets with the authors' splits, on tiny archives written here in the official
layouts: CUB-200-2011 (its train_test_split.txt), DTD (labels/{train,val,test}1.txt), Caltech-101
(first 80% of each class, DAPT's split), and CIFAR upsampled to 224 px as DAPT feeds it."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_datasets import write_cifar
from trainables.data import DatasetUnavailable, check_dataset, load_dataset


def jpeg(path, seed, size=(20, 14), mode="RGB"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(path)


def write_cub(root):
    base = root / "CUB_200_2011"
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    lines = {"images.txt": [], "image_class_labels.txt": [], "train_test_split.txt": []}
    image_id = 0
    for c, name in enumerate(classes):
        for j in range(4):
            image_id += 1
            rel = f"{name}/{name.split('.')[1]}_{j:04d}.jpg"
            jpeg(str(base / "images" / rel), image_id)
            lines["images.txt"].append(f"{image_id} {rel}")
            lines["image_class_labels.txt"].append(f"{image_id} {c + 1}")
            lines["train_test_split.txt"].append(f"{image_id} {int(j < 3)}")  # 3 train, 1 test per class
    for name, rows in lines.items():
        (base / name).write_text("\n".join(rows) + "\n")
    (base / "classes.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(classes)))
    return classes


def test_cub200_uses_the_official_split_and_1_based_labels(tmp_path):
    classes = write_cub(tmp_path)
    data = load_dataset("cub200", data_root=str(tmp_path), image_size=16, resize=18, val_fraction=0)
    assert data.meta["classes"] == classes and data.num_classes == 3
    assert data.sizes() == {"train": 9, "val": 3, "test": 3}
    assert torch.equal(data.test_y, torch.tensor([0, 1, 2])) and data.train_x.shape[1:] == (3, 16, 16)
    held = load_dataset("cub200", data_root=str(tmp_path), image_size=16, val_fraction=0.34)
    assert held.sizes() == {"train": 6, "val": 3, "test": 3}


def test_dtd_reads_the_partition_files(tmp_path):
    base = tmp_path / "dtd"
    classes = ["banded", "blotchy"]
    for c in classes:
        for j in range(6):
            jpeg(str(base / "images" / c / f"{c}_{j:04d}.jpg"), j)
    os.makedirs(base / "labels")
    for split, idx in (("train", (0, 1, 2)), ("val", (3,)), ("test", (4, 5))):
        (base / "labels" / f"{split}1.txt").write_text("".join(f"{c}/{c}_{j:04d}.jpg\n" for c in classes for j in idx))
    data = load_dataset("dtd", data_root=str(tmp_path), image_size=8, resize=10)
    assert data.sizes() == {"train": 6, "val": 2, "test": 4}
    assert torch.equal(data.val_y, torch.tensor([0, 1])) and data.meta["partition"] == 1
    with pytest.raises(DatasetUnavailable, match=r"dtd/labels/train2.txt is missing; unpack the official archive"):
        check_dataset("dtd", data_root=str(tmp_path), partition=2)
    (base / "labels" / "test1.txt").write_text("striped/striped_0001.jpg\n")
    with pytest.raises(ValueError, match="test1.txt: 'striped/striped_0001.jpg' names no class folder"):
        load_dataset("dtd", data_root=str(tmp_path), image_size=8)


def test_caltech101_takes_the_first_80_percent_of_each_class(tmp_path):
    base = tmp_path / "caltech101" / "101_ObjectCategories"
    counts = {"Faces": 5, "accordion": 10, "BACKGROUND_Google": 3}
    for c, n in counts.items():
        for j in range(n):
            jpeg(str(base / c / f"image_{j + 1:04d}.jpg"), j, mode="L" if j == 0 else "RGB")
    data = load_dataset("caltech101", data_root=str(tmp_path), image_size=8, resize=8, val_fraction=0)
    assert data.meta["classes"] == ["Faces", "accordion"]  # background left out, torchvision's order
    assert data.sizes() == {"train": 4 + 8, "val": 1 + 2, "test": 1 + 2}
    assert torch.equal(data.test_y, torch.tensor([0, 1, 1]))
    assert data.train_x.shape[1] == 3  # the grey-scale image is read as RGB
    # The last images of a class are test: image_0005 of Faces.
    from trainables.data.imagefolder import decode
    last = decode(str(base / "Faces" / "image_0005.jpg"), 8, 8, torch.tensor(data.mean).view(-1, 1, 1),
                  torch.tensor(data.std).view(-1, 1, 1))
    assert torch.allclose(data.test_x[0], last)


def test_missing_archives_say_what_to_unpack_where(tmp_path):
    for name, expected in (("cub200", "CUB_200_2011/images.txt is missing; unpack the official archive "
                                      "\\(CUB_200_2011.tgz"),
                           ("caltech101", "101_ObjectCategories is missing; unpack the official archive "
                                          "\\(caltech-101.zip")):
        with pytest.raises(DatasetUnavailable, match=expected):
            check_dataset(name, data_root=str(tmp_path))


def test_cifar_at_224_px_as_dapt_feeds_it(tmp_path):
    write_cifar(str(tmp_path), n_train=20, n_test=10)
    small = load_dataset("cifar10", data_root=str(tmp_path), val_fraction=0.2)
    big = load_dataset("cifar10", data_root=str(tmp_path), val_fraction=0.2, image_size=224)
    assert big.train_x.shape[1:] == (3, 224, 224) and torch.equal(big.train_y, small.train_y)
    assert torch.equal(big.test_y, small.test_y) and big.sizes() == small.sizes()
    # Resize 32 -> 256 then centre crop 224: the mean colour of an image barely moves.
    assert torch.allclose(big.test_x.mean(dim=(2, 3)), small.test_x.mean(dim=(2, 3)), atol=0.15)
    lazy = load_dataset("cifar10", data_root=str(tmp_path), val_fraction=0.2, image_size=224, memory_limit_gb=0.001)
    assert type(lazy.train_x).__name__ == "LazyImages"
    assert torch.allclose(lazy.train_x[torch.arange(3)], big.train_x[:3])
