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


def dataset_digest(fixed: dict[str, Any], searched: set[str]) -> str | None:
    """A SHA-256 naming the data a sweep trains on: the dataset, its parameters and split seed, and
    the listing (relative path, size) of the files under its ``data_root`` when it has one. The
    listing, not the bytes: hashing an ImageNet-sized folder would hold the sweep for hours, and a
    changed, added or removed file shows in it. None when the dataset is searched (no one data)."""
    import hashlib
    import json
    import os

    if any(k == "split_seed" or k.startswith("dataset") for k in searched):
        return None
    identity = {"dataset": fixed.get("dataset", DatasetParams.model_fields["dataset"].default),
                "dataset_kwargs": fixed.get("dataset_kwargs") or {},
                "split_seed": fixed.get("split_seed", 0)}
    h = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode())
    root = identity["dataset_kwargs"].get("data_root")
    if isinstance(root, str) and os.path.isdir(os.path.expanduser(root)):
        root = os.path.expanduser(root)
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            for name in sorted(files):
                path = os.path.join(folder, name)
                h.update(f"{os.path.relpath(path, root)}\0{os.path.getsize(path)}\n".encode())
    return h.hexdigest()
