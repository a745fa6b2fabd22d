"""The ``dino`` family's driver-side steps: the dataset fetched once, and the check that it is there."""
from __future__ import annotations

from typing import Any

from trainables.data import dataset_issues
from trainables.dino.params import DinoParams
from trainables.runtime.trainable import TrialContext
from trainables.training.dataset_params import prepare_fixed_dataset


def prepare_dino(fixed: dict[str, Any], searched: set[str], ctx: TrialContext) -> dict[str, Any] | None:
    prepare_fixed_dataset(DinoParams, fixed, searched)
    return None


def check_dino_inputs(p: DinoParams) -> list[tuple[str, str]]:
    return dataset_issues("dataset", p.dataset, **p.dataset_kwargs)
