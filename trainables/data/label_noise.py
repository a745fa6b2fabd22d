"""Synthetic label noise on training labels: pure, seeded functions on label arrays or tensors.

The two corruptions of the noisy-label literature that the "Vision Superalignment" paper's noisy
experiment (Guo et al. 2024, ggjy/vision_weak_to_strong ``noisy_labels_learning/``, built on Sel-CL)
uses, with their semantics:

* **symmetric**: exactly ``int(N * rate)`` labels, picked uniformly at random, are replaced by a
  class drawn uniformly among the *other* ``C - 1`` classes, so the realised rate (the fraction of
  labels that differ from the clean ones) equals ``int(N * rate) / N``. The authors' draw
  (``cifar_dataset.py``, ``random_in_noise``) picks uniformly among *all* ``C`` classes (its
  exclusion loop is commented out), so ``1 / C`` of the picked labels keep their class and their
  realised rate is ``rate * (C - 1) / C`` (18 % for "20 %" on CIFAR-10, 19.8 % on CIFAR-100);
  ``keep_own_class=True`` reproduces that.
* **asymmetric**: class-dependent flips through a fixed class map (``real_in_noise``): every label
  of a mapped class moves to its image with probability ``rate``, independently per sample, as
  the authors' confusion-matrix draw does. CIFAR-10: truck -> automobile, bird -> airplane,
  deer -> horse, cat <-> dog; CIFAR-100: each fine class -> the next fine class (by index) of its
  super-class, the last back to the first. A dataset without a map is refused: inventing one
  (digits 7 -> 1?) would be a different experiment.

Noise touches training labels only; callers keep validation and test labels clean.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

NOISE_KINDS = ("none", "symmetric", "asymmetric")

# CIFAR-10 classes: 0 airplane, 1 automobile, 2 bird, 3 cat, 4 deer, 5 dog, 6 frog, 7 horse, 8 ship, 9 truck.
CIFAR10_ASYMMETRIC = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}

# CIFAR-100's super-class (coarse label) of each fine label 0..99, as in the dataset's
# ``coarse_labels``: the asymmetric map cycles within each super-class, so it needs the grouping
# without reading the training file (the authors read it from there).
CIFAR100_COARSE = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
)


def cycle_within_groups(groups: tuple[int, ...] | np.ndarray) -> dict[int, int]:
    """Class -> the next class (by index) of its group, the group's last class -> its first."""
    groups = np.asarray(groups)
    out: dict[int, int] = {}
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        out.update({int(c): int(n) for c, n in zip(members, np.roll(members, -1))})
    return out


# Per dataset: the number of classes the map is for, and the map. Only datasets listed here take
# asymmetric noise.
CLASS_MAPS: dict[str, tuple[int, dict[int, int]]] = {
    "cifar10": (10, CIFAR10_ASYMMETRIC),
    "cifar100": (100, cycle_within_groups(CIFAR100_COARSE)),
}


def class_map_problem(dataset: str, dataset_kwargs: dict[str, Any] | None = None) -> str | None:
    """Why ``dataset`` (with these loader parameters) cannot take asymmetric noise, or None."""
    if dataset not in CLASS_MAPS:
        return (f"asymmetric noise needs a published class map, and dataset {dataset!r} has none "
                f"(maps: {', '.join(sorted(CLASS_MAPS))}); use kind symmetric")
    if (dataset_kwargs or {}).get("label_key", "fine_labels") != "fine_labels":
        return f"the {dataset} class map is for its fine labels, not label_key {dataset_kwargs['label_key']!r}"
    return None


@dataclass(frozen=True)
class NoisyLabels:
    """The corrupted labels (same type, dtype and device as the input), which of them changed,
    and the realised rate: the fraction of labels that differ from the clean ones."""

    labels: Any
    changed: np.ndarray
    rate: float


def _as_numpy(labels) -> np.ndarray:
    return labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)


def _like(noisy: np.ndarray, labels):
    if isinstance(labels, torch.Tensor):
        return torch.as_tensor(noisy, dtype=labels.dtype).to(labels.device)
    return noisy.astype(np.asarray(labels).dtype)


def _result(clean: np.ndarray, noisy: np.ndarray, labels) -> NoisyLabels:
    changed = noisy != clean
    return NoisyLabels(_like(noisy, labels), changed, float(changed.mean()) if len(clean) else 0.0)


def _check_rate(rate: float) -> None:
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"noise rate must be in [0, 1), got {rate}")


def symmetric_noise(labels, num_classes: int, rate: float, seed: int, keep_own_class: bool = False) -> NoisyLabels:
    """Replace exactly ``int(N * rate)`` uniformly picked labels with a uniformly drawn other class
    (any class with ``keep_own_class``, the authors' draw)."""
    _check_rate(rate)
    if num_classes < 2:
        raise ValueError(f"symmetric noise needs at least 2 classes, got {num_classes}")
    clean = _as_numpy(labels).astype(np.int64)
    rng = np.random.default_rng(seed)
    picked = rng.permutation(len(clean))[:int(len(clean) * rate)]
    noisy = clean.copy()
    if keep_own_class:
        noisy[picked] = rng.integers(0, num_classes, size=len(picked))
    else:
        # An offset in 1..C-1 added modulo C is uniform over the other classes and never 0.
        noisy[picked] = (clean[picked] + rng.integers(1, num_classes, size=len(picked))) % num_classes
    return _result(clean, noisy, labels)


def asymmetric_noise(labels, class_map: dict[int, int], rate: float, seed: int) -> NoisyLabels:
    """Move each label of a mapped class to ``class_map[label]`` with probability ``rate``,
    independently per sample."""
    _check_rate(rate)
    clean = _as_numpy(labels).astype(np.int64)
    rng = np.random.default_rng(seed)
    target = clean.copy()
    for source, dest in class_map.items():
        target[clean == source] = dest
    flip = rng.random(len(clean)) < rate
    noisy = np.where(flip, target, clean)
    return _result(clean, noisy, labels)


def apply_label_noise(labels, kind: str, rate: float, seed: int, *, num_classes: int, dataset: str,
                      dataset_kwargs: dict[str, Any] | None = None, keep_own_class: bool = False) -> NoisyLabels:
    """``labels`` corrupted per ``kind`` (none | symmetric | asymmetric)."""
    if kind == "none":
        return _result(_as_numpy(labels), _as_numpy(labels), labels)
    if kind == "symmetric":
        return symmetric_noise(labels, num_classes, rate, seed, keep_own_class)
    if kind != "asymmetric":
        raise ValueError(f"label noise kind must be one of {', '.join(NOISE_KINDS)}, got {kind!r}")
    problem = class_map_problem(dataset, dataset_kwargs)
    if problem:
        raise ValueError(problem)
    size, class_map = CLASS_MAPS[dataset]
    if size != num_classes:
        raise ValueError(f"the {dataset} class map is for {size} classes, the data has {num_classes}")
    return asymmetric_noise(labels, class_map, rate, seed)
