"""STL-10 and Tiny-ImageNet loaders on tiny fake archives written here in the official layouts
(STL-10's column-major binary files, Tiny-ImageNet's wnids.txt / train/<wnid>/images /
val/images + val_annotations.txt); missing data is one clear error."""
import os
import time

import numpy as np
import pytest
import torch

from trainables.data import check_dataset, load_dataset
from trainables.data.base import DatasetUnavailable
from trainables.data.lazy import LazyImages
from trainables.distill.params import DistillParams
from trainables.distill.prepare import check_distill_inputs


def unnormalize(x, data):
    return x * torch.tensor(data.std).view(3, 1, 1) + torch.tensor(data.mean).view(3, 1, 1)


# --------------------------------------------------------------------------------------------- STL-10

def stl_image(label: int, i: int) -> np.ndarray:
    """Upright (3, 96, 96): a bright band over the top 10 rows, a mid-grey band down the left 5
    columns, and the class (and index) in channel levels, so a transposed read is caught."""
    img = np.zeros((3, 96, 96), dtype=np.uint8)
    img[0] = 20 * label + 1
    img[1] = i % 250
    img[2, :10, :] = 255
    img[2, :, :5] = 128
    return img


def write_stl(root, per_class_train=4, per_class_test=2, n_unlabeled=7, unlabeled=True):
    folder = os.path.join(root, "stl10_binary")
    os.makedirs(folder, exist_ok=True)
    for split, per_class in (("train", per_class_train), ("test", per_class_test)):
        labels = np.repeat(np.arange(1, 11), per_class).astype(np.uint8)  # official labels 1..10
        with open(os.path.join(folder, f"{split}_X.bin"), "wb") as f:
            for i, y in enumerate(labels):  # column-major per image, as the official readme says
                f.write(stl_image(int(y) - 1, i).transpose(0, 2, 1).tobytes())
        labels.tofile(os.path.join(folder, f"{split}_y.bin"))
    if unlabeled:
        with open(os.path.join(folder, "unlabeled_X.bin"), "wb") as f:
            for i in range(n_unlabeled):
                f.write(stl_image(11, i).transpose(0, 2, 1).tobytes())
    return folder


