"""Dataset loaders on small fake files written here: CIFAR pickles, MNIST IDX files, image folders
(in memory and lazy); missing data fails early with one clear message."""
import os
import re
import pickle
import struct
import time

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from trainables.data import check_dataset, load_dataset
from trainables.data.base import DatasetUnavailable
from trainables.data.lazy import LazyImages
from trainables.distill.params import DistillParams


def write_cifar(root, hundred=False, n_train=40, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-100-python" if hundred else "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    train_files, test_files = (["train"], ["test"]) if hundred else ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"])
    label_key, classes = ("fine_labels", 100) if hundred else ("labels", 10)
    written = {}
    for files, n in ((train_files, n_train), (test_files, n_test)):
        for name in files:
            batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                     label_key: [int(v) for v in np.arange(n) % classes]}
            with open(os.path.join(folder, name), "wb") as f:
                pickle.dump(batch, f)
            written[name] = batch
    return written


def write_idx(root, folder="MNIST", n=30):
    raw = os.path.join(root, folder, "raw")
    os.makedirs(raw, exist_ok=True)
    rng = np.random.default_rng(1)
    for prefix, k in (("train", n), ("t10k", n // 2)):
        with open(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), "wb") as f:
            f.write(struct.pack(">IIII", 0x803, k, 28, 28) + rng.integers(0, 256, k * 784, dtype=np.uint8).tobytes())
        with open(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), "wb") as f:
            f.write(struct.pack(">II", 0x801, k) + (np.arange(k) % 10).astype(np.uint8).tobytes())


def write_image_folder(root, splits=("train", "val"), classes=("ant", "bee", "cat"), per_class=5):
    from PIL import Image

    rng = np.random.default_rng(2)
    for split in splits:
        for c in classes:
            os.makedirs(os.path.join(root, split, c), exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (12, 18, 3), dtype=np.uint8)).save(
                    os.path.join(root, split, c, f"{i}.png"))


def test_cifar10_files_load_with_a_seeded_holdout(tmp_path):
    written = write_cifar(str(tmp_path))
    data = load_dataset("cifar10", seed=0, data_root=str(tmp_path), val_fraction=0.1)
    assert data.sizes() == {"train": 180, "val": 20, "test": 20} and data.input_shape == (3, 32, 32)
    assert data.num_classes == 10
    # The test split is the official test batch, normalised with CIFAR-10's channel statistics.
    raw = written["test_batch"]["data"].reshape(-1, 3, 32, 32).astype(np.float32) / 255
    mean, std = np.array(data.mean)[:, None, None], np.array(data.std)[:, None, None]
    assert np.allclose(data.test_x.numpy(), (raw - mean) / std, atol=1e-5)
    assert data.test_y.tolist() == written["test_batch"]["labels"]
    # Deterministic per seed; every class in val (stratified); train and val partition the train set.
    again = load_dataset("cifar10", seed=0, data_root=str(tmp_path), val_fraction=0.1)
    other = load_dataset("cifar10", seed=1, data_root=str(tmp_path), val_fraction=0.1)
    assert torch.equal(again.val_x, data.val_x) and not torch.equal(other.val_x, data.val_x)
    assert sorted(data.val_y.tolist()) == sorted(list(range(10)) * 2)
    whole = load_dataset("cifar10", data_root=str(tmp_path), val_fraction=0)
    assert whole.sizes()["train"] == 200 and torch.equal(whole.val_x, whole.test_x) and whole.meta["val_is_test"]


def test_cifar100_and_mnist_family(tmp_path):
    write_cifar(str(tmp_path), hundred=True, n_train=200)
    data = load_dataset("cifar100", data_root=str(tmp_path), val_fraction=0.5)
    assert data.num_classes == 100 and data.sizes() == {"train": 100, "val": 100, "test": 20}
    for name, folder in (("mnist", "MNIST"), ("fashionmnist", "FashionMNIST")):
        write_idx(str(tmp_path), folder)
        data = load_dataset(name, data_root=str(tmp_path), val_fraction=1 / 3)
        assert data.input_shape == (1, 28, 28) and data.sizes() == {"train": 20, "val": 10, "test": 15}
        assert data.test_y.tolist() == [i % 10 for i in range(15)]


