"""Dataset registry.

Every dataset loads into a :class:`DatasetSplits`: plain tensors for train, val and test, split
deterministically from a seed. Small datasets are kept as tensors so that a trial can move the
whole thing onto its device once and never touch a DataLoader.
"""
from __future__ import annotations

from typing import Annotated, Callable

from pydantic import AfterValidator

from trainables.data.base import DatasetSplits, DatasetUnavailable, split_indices

_DATASETS: dict[str, Callable[..., DatasetSplits]] = {}


def register_dataset(name: str):
    def wrap(fn: Callable[..., DatasetSplits]):
        if name in _DATASETS:
            raise ValueError(f"dataset {name!r} registered twice")
        _DATASETS[name] = fn
        return fn

    return wrap


def dataset_names() -> list[str]:
    _import_builtin()
    return sorted(_DATASETS)


def _known_dataset(name: str) -> str:
    if name not in dataset_names():
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(dataset_names())}")
    return name


# A pydantic field type: a dataset name that must be in the registry.
DatasetName = Annotated[str, AfterValidator(_known_dataset)]


def load_dataset(name: str, **kwargs) -> DatasetSplits:
    _import_builtin()
    if name not in _DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(_DATASETS))}")
    return _DATASETS[name](**kwargs)


def _import_builtin() -> None:
    # Registration happens on import; keep the import lazy so `import trainables.data` stays cheap.
    from trainables.data import digits, synthetic  # noqa: F401


__all__ = [
    "DatasetName",
    "DatasetSplits",
    "DatasetUnavailable",
    "dataset_names",
    "load_dataset",
    "register_dataset",
    "split_indices",
]
