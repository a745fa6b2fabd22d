"""Dataset registry.

Every dataset loads into a :class:`DatasetSplits`: plain tensors for train, val and test, split
deterministically from a seed. Small datasets are kept as tensors so that a trial can move the
whole thing onto its device once and never touch a DataLoader.
"""
from __future__ import annotations

from typing import Callable

from trainables.data.base import DatasetSplits, DatasetUnavailable, split_indices
from trainables.registry_base import Registry


def _import_builtin() -> None:
    from trainables.data import digits, synthetic  # noqa: F401


DATASETS: Registry[Callable[..., DatasetSplits]] = Registry("dataset", _import_builtin)
register_dataset = DATASETS.decorator
dataset_names = DATASETS.names
DatasetName = DATASETS.name_type()


def load_dataset(name: str, **kwargs) -> DatasetSplits:
    return DATASETS.get(name)(**kwargs)


__all__ = ["DATASETS", "DatasetName", "DatasetSplits", "DatasetUnavailable", "dataset_names", "load_dataset",
           "register_dataset", "split_indices"]
