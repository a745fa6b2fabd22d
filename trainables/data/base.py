from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass, field
from typing import Callable, Iterator
from urllib.parse import urlparse

import numpy as np
import torch

from trainables.core.offline import offline_mode, reachable


class DatasetUnavailable(RuntimeError):
    """The dataset is not on disk and cannot be downloaded (offline, or `download: false`)."""


@dataclass
class DatasetSplits:
    """Normalised image tensors (N, C, H, W) and int64 labels for train / val / test.

    An ``*_x`` may instead be a *lazy image array* (:class:`trainables.data.lazy.LazyImages`) when
    a dataset does not fit in memory. It supports exactly what the training and evaluation code
    does with image tensors: ``len``, ``.shape``, ``.to(device)``/``.cpu()`` (which only rebind the
    device), indexing with an integer index tensor or a contiguous slice (which decode, normalise
    and return a real tensor on that device) and strided slices (a lazy view: DDP evaluation shards
    splits with ``x[rank::world_size]``). Code that needs a real tensor of a whole split must not
    assume one.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    meta: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    def split(self, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        if which not in ("train", "val", "test"):
            raise KeyError(f"unknown split {which!r}")
        return getattr(self, f"{which}_x"), getattr(self, f"{which}_y")

    def to(self, device: torch.device | str) -> "DatasetSplits":
        moved = {
            k: getattr(self, k).to(device, non_blocking=True)
            for k in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")
        }
        return DatasetSplits(self.name, **moved, num_classes=self.num_classes, mean=self.mean,
                             std=self.std, meta=dict(self.meta))

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train_y), "val": len(self.val_y), "test": len(self.test_y)}


def split_indices(labels: np.ndarray, fractions: tuple[float, float, float], seed: int):
    """Stratified, seeded split into train/val/test index arrays.

    Stratifying keeps every class in every split even on tiny datasets, so accuracies on the
    val and test splits are comparable across seeds.
    """
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[], [], []]
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        n_train = int(round(fractions[0] * len(idx)))
        n_val = int(round(fractions[1] * len(idx)))
        parts[0].extend(idx[:n_train])
        parts[1].extend(idx[n_train:n_train + n_val])
        parts[2].extend(idx[n_train + n_val:])
    return tuple(np.sort(np.asarray(p, dtype=np.int64)) for p in parts)


def stratified_subset(labels: np.ndarray, n_samples: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded, class-balanced subset of ``n_samples`` of ``labels`` (the
    data-size study, dinopl's ``--n_samples``).

    Quotas as dinopl's ``StratifiedSubset``: every class gets an equal share; a class with fewer
    samples than its share gives all it has and the rest is shared among the others; what does not
    divide evenly goes one each to the lowest class indices. Which samples of a class are taken is
    a ``seed``-ed draw (dinopl takes the first in dataset order), so the same seed gives the same
    subset and a smaller subset of one seed is not in general inside a larger one.
    """
    labels = np.asarray(labels)
    if not 1 <= n_samples <= len(labels):
        raise ValueError(f"n_samples must be between 1 and the training split's size {len(labels)}, "
                         f"got {n_samples}")
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.zeros(len(classes), dtype=np.int64)
    open_ = np.ones(len(classes), dtype=bool)  # classes that can still take more
    remaining = n_samples
    while remaining > 0:
        share = remaining // int(open_.sum())
        short = open_ & (counts - quota <= share)
        if share > 0 and short.any():  # these classes run out: give them everything, share the rest again
            remaining -= int((counts[short] - quota[short]).sum())
            quota[short] = counts[short]
            open_ &= ~short
            continue
        quota[open_] += share
        remaining -= share * int(open_.sum())
        for i in np.flatnonzero(open_)[:remaining]:  # the remainder, one each, lowest classes first
            quota[i] += 1
        remaining = 0
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(picked)).astype(np.int64)


# --------------------------------------------------------------------------- on-disk datasets

DATA_ROOT_ENV = "W2S_DATA_ROOT"


def default_data_root() -> str:
    """Where downloadable datasets live unless ``data_root`` says otherwise."""
    return os.environ.get(DATA_ROOT_ENV) or os.path.expanduser("~/.cache/w2s-sweep/data")


def resolve_root(data_root: str | None) -> str:
    """An absolute directory: trials run in other working directories (and on other nodes), so a
    relative path would name a different place in each."""
    root = os.path.expanduser(data_root) if data_root else default_data_root()
    if not os.path.isabs(root):
        raise ValueError(f"data_root must be an absolute path, got {data_root!r}")
    return root


def train_val_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded hold-out of ``val_fraction`` of an official training set."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    train, val, rest = split_indices(labels, (1.0 - val_fraction, val_fraction, 0.0), seed)
    return np.sort(np.concatenate([train, rest])), val


