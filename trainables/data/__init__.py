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


# Optional per-dataset availability checks: ``check(**kwargs) -> None | "what is missing and what to
# do"``. Cheap (look for files, never download); run by trainables' ``check_available`` hooks in
# the driver before Ray starts. A dataset without one is assumed available.
_AVAILABILITY: dict[str, Callable[..., str | None]] = {}


def register_dataset_check(name: str):
    def wrap(check: Callable[..., str | None]):
        _AVAILABILITY[name] = check
        return check

    return wrap


def dataset_problem(name: str, **kwargs) -> str | None:
    DATASETS.get(name)  # loads the built-in and plugin modules, which register their checks
    check = _AVAILABILITY.get(name)
    return check(**kwargs) if check else None


def dataset_issues(param: str, name: str, **kwargs) -> list[tuple[str, str]]:
    """For a trainable's ``check_available``: [(param, problem)] if dataset ``name`` is missing."""
    problem = dataset_problem(name, **kwargs)
    return [(param, f"dataset {name!r} is not available: {problem}")] if problem else []


__all__ = ["DATASETS", "DatasetName", "DatasetSplits", "DatasetUnavailable", "dataset_issues", "dataset_names",
           "dataset_problem",
           "load_dataset", "register_dataset", "register_dataset_check", "split_indices"]
