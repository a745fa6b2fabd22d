"""The dataset parameters trainables share (``dataset``, ``dataset_kwargs``, ``split_seed``), checked
at parse time, and the driver-side download of a dataset that no trial searches."""
from __future__ import annotations

from typing import Any

from pydantic import Field

from trainables.core.registry import kwargs_validator
from trainables.data import DatasetName, DatasetUnavailable, check_dataset, prepare_dataset
from trainables.runtime.trainable import TrialParams


def _check_dataset(name: str, kwargs: dict[str, Any]) -> None:
    """Parameters the loader has, with values it takes. Data missing from this machine is not a bad
    parameter: the trainable's ``check_available`` hook reports it before Ray starts (a real run
    refuses, a dry run lists it), so a space still parses and dry-runs on a laptop without the data."""
    try:
        check_dataset(name, **kwargs)
    except DatasetUnavailable:
        pass


class DatasetParams(TrialParams):
    dataset: DatasetName = "digits"
    dataset_kwargs: dict[str, Any] = Field(default_factory=dict,
                                           description="the dataset's parameters (data_root, download, …)")
    split_seed: int = Field(0, ge=0, description="seed of the train/val/test split")

    _dataset_kwargs_fit = kwargs_validator("dataset", "dataset_kwargs", _check_dataset)


def prepare_fixed_dataset(params_model: type[DatasetParams], fixed: dict[str, Any], searched: set[str]) -> None:
    """Download the data once, in the driver, rather than in every trial (unless it is searched)."""
    if "dataset" not in searched and not any(k.startswith("dataset_kwargs") for k in searched):
        data = params_model.model_validate({k: v for k, v in fixed.items() if k in ("dataset", "dataset_kwargs")})
        prepare_dataset(data.dataset, **data.dataset_kwargs)