def test_missing_data_is_one_clear_error_before_any_trial(tmp_path):
    empty = str(tmp_path / "empty")
    for name, looked in (("cifar100", "cifar-100-python"), ("mnist", os.path.join("MNIST", "raw"))):
        with pytest.raises(DatasetUnavailable) as err:
            check_dataset(name, data_root=empty)
        message = str(err.value)
        assert f"dataset {name!r}" in message and os.path.join(empty, looked) in message
        assert "dataset_kwargs.download: true" in message
    # Before any trial, through the trainable's check_available hook (a real run refuses, a dry run
    # lists it); the parameters themselves parse, so the space dry-runs on a machine without the data.
    from trainables.distill.prepare import check_distill_inputs

    for name, kwargs, problem in (("cifar10", {"data_root": empty}, "dataset 'cifar10' is not in .*download: true"),
                                  ("imagefolder", {"data_root": empty}, "no train/ folder")):
        (key, message), = check_distill_inputs(DistillParams(dataset=name, dataset_kwargs=kwargs))
        assert key == "dataset" and re.search(problem, message), message
    with pytest.raises(ValidationError, match="has no parameter.*colour"):
        DistillParams(dataset="cifar10", dataset_kwargs={"data_root": empty, "colour": 1})
    with pytest.raises(ValidationError, match="absolute path"):
        DistillParams(dataset="cifar10", dataset_kwargs={"data_root": "data"})


def test_download_offline_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("W2S_OFFLINE", "1")
    check_dataset("cifar10", data_root=str(tmp_path), download=True)  # allowed: it may be fetched later
    t0 = time.monotonic()
    with pytest.raises(DatasetUnavailable, match="cannot be downloaded"):
        load_dataset("cifar10", data_root=str(tmp_path), download=True)
    assert time.monotonic() - t0 < 10


def test_image_folder_in_memory_and_lazy_agree(tmp_path):
    write_image_folder(str(tmp_path))
    data = load_dataset("imagefolder", seed=0, data_root=str(tmp_path), image_size=8, val_fraction=0.2)
    assert data.meta["classes"] == ["ant", "bee", "cat"] and data.num_classes == 3
    assert data.sizes() == {"train": 12, "val": 3, "test": 15} and data.input_shape == (3, 8, 8)
    lazy = load_dataset("imagefolder", seed=0, data_root=str(tmp_path), image_size=8, val_fraction=0.2,
                        memory_limit_gb=0).to("cpu")
    assert isinstance(lazy.train_x, LazyImages) and lazy.input_shape == (3, 8, 8)
    assert torch.equal(lazy.train_y, data.train_y)
    idx = torch.tensor([5, 0, 11])
    assert torch.allclose(lazy.train_x[idx], data.train_x[idx])
    assert torch.allclose(lazy.test_x[2:7], data.test_x[2:7])
    shard = lazy.test_x[1::2]  # how DDP evaluation shards a split: still lazy
    assert isinstance(shard, LazyImages) and len(shard) == 7 and torch.allclose(shard[0:7], data.test_x[1::2])


def test_image_folder_with_train_val_test(tmp_path):
    write_image_folder(str(tmp_path), splits=("train", "val", "test"), per_class=2)
    data = load_dataset("imagefolder", data_root=str(tmp_path), image_size=4)
    assert data.sizes() == {"train": 6, "val": 6, "test": 6}
    # Pixel check: decode -> resize (shorter side to round(4 / 0.875) = 5) -> centre crop 4 -> normalise.
    from PIL import Image
    from torchvision.transforms.v2 import functional as TF

    path = os.path.join(str(tmp_path), "test", "ant", "0.png")
    img = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
    expected = TF.center_crop(TF.resize(img, [5], antialias=True), [4, 4]).float() / 255
    expected = (expected - torch.tensor(data.mean).view(3, 1, 1)) / torch.tensor(data.std).view(3, 1, 1)
    assert torch.allclose(data.test_x[0], expected, atol=1e-6)