def holdout_splits(name: str, x: torch.Tensor, y: torch.Tensor, test_x, test_y: torch.Tensor,
                   val_fraction: float, seed: int, num_classes: int, mean, std, meta: dict) -> DatasetSplits:
    """Official train set split into train/val (``val_fraction``, seeded, stratified); the
    official test set as test. ``val_fraction: 0`` uses the test set as val too, the published
    CIFAR protocol (model selection on test, which is optimistic), and says so in ``meta``."""
    if val_fraction == 0:
        train_idx, val_x, val_y = np.arange(len(y)), test_x, test_y
        meta = {**meta, "val_is_test": True}
    else:
        train_idx, val_idx = train_val_split(y.numpy(), val_fraction, seed)
        val_x, val_y = x[torch.from_numpy(val_idx)], y[torch.from_numpy(val_idx)]
    train_idx_t = torch.from_numpy(train_idx)
    return DatasetSplits(name=name, train_x=x[train_idx_t], train_y=y[train_idx_t], val_x=val_x, val_y=val_y,
                         test_x=test_x, test_y=test_y, num_classes=num_classes, mean=tuple(mean), std=tuple(std),
                         meta={"seed": seed, "val_fraction": val_fraction, **meta})


def normalize_uint8(images: torch.Tensor, mean, std, chunk: int = 8192) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 normalised, chunk by chunk so the peak memory stays near the
    float result rather than twice it."""
    out = torch.empty(images.shape, dtype=torch.float32)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
    for start in range(0, len(images), chunk):
        out[start:start + chunk] = (images[start:start + chunk].float() - m) / s
    return out


@contextlib.contextmanager
def download_lock(root: str) -> Iterator[None]:
    """Trials on one node that all need a download serialise on a lock file in ``root``."""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, ".w2s-download.lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass(frozen=True)
class FolderDataset:
    """What a streamed dataset holds (see :mod:`trainables.data.streamed`): known before any file is
    read, so passes over it can be planned and cached."""

    num_classes: int
    input_shape: tuple[int, int, int]
    transform: str  # named, so it can be part of a cache key
    splits: tuple[str, ...]


@dataclass(frozen=True)
class TorchvisionFiles:
    """A dataset that torchvision can download, kept as ``files`` under ``<data_root>/<folder>``."""

    name: str
    folder: str
    files: tuple[str, ...]
    torchvision_class: str
    url: str

    def path(self, data_root: str | None) -> str:
        return os.path.join(resolve_root(data_root), self.folder)

    def missing(self, data_root: str | None) -> list[str]:
        return [f for f in self.files if not os.path.isfile(os.path.join(self.path(data_root), f))]

    def available(self, data_root: str | None = None, download: bool = False, **_: object) -> None:
        if not download and self.missing(data_root):
            raise missing_dataset(self.name, self.path(data_root), ", ".join(self.files))

    def fetch(self, data_root: str | None = None, download: bool = False, **_: object) -> None:
        if not download or not self.missing(data_root):
            return
        import torchvision.datasets

        root = resolve_root(data_root)
        with download_lock(root):
            if self.missing(data_root):
                cls = getattr(torchvision.datasets, self.torchvision_class)
                download_or_explain(self.name, self.url, self.path(data_root),
                                    lambda: cls(root, train=True, download=True))

    def ensure(self, data_root: str | None, download: bool) -> str:
        """The folder holding the files, after downloading them if allowed."""
        self.fetch(data_root, download)
        self.available(data_root)
        return self.path(data_root)


def download_or_explain(name: str, url: str, looked_in: str, download: Callable[[], object]) -> None:
    """Run ``download``; no network becomes :class:`DatasetUnavailable` at once (no retry loop)."""
    host = urlparse(url).hostname or url
    if offline_mode() or not reachable(host):
        raise DatasetUnavailable(f"dataset {name!r}: not found in {looked_in} and cannot be downloaded "
                                 f"({host} unreachable or offline mode set). Copy it there, or point "
                                 f"dataset_kwargs.data_root at a directory that holds it")
    try:
        download()
    except OSError as exc:
        raise DatasetUnavailable(f"dataset {name!r}: download from {url} into {looked_in} failed "
                                 f"({type(exc).__name__}: {exc})") from exc


def missing_dataset(name: str, looked_in: str, expected: str) -> DatasetUnavailable:
    return DatasetUnavailable(f"dataset {name!r} is not in {looked_in} (expected {expected}); set "
                              f"dataset_kwargs.download: true to download it, or dataset_kwargs.data_root to "
                              f"the directory that holds it")


# --------------------------------------------------------------------------- few-shot (novel) classes

NOVEL_KEY = "novel"  # DatasetSplits.meta key of a few-shot dataset's FewShotSplit


@dataclass
class FewShotSplit:
    """The novel classes of a few-shot dataset, kept apart from the base classes that train/val/test
    hold: normalised images (N, C, H, W) on the CPU and int64 labels 0..classes-1. Episodic
    evaluation samples N-way K-shot tasks from them; they never reach training."""

    x: torch.Tensor
    y: torch.Tensor
    classes: list[str]

    def class_sizes(self) -> torch.Tensor:
        return torch.bincount(self.y, minlength=len(self.classes))


@dataclass(frozen=True)
class NovelClasses:
    """What a few-shot dataset's novel split holds, known from its keyword arguments alone (so
    ``ways`` and ``shots`` can be checked when the search space is parsed)."""

    count: int
    min_per_class: int