def test_stl10_reads_the_binary_format_upright(tmp_path):
    write_stl(str(tmp_path))
    data = load_dataset("stl10", seed=0, data_root=str(tmp_path), val_fraction=0.25)
    assert data.num_classes == 10 and data.input_shape == (3, 96, 96)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    assert data.sizes() == {"train": 30, "val": 10, "test": 20}
    assert data.test_y.tolist() == [i // 2 for i in range(20)]  # 1..10 on disk -> 0..9
    assert sorted(data.val_y.tolist()) == list(range(10))  # stratified: one per class
    img = unnormalize(data.test_x[7], data) * 255
    assert torch.allclose(img[2, :10, 20:], torch.tensor(255.0), atol=1e-3)  # the band is on top ...
    assert torch.allclose(img[2, 10:, 5:], torch.tensor(0.0), atol=1e-3)
    assert torch.allclose(img[2, 10:, :5], torch.tensor(128.0), atol=1e-3)  # ... and the column on the left
    assert torch.allclose(img[0], torch.tensor(20.0 * data.test_y[7].item() + 1), atol=1e-3)
    # Every image keeps its own label after the seeded hold-out.
    for x, y in zip(data.train_x, data.train_y):
        assert abs(unnormalize(x, data)[0, 0, 0].item() * 255 - (20 * y.item() + 1)) < 1e-3
    assert torch.equal(load_dataset("stl10", seed=0, data_root=str(tmp_path), val_fraction=0.25).train_y, data.train_y)
    whole = load_dataset("stl10", data_root=str(tmp_path), val_fraction=0)
    assert whole.sizes() == {"train": 40, "val": 20, "test": 20} and whole.meta["val_is_test"]


def test_stl10_unlabeled_splits(tmp_path):
    write_stl(str(tmp_path))
    both = load_dataset("stl10", data_root=str(tmp_path), split="train+unlabeled", val_fraction=0.25)
    assert both.sizes() == {"train": 37, "val": 10, "test": 20} and both.meta["unlabeled"] == 7
    assert (both.train_y == -1).sum() == 7 and both.train_y[:30].min() >= 0  # labelled first, then -1
    assert torch.allclose(unnormalize(both.train_x[-1], both)[0] * 255, torch.tensor(221.0), atol=1e-3)
    only = load_dataset("stl10", data_root=str(tmp_path), split="unlabeled", val_fraction=0.25)
    assert only.sizes() == {"train": 7, "val": 10, "test": 20} and (only.train_y == -1).all()
    assert torch.equal(only.val_y, both.val_y)  # val is always held out of the labelled train set
    with pytest.raises(ValueError, match="split must be one of"):
        check_dataset("stl10", data_root=str(tmp_path), split="test")


def test_stl10_resize_and_lazy(tmp_path):
    write_stl(str(tmp_path))
    small = load_dataset("stl10", data_root=str(tmp_path), image_size=32, split="train+unlabeled")
    assert small.input_shape == (3, 32, 32)
    img = unnormalize(small.test_x[0], small) * 255
    assert img[2, 0, 16] > 250 and img[2, 31, 16] < 5  # still upright after the resize
    lazy = load_dataset("stl10", data_root=str(tmp_path), image_size=32, split="train+unlabeled",
                        memory_limit_gb=0)
    assert isinstance(lazy.train_x, LazyImages) and lazy.input_shape == (3, 32, 32)
    idx = torch.tensor([36, 0, 5])
    assert torch.allclose(lazy.train_x[idx], small.train_x[idx], atol=1e-5)
    assert torch.allclose(lazy.test_x[1::2][0:10], small.test_x[1::2], atol=1e-5)


def test_stl10_missing_files_are_one_clear_error(tmp_path):
    empty = str(tmp_path / "empty")
    with pytest.raises(DatasetUnavailable) as err:
        check_dataset("stl10", data_root=empty)
    message = str(err.value)
    assert "\n" not in message and "dataset 'stl10'" in message and os.path.join(empty, "stl10_binary") in message
    assert "download: true" in message and "stl10_binary.tar.gz" in message
    write_stl(str(tmp_path), unlabeled=False)
    check_dataset("stl10", data_root=str(tmp_path))  # the labelled files are enough for split train
    with pytest.raises(DatasetUnavailable, match="missing unlabeled_X.bin"):
        check_dataset("stl10", data_root=str(tmp_path), split="train+unlabeled")
    # before any trial, through the trainable's check_available hook (not at parse time: a dry run lists it)
    (key, problem), = check_distill_inputs(DistillParams(dataset="stl10", dataset_kwargs={"data_root": empty}))
    assert key == "dataset" and "dataset 'stl10' is not in" in problem


# --------------------------------------------------------------------------------------- Tiny-ImageNet

WNIDS = ["n01443537", "n01629819", "n01641577"]
COLOURS = [(230, 20, 20), (20, 230, 20), (20, 20, 230)]


def write_tiny(root, per_class_train=5, per_class_val=2):
    """Solid-colour JPEGs, one colour per class; val images named val_<i>.JPEG in an order that
    interleaves the classes, labelled only by val_annotations.txt."""
    from PIL import Image

    src = os.path.join(root, "tiny-imagenet-200")
    os.makedirs(os.path.join(src, "val", "images"), exist_ok=True)
    with open(os.path.join(src, "wnids.txt"), "w") as f:
        f.write("\n".join(WNIDS) + "\n")
    for c, wnid in enumerate(WNIDS):
        images = os.path.join(src, "train", wnid, "images")
        os.makedirs(images)
        with open(os.path.join(src, "train", wnid, f"{wnid}_boxes.txt"), "w") as f:
            f.write("")
        for i in range(per_class_train):
            Image.new("RGB", (64, 64), COLOURS[c]).save(os.path.join(images, f"{wnid}_{i}.JPEG"))
    lines, expected = [], []
    for i in range(per_class_val * len(WNIDS)):
        c = (2 * i + 1) % len(WNIDS)
        image = Image.new("RGB", (64, 64), COLOURS[c])
        if i == 0:
            image = image.convert("L")  # Tiny-ImageNet has a few grey-scale JPEGs
        image.save(os.path.join(src, "val", "images", f"val_{i}.JPEG"))
        lines.append(f"val_{i}.JPEG\t{WNIDS[c]}\t0\t0\t63\t63")
        expected.append(c)
    with open(os.path.join(src, "val", "val_annotations.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return expected


def colour_class(x, data):
    rgb = unnormalize(x, data).mean(dim=(1, 2)) * 255
    return int(torch.argmin(torch.tensor([((rgb - torch.tensor(c, dtype=torch.float32)) ** 2).sum()
                                          for c in COLOURS])))


def test_tinyimagenet_layout_and_val_annotations(tmp_path):
    expected = write_tiny(str(tmp_path))
    data = load_dataset("tinyimagenet", seed=0, data_root=str(tmp_path), val_fraction=0.2)
    assert data.num_classes == 3 and data.meta["classes"] == WNIDS and data.input_shape == (3, 64, 64)
    assert data.train_x.dtype == torch.float32 and data.test_y.dtype == torch.int64
    assert data.sizes() == {"train": 12, "val": 3, "test": 6}
    assert data.test_y.tolist() == expected  # val_0 .. val_5, labelled from the annotations
    for split in ("train", "val", "test"):
        x, y = data.split(split)
        skip = 1 if split == "test" else 0  # test_x[0] is the grey-scale image
        assert [colour_class(xi, data) for xi in x[skip:]] == y[skip:].tolist()
    grey = unnormalize(data.test_x[0], data)  # the grey-scale one became three equal channels
    assert torch.allclose(grey[0], grey[1], atol=1e-6) and torch.allclose(grey[1], grey[2], atol=1e-6)
    assert sorted(data.val_y.tolist()) == [0, 1, 2]
    again = load_dataset("tinyimagenet", seed=0, data_root=str(tmp_path), val_fraction=0.2)
    assert torch.equal(again.val_x, data.val_x) and torch.equal(again.train_y, data.train_y)
    whole = load_dataset("tinyimagenet", data_root=str(tmp_path), val_fraction=0)
    assert whole.sizes() == {"train": 15, "val": 6, "test": 6} and whole.meta["val_is_test"]


def test_tinyimagenet_resize_and_lazy(tmp_path):
    write_tiny(str(tmp_path))
    small = load_dataset("tinyimagenet", data_root=str(tmp_path), image_size=32, val_fraction=0.2)
    assert small.input_shape == (3, 32, 32)
    lazy = load_dataset("tinyimagenet", data_root=str(tmp_path), image_size=32, val_fraction=0.2, memory_limit_gb=0)
    assert isinstance(lazy.train_x, LazyImages) and torch.equal(lazy.train_y, small.train_y)
    assert torch.allclose(lazy.train_x[torch.tensor([3, 0])], small.train_x[torch.tensor([3, 0])], atol=1e-5)


def test_tinyimagenet_missing_and_bad_annotations(tmp_path, monkeypatch):
    empty = str(tmp_path / "empty")
    with pytest.raises(DatasetUnavailable) as err:
        check_dataset("tinyimagenet", data_root=empty)
    message = str(err.value)
    assert "\n" not in message and os.path.join(empty, "tiny-imagenet-200") in message
    assert "download: true" in message and "tiny-imagenet-200.zip" in message
    # before any trial, through the trainable's check_available hook (not at parse time: a dry run lists it)
    (key, problem), = check_distill_inputs(DistillParams(dataset="tinyimagenet", dataset_kwargs={"data_root": empty}))
    assert key == "dataset" and "dataset 'tinyimagenet' is not in" in problem
    monkeypatch.setenv("W2S_OFFLINE", "1")
    check_dataset("tinyimagenet", data_root=empty, download=True)  # allowed: fetched in preparation
    t0 = time.monotonic()
    for name in ("tinyimagenet", "stl10"):
        with pytest.raises(DatasetUnavailable, match="cannot be downloaded"):
            load_dataset(name, data_root=empty, download=True)
    assert time.monotonic() - t0 < 10
    write_tiny(str(tmp_path))
    with open(os.path.join(str(tmp_path), "tiny-imagenet-200", "val", "val_annotations.txt"), "a") as f:
        f.write("val_9.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match="val_annotations.txt:7"):
        load_dataset("tinyimagenet", data_root=str(tmp_path))
