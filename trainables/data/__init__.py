"""Dataset registry.

Every dataset loads into a :class:`DatasetSplits`: plain tensors for train, val and test, split
deterministically from a seed. Small datasets are kept as tensors so that a trial can move the
whole thing onto its device once and never touch a DataLoader.

A loader's parameters are its signature (``seed`` aside, which the trainable passes as its
``split_seed``): an unknown ``dataset_kwargs`` key is an error when the search space is parsed. A
loader may register a cheap ``available(**kwargs)`` check, run then too (before Ray starts), that
raises :class:`DatasetUnavailable` when the files are missing and ``download`` is off; and a
``fetch(**kwargs)`` that downloads them once, in the sweep's preparation step rather than in every
trial.

A *streamed* dataset (``imagenet``, :mod:`trainables.data.streamed`) is too large for tensors: its
entry opens it as a torchvision dataset read batch by batch, and only trainables whose parameters
ask for ``DATASETS.name_type()`` (any interface) rather than :data:`DatasetName` take it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from trainables.core.registry import Entry, Registry, scan
from trainables.data.base import (NOVEL_KEY, DatasetSplits, DatasetUnavailable, FewShotSplit, FolderDataset,
                                  NovelClasses, split_indices)


@dataclass(frozen=True)
class DatasetEntry(Entry):
    """A loader (``obj``) with its optional ``available`` check and ``fetch`` step (both called
    with the loader's keyword arguments), and, for a streamed dataset, what it holds (``stream``)."""

    available: Callable[..., None] | None = None
    fetch: Callable[..., None] | None = None
    stream: FolderDataset | None = None
    # A few-shot dataset: its novel classes for given keyword arguments (meta[NOVEL_KEY] holds them).
    novel: Callable[..., NovelClasses] | None = None

    @property
    def interface(self) -> str:
        return "streamed" if self.stream is not None else "in-memory"


DATASETS: Registry[DatasetEntry] = Registry("dataset", scan("trainables.data"), record=DatasetEntry,
                                            fixed=("seed",))
register_dataset = DATASETS.register
dataset_names = DATASETS.names
# Datasets that load into DatasetSplits: what every trainable but w2s_probe trains on.
DatasetName = DATASETS.name_type("in-memory")
# Any dataset, in memory or streamed (read batch by batch in passes over it).
AnyDatasetName = DATASETS.name_type()


def load_dataset(name: str, **kwargs) -> DatasetSplits:
    DATASETS.check_kwargs(name, {k: v for k, v in kwargs.items() if k != "seed"})
    return DATASETS.get(name).obj(**kwargs)


def check_dataset(name: str, **kwargs: Any) -> None:
    """Validation-time check, cheap (no decoding, no network): ``kwargs`` are parameters the loader
    has, and the data is on disk unless it may be downloaded. Raises ``ValueError`` for unknown
    parameters and :class:`DatasetUnavailable` for missing data."""
    entry = DATASETS.get(name)
    if "seed" in kwargs:
        raise ValueError("the split seed is the trainable's split_seed, not a dataset parameter")
    DATASETS.check_kwargs(name, kwargs)
    if entry.available is not None:
        entry.available(**kwargs)


def novel_classes(name: str, **kwargs: Any) -> NovelClasses | None:
    """A few-shot dataset's novel classes (count, smallest class) for ``kwargs``; None for a dataset
    without a novel split."""
    entry = DATASETS.get(name)
    return entry.novel(**kwargs) if entry.novel is not None else None


def prepare_dataset(name: str, **kwargs: Any) -> None:
    """Make the data present (downloading once when allowed), or raise :class:`DatasetUnavailable`."""
    entry = DATASETS.get(name)
    if entry.fetch is not None:
        entry.fetch(**kwargs)
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


__all__ = ["DATASETS", "NOVEL_KEY", "AnyDatasetName", "DatasetEntry", "DatasetName", "DatasetSplits", "DatasetUnavailable",
           "FewShotSplit", "FolderDataset", "NovelClasses", "novel_classes",
           "check_dataset", "dataset_issues", "dataset_names", "dataset_problem", "load_dataset", "prepare_dataset",
           "register_dataset", "split_indices"]
