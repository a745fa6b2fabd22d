"""The ``w2s_probe`` family's parameters: one probe configuration (:class:`ProbeConfig`, what a
vectorised trial varies) and the trial's (:class:`W2SProbeParams`: dataset, role split, weak and
strong models, probe pool sizes, vectorisation)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from trainables.core.config import StrictModel, first_problem
from trainables.core.registry import kwargs_validator
from trainables.data import DATASETS, AnyDatasetName
from trainables.data.streamed import is_folder_dataset
from trainables.losses import check_loss_params
from trainables.models import predicts_with_untrained_head
from trainables.runtime.trainable import TrialParams
from trainables.runtime.vectorize import expand_configs, is_vectorized
from trainables.w2s_probe.features import ModelSource, ModelTraining, PretrainSplit

PROBE_FIELDS = ("lr", "weight_decay", "epochs", "w2s_labels", "w2s_loss", "loss_params")


class ProbeConfig(StrictModel):
    """The parameters of one probe configuration: what a vectorised trial varies."""

    lr: float = Field(1e-3, gt=0, le=10, description="Adam learning rate (cosine to 0 per step)")
    weight_decay: float = Field(0.0, ge=0, description="Adam (L2) weight decay")
    epochs: int = Field(10, ge=1, le=10_000)
    w2s_labels: Literal["soft", "hard"] = Field("soft", description="weak labels as probabilities or argmax")
    w2s_loss: Literal["ce", "auxconf"] = Field("ce", description="the W2S probe's loss; the ceiling uses ce")
    loss_params: dict[str, Any] = Field(default_factory=dict, description="the W2S loss's parameters")

    @model_validator(mode="after")
    def _loss_params_fit_loss(self):
        check_loss_params(self.w2s_loss, self.loss_params)
        return self


def _default_weak() -> ModelSource:
    return ModelSource(model="linear", train=ModelTraining(epochs=20, lr=0.05))


def _default_strong() -> ModelSource:
    return ModelSource(model="cnn", train=ModelTraining(epochs=30, lr=0.05))


class W2SProbeParams(TrialParams, ProbeConfig):
    # resources.workers shards the driver-side feature pass (TrainableDef.sharded_prepare); the
    # probes of a trial are one batched computation on one device, so a trial's config has workers 1.
    workers: int = Field(1, ge=1, description="shards of the weak / strong feature pass (from resources.workers); "
                                              "each probe trial trains on one device")
    dataset: AnyDatasetName = Field("digits", description="a registered dataset, in memory or streamed (imagenet)")
    dataset_kwargs: dict[str, Any] = Field(default_factory=dict)
    split_seed: int = Field(0, ge=0, description="seed of the role split and of the probe train/test permutation")
    pretrain_split: PretrainSplit = Field(default_factory=lambda: PretrainSplit(weak=0.15, strong=0.35))
    weak: ModelSource = Field(default_factory=_default_weak)
    strong: ModelSource = Field(default_factory=_default_strong)
    n_train: float = Field(0.8, gt=0, description="probe training samples: a fraction (< 1) of the pool or a count")
    n_val: float = Field(0.0, ge=0, description="held out from the end of the training samples for validation")
    batch_size: int = Field(100, ge=1)
    feature_batch_size: int = Field(256, ge=1, description="batch of the weak / strong passes (not in cache keys)")
    feature_workers: int = Field(0, ge=0, description="DataLoader workers of passes over folder datasets")
    vectorize: int | None = Field(None, ge=1, le=4096, description="probe configurations sampled per trial")
    probes: list[dict[str, Any]] | None = None
    probe_grid: dict[str, list[Any]] | None = None

    _dataset_kwargs_fit = kwargs_validator("dataset", "dataset_kwargs", DATASETS.check_kwargs)

    @model_validator(mode="after")
    def _consistent(self):
        if is_folder_dataset(self.dataset) and "data_root" not in self.dataset_kwargs:
            raise ValueError(f"dataset_kwargs.data_root: is required for the {self.dataset} folder dataset")
        for role in ("weak", "strong"):
            has_slice = getattr(self.pretrain_split, role) > 0
            if (getattr(self, role).train is not None) != has_slice:
                raise ValueError(f"pretrain_split.{role}: {role}.train and a nonzero pretrain_split.{role} go "
                                 "together (a model trained here needs its own slice, and a slice needs a model)")
        # The weak model labels the probe pool with its predictions: they must come from a trained classifier.
        weak = self.weak
        if weak.train is None and weak.checkpoint is None:
            problem = predicts_with_untrained_head(bool(weak.model_kwargs.get("pretrained")), weak.model_kwargs)
            if problem:
                raise ValueError(f"weak.model_kwargs.head: the weak model labels the pool; {problem}")
        for i, cfg in enumerate(expand_configs(self.model_dump(), PROBE_FIELDS) if self.is_vectorized else []):
            try:
                ProbeConfig.model_validate(cfg)
            except ValidationError as exc:
                raise ValueError(f"probe configuration {i}: {first_problem(exc)}") from None
        return self

    @property
    def is_vectorized(self) -> bool:
        return is_vectorized(self.model_dump())

    def probe_configs(self) -> list[ProbeConfig]:
        return [ProbeConfig.model_validate(c) for c in expand_configs(self.model_dump(), PROBE_FIELDS)]
