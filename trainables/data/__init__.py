"""Dataset registry.

Every dataset loads into a :class:`DatasetSplits`: plain tensors for train, val and test, split
deterministically from a seed. Small datasets are kept as tensors so that a trial can move the
whole thing onto its device once and never touch a DataLoader.

A loader may register a cheap ``available(**kwargs)`` check, run when parameters are validated
(before Ray starts), that raises :class:`DatasetUnavailable` when the files are missing and
``download`` is off; and a ``fetch(**kwargs)`` that downloads them once, in the sweep's preparation
step rather than in every trial.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

from trainables.data.base import DatasetSplits, DatasetUnavailable, split_indices
from trainables.core.registry import Registry, scan


DATASETS: Registry[Callable[..., DatasetSplits]] = Registry("dataset", scan("trainables.data"))
dataset_names = DATASETS.names
DatasetName = DATASETS.name_type()


def register_dataset(name: str, available: Callable[..., None] | None = None,
                     fetch: Callable[..., None] | None = None):
    def deco(loader: Callable[..., DatasetSplits]) -> Callable[..., DatasetSplits]:
        loader.available = available  # type: ignore[attr-defined]
        loader.fetch = fetch  # type: ignore[attr-defined]
        return DATASETS.register(name, loader)

    return deco


def load_dataset(name: str, **kwargs) -> DatasetSplits:
    return DATASETS.get(name)(**kwargs)


def check_dataset(name: str, **kwargs: Any) -> None:
    """Validation-time check, cheap (no decoding, no network): ``kwargs`` are parameters the loader
    has, and the data is on disk unless it may be downloaded. Raises ``ValueError`` for unknown
    parameters and :class:`DatasetUnavailable` for missing data."""
    loader = DATASETS.get(name)
    params = inspect.signature(loader).parameters
    if "seed" in kwargs:
        raise ValueError("the split seed is the trainable's split_seed, not a dataset parameter")
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            known = ", ".join(k for k in params if k != "seed")
            raise ValueError(f"dataset {name!r} has no parameter(s) {', '.join(unknown)}; known: {known}")
    if getattr(loader, "available", None) is not None:
        loader.available(**kwargs)


def prepare_dataset(name: str, **kwargs: Any) -> None:
    """Make the data present (downloading once when allowed), or raise :class:`DatasetUnavailable`."""
    loader = DATASETS.get(name)
    if getattr(loader, "fetch", None) is not None:
        loader.fetch(**kwargs)
    check_dataset(name, **kwargs)


def dataset_problem(name: str, **kwargs: Any) -> str | None:
    """What is missing for dataset ``name`` (and what to do), or None when it can be loaded."""
    try:
        check_dataset(name, **kwargs)
    except DatasetUnavailable as exc:
        return str(exc)
    return None


def dataset_issues(param: str, name: str, **kwargs: Any) -> list[tuple[str, str]]:
    """For a trainable's ``check_available``: [(param, problem)] if dataset ``name`` is missing."""
    problem = dataset_problem(name, **kwargs)
    return [(param, f"dataset {name!r} is not available: {problem}")] if problem else []


__all__ = ["DATASETS", "DatasetName", "DatasetSplits", "DatasetUnavailable", "check_dataset", "dataset_issues",
           "dataset_names", "dataset_problem", "load_dataset", "prepare_dataset", "register_dataset",
           "split_indices"]
