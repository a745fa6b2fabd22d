"""``label_noise``: synthetic noise on the *training* labels (the noisy-label experiment of
"Vision Superalignment"), as a nested parameter model, and its application to loaded splits.

Validation and test labels stay clean, so every accuracy is measured against the true labels. The
corruption itself is :mod:`trainables.data.label_noise`.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

from pydantic import Field

from trainables.core.config import StrictModel
from trainables.data import DatasetSplits
from trainables.data.label_noise import apply_label_noise, class_map_problem


class LabelNoiseConfig(StrictModel):
    kind: Literal["none", "symmetric", "asymmetric"] = Field(
        "none", description="none | symmetric (uniform over the other classes) | asymmetric (published class map)")
    rate: float = Field(0.0, ge=0.0, lt=1.0, description="symmetric: fraction of labels replaced; "
                        "asymmetric: probability that a label of a mapped class flips")
    seed: int = Field(0, ge=0, description="seed of the corruption (the same labels for every trial that names it)")
    keep_own_class: bool = Field(False, description="symmetric: draw among all classes, as the authors' code "
                                 "does (1/C of the picked labels keep their class)")

    @property
    def active(self) -> bool:
        return self.kind != "none"

    def recipe(self) -> dict[str, Any] | None:
        """Cache-key fields, None without noise (so clean recipes keep the keys they always had)."""
        return self.model_dump() if self.active else None


def check_label_noise(noise: LabelNoiseConfig, dataset: str, dataset_kwargs: dict[str, Any]) -> None:
    """Parse-time check: asymmetric noise needs a class map for the dataset."""
    if noise.kind == "asymmetric":
        problem = class_map_problem(dataset, dataset_kwargs)
        if problem:
            raise ValueError(f"label_noise.kind: {problem}")


def with_label_noise(data: DatasetSplits, noise: LabelNoiseConfig | dict[str, Any] | None, dataset: str,
                     dataset_kwargs: dict[str, Any] | None = None) -> tuple[DatasetSplits, float]:
    """``data`` with its training labels corrupted per ``noise``, and the realised noise rate."""
    noise = LabelNoiseConfig.model_validate(noise or {})
    if not noise.active:
        return data, 0.0
    noisy = apply_label_noise(data.train_y, noise.kind, noise.rate, noise.seed, num_classes=data.num_classes,
                              dataset=dataset, dataset_kwargs=dataset_kwargs, keep_own_class=noise.keep_own_class)
    meta = {**data.meta, "label_noise": {**noise.model_dump(), "realised_rate": noisy.rate}}
    return replace(data, train_y=noisy.labels, meta=meta), noisy.rate
