"""The dataset parameters trainables share (``dataset``, ``dataset_kwargs``, ``split_seed``), checked
at parse time, and the driver-side download of a dataset that no trial searches."""
from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from trainables.data import DatasetName, DatasetUnavailable, check_dataset, prepare_dataset
from trainables.runtime.trainable import TrialParams


class DatasetParams(TrialParams):
    dataset: DatasetName = "digits"
    dataset_kwargs: dict[str, Any] = Field(default_factory=dict,
                                           description="the dataset's parameters (data_root, download, …)")
    split_seed: int = Field(0, ge=0, description="seed of the train/val/test split")

    @field_validator("dataset_kwargs")
    @classmethod
    def _dataset_kwargs_fit(cls, v: dict[str, Any], info) -> dict[str, Any]:
        if "dataset" in info.data:
            try:
                check_dataset(info.data["dataset"], **v)
            except DatasetUnavailable as exc:
                raise ValueError(str(exc)) from None
        return v


def prepare_fixed_dataset(params_model: type[DatasetParams], fixed: dict[str, Any], searched: set[str]) -> None:
    """Download the data once, in the driver, rather than in every trial (unless it is searched)."""
    if "dataset" not in searched and not any(k.startswith("dataset_kwargs") for k in searched):
        data = params_model.model_validate({k: v for k, v in fixed.items() if k in ("dataset", "dataset_kwargs")})
        prepare_dataset(data.dataset, **data.dataset_kwargs)
