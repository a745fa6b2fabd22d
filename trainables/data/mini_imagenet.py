"""miniImageNet (Vinyals et al. 2016, Ravi & Larochelle's class split): 100 ImageNet classes of 600
images at 84x84, 64 base classes for training, 16 validation and 20 test classes for few-shot
episodes. Nothing is downloaded (there is no official mirror); copy one of two layouts under
``<data_root>/mini-imagenet/``:

* ``pickle`` (Gidaris' files, the ones few-shot-meta-baseline reads):
  ``miniImageNet_category_split_train_phase_train.pickle``, ``..._val.pickle`` and
  ``..._test.pickle``, each a dict with ``data`` (uint8 N x 84 x 84 x 3) and ``labels`` (N ints);
  ``..._train_phase_val.pickle`` / ``..._train_phase_test.pickle`` (held-out images of the base
  classes), when present, are the base val / test splits.
* ``folder``: ``train/``, ``val/`` and ``test/``, one sub-folder of images per class (64 / 16 / 20
  classes), resized to 84x84 when they are not.

Without the base held-out pickles (and always for ``folder``), ``holdout`` (val, test fractions) of
the base training images, stratified and seeded, are the base val / test splits. Labels of every
split are its class ids in sorted order, 0-based. ``novel_split`` picks the few-shot classes
(``test``, the published protocol, or ``val``); they travel in ``meta["novel"]``. Normalised with
ImageNet's statistics, as few-shot-meta-baseline does.
"""
from __future__ import annotations

import os
import pickle
from typing import Literal

import numpy as np
import torch

from trainables.data import register_dataset
from trainables.data.base import (NOVEL_KEY, DatasetSplits, DatasetUnavailable, FewShotSplit, NovelClasses,
                                  normalize_uint8, resolve_root, split_indices)

NAME = "mini_imagenet"
FOLDER = "mini-imagenet"
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SIZE = 84
PER_CLASS = 600
NOVEL = {"test": 20, "val": 16}
PICKLE = "miniImageNet_category_split_{}.pickle"
REQUIRED = {"pickle": tuple(PICKLE.format(s) for s in ("train_phase_train", "val", "test")),
            "folder": ("train", "val", "test")}


def folder(data_root: str | None) -> str:
    return os.path.join(resolve_root(data_root), FOLDER)


def detect_layout(data_root: str | None, layout: str) -> str | None:
    """The layout to read (``auto``: the first complete one), or None when none is complete."""
    src = folder(data_root)
    for name in (("pickle", "folder") if layout == "auto" else (layout,)):
        if all(os.path.exists(os.path.join(src, f)) for f in REQUIRED[name]):
            return name
    return None


def available(data_root: str | None = None, layout: str = "auto", **_: object) -> None:
    if detect_layout(data_root, layout) is None:
        wanted = {"auto": "either " + ", ".join(REQUIRED["pickle"]) + " or the folders train/, val/, test/",
                  "pickle": ", ".join(REQUIRED["pickle"]), "folder": "the folders train/, val/, test/"}[layout]
        raise DatasetUnavailable(f"dataset {NAME!r} is not in {folder(data_root)} (expected {wanted}); it is not "
                                 f"downloadable: copy it there, or set dataset_kwargs.data_root to the directory "
                                 f"that holds {FOLDER}/")


def novel(novel_split: str = "test", **_: object) -> NovelClasses:
    return NovelClasses(count=NOVEL.get(novel_split, 0), min_per_class=PER_CLASS)


def read_pickle(path: str) -> tuple[torch.Tensor, np.ndarray]:
    """uint8 (N, 3, 84, 84) images and labels relabelled to 0.. in sorted class order."""
    with open(path, "rb") as f:
        # Gidaris' files were written by Python 2: latin1 reads their byte strings.
        blob = pickle.load(f, encoding="latin1")
    data = np.asarray(blob["data"], dtype=np.uint8)
    if data.ndim != 4 or data.shape[3] != 3:
        raise ValueError(f"{path}: 'data' must be uint8 N x H x W x 3, got shape {data.shape}")
    _, labels = np.unique(np.asarray(blob["labels"]), return_inverse=True)
    return torch.from_numpy(data).permute(0, 3, 1, 2).contiguous(), labels.astype(np.int64)


def read_folder(path: str) -> tuple[torch.Tensor, np.ndarray]:
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2.functional import resize

    classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    if not classes:
        raise DatasetUnavailable(f"dataset {NAME!r}: {path} has no class folders")
    images, labels = [], []
    for label, cls in enumerate(classes):
        for name in sorted(os.listdir(os.path.join(path, cls))):
            if name.lower().endswith((".jpg", ".jpeg", ".png")):
                img = decode_image(os.path.join(path, cls, name), mode=ImageReadMode.RGB)
                if img.shape[1:] != (SIZE, SIZE):
                    img = resize(img, [SIZE, SIZE], antialias=True)
                images.append(img)
                labels.append(label)
    return torch.stack(images), np.asarray(labels, dtype=np.int64)


def read_split(src: str, layout: str, split: str) -> tuple[torch.Tensor, np.ndarray]:
    if layout == "pickle":
        return read_pickle(os.path.join(src, PICKLE.format("train_phase_train" if split == "train" else split)))
    return read_folder(os.path.join(src, split))


@register_dataset(NAME, available=available, novel=novel)
def load_mini_imagenet(seed: int = 0, data_root: str | None = None, layout: Literal["auto", "pickle", "folder"] = "auto",
                       novel_split: Literal["test", "val"] = "test",
                       holdout: tuple[float, float] = (0.05, 0.05)) -> DatasetSplits:
    """Base classes as train / val / test, the ``novel_split`` classes in ``meta["novel"]``."""
    available(data_root, layout)
    src = folder(data_root)
    found = detect_layout(data_root, layout)
    x, y = read_split(src, found, "train")
    base_held = [os.path.join(src, PICKLE.format(s)) for s in ("train_phase_val", "train_phase_test")]
    if found == "pickle" and all(os.path.isfile(p) for p in base_held):
        (vx, vy), (tx, ty) = read_pickle(base_held[0]), read_pickle(base_held[1])
        held = "train_phase_val / train_phase_test pickles"
    else:
        val_frac, test_frac = holdout
        tr, va, te = split_indices(y, (1.0 - val_frac - test_frac, val_frac, test_frac), seed)
        (vx, vy), (tx, ty) = (x[torch.from_numpy(va)], y[va]), (x[torch.from_numpy(te)], y[te])
        x, y = x[torch.from_numpy(tr)], y[tr]
        held = f"held out of the base training images ({val_frac}, {test_frac})"
    nx, ny = read_split(src, found, novel_split)
    classes = int(y.max()) + 1
    split = FewShotSplit(x=normalize_uint8(nx, MEAN, STD), y=torch.from_numpy(ny),
                         classes=[str(c) for c in range(int(ny.max()) + 1)])
    return DatasetSplits(name=NAME, train_x=normalize_uint8(x, MEAN, STD), train_y=torch.from_numpy(y),
                         val_x=normalize_uint8(vx, MEAN, STD), val_y=torch.from_numpy(vy),
                         test_x=normalize_uint8(tx, MEAN, STD), test_y=torch.from_numpy(ty), num_classes=classes,
                         mean=MEAN, std=STD, meta={"seed": seed, "source": src, "layout": found, "base_val_test": held,
                                                   "novel_split": novel_split, NOVEL_KEY: split})
