"""The few-shot option of ``distill`` (``fewshot:``): the superalignment paper's few-shot experiment.

The trial trains the student on the dataset's base classes with the distillation loss (the
Classifier-Baseline stage; the teacher is trained on the same base classes). After epoch 1, every
``every`` epochs and after the last, the student's encoder is evaluated on N-way K-shot episodes of the novel
classes (``fewshot_<k>shot_acc``, ``fewshot_<k>shot_ci95``). With ``meta_epochs > 0`` the last epoch
first reports the Classifier-Baseline numbers as ``fewshot_classifier_<k>shot_*``, then fine-tunes
the student as a Meta-Baseline (episodes of the base classes, cosine to prototypes times a
learnable temperature) and its ``fewshot_<k>shot_*`` are the Meta-Baseline's.

The meta stage's loss is the trial's ``loss`` on the episode logits, with ``loss_params`` updated by
``meta_loss_params`` (the authors' AdaptConf meta config: θ 0.25 instead of 8). The teacher's
episode logits are those of a Meta-Baseline over the cached classifier teacher's encoder with the
fixed temperature ``meta_teacher_temperature`` (10: the authors build the teacher as a
Meta-Baseline, temperature 10, from the classifier teacher's encoder and never train it). Their
variant with a meta-trained teacher (``--teacher_meta_model``) is not offered.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from pydantic import Field, field_validator, model_validator

from trainables.core.config import StrictModel
from trainables.data import NOVEL_KEY, DatasetSplits, novel_classes
from trainables.losses import check_loss_params, create_loss, loss_class
from trainables.training.fewshot import EpisodeSpec, MetaBaseline, MetaConfig, fewshot_eval, meta_train


class FewShotConfig(StrictModel):
    ways: int = Field(5, ge=2, description="classes per evaluation episode")
    shots: list[int] = Field(default_factory=lambda: [1, 5], min_length=1, description="support images per class; "
                             "one evaluation per entry")
    queries: int = Field(15, ge=1, description="query images per class and episode")
    episodes: int = Field(600, ge=1, description="evaluation episodes per shot count")
    seed: int = Field(0, ge=0, description="seed of the evaluation episodes (the same for every trial)")
    every: int = Field(1, ge=1, description="evaluate after epoch 1, 1 + every, ... and the last; reports in "
                       "between repeat the latest values (fewshot_epoch: when they were measured)")
    meta_epochs: int = Field(0, ge=0, description="Meta-Baseline epochs after the last classifier epoch; 0: none")
    meta_ways: int = Field(5, ge=2)
    meta_shots: int = Field(1, ge=1)
    meta_queries: int = Field(15, ge=1)
    meta_batches: int = Field(200, ge=1, description="optimiser steps per meta epoch")
    meta_episodes_per_batch: int = Field(4, ge=1)
    meta_lr: float = Field(0.001, gt=0)
    meta_weight_decay: float = Field(5e-4, ge=0)
    meta_momentum: float = Field(0.9, ge=0, lt=1)
    meta_temperature: float = Field(10.0, gt=0, description="initial (learnable) temperature of the cosine logits")
    meta_teacher_temperature: float = Field(10.0, gt=0, description="fixed temperature of the teacher's episode logits")
    meta_loss_params: dict[str, Any] = Field(default_factory=dict, description="loss_params overrides in the meta stage")

    @field_validator("shots")
    @classmethod
    def _positive_shots(cls, v: list[int]) -> list[int]:
        if any(k < 1 for k in v) or len(set(v)) != len(v):
            raise ValueError(f"shots must be distinct positive counts, got {v}")
        return v


def check_fewshot(cfg: FewShotConfig, dataset: str, dataset_kwargs: dict[str, Any], loss: str,
                  loss_params: dict[str, Any]) -> None:
    """Parse-time checks: the dataset has novel classes, episodes fit them, the meta loss is valid."""
    data_kwargs = {k: v for k, v in dataset_kwargs.items() if k != "download"}
    novel = novel_classes(dataset, **data_kwargs)
    if novel is None:
        raise ValueError(f"fewshot: dataset {dataset!r} has no novel classes (few-shot datasets: digits_fewshot, "
                         f"mini_imagenet)")
    if cfg.ways > novel.count:
        raise ValueError(f"fewshot.ways: {cfg.ways}-way episodes need {cfg.ways} novel classes, dataset "
                         f"{dataset!r} has {novel.count} (got {cfg.ways})")
    need = max(cfg.shots) + cfg.queries
    if need > novel.min_per_class:
        raise ValueError(f"fewshot.shots: {max(cfg.shots)} shots + {cfg.queries} queries take {need} images of a "
                         f"class, dataset {dataset!r} has {novel.min_per_class} in its smallest novel class "
                         f"(got shots {cfg.shots})")
    if cfg.meta_epochs:
        cls = loss_class(loss)
        if cls.needs_features:
            raise ValueError(f"fewshot.meta_epochs: the meta stage trains on episode logits, loss {loss!r} needs "
                             f"features (got meta_epochs {cfg.meta_epochs})")
        check_loss_params(loss, {**loss_params, **cfg.meta_loss_params})


def fewshot_hook(cfg: FewShotConfig, data: DatasetSplits, epochs: int, loss: str, loss_params: dict[str, Any],
                 device: torch.device, teacher: Callable[[], torch.nn.Module] | None,
                 seed: int) -> Callable[[torch.nn.Module, int], dict[str, float]]:
    """The classifier loop's per-epoch hook: the few-shot metrics when due (else {}), and the
    Meta-Baseline stage after the last epoch. Base-class episodes for the meta stage must fit
    the training split: checked here, before the first epoch."""
    split = data.meta[NOVEL_KEY]
    spec = EpisodeSpec(ways=cfg.ways, shots=tuple(cfg.shots), queries=cfg.queries, episodes=cfg.episodes,
                       seed=cfg.seed)
    if cfg.meta_epochs:
        from trainables.training.fewshot import check_episode_fits, class_table

        check_episode_fits(class_table(data.train_y)[1], cfg.meta_ways, cfg.meta_shots + cfg.meta_queries,
                           "fewshot.meta_ways / meta_shots + meta_queries on the base training split")

    latest: dict[str, float] = {}

    def hook(model: torch.nn.Module, epoch: int) -> dict[str, float]:
        # Tune wants the search metric in every report: between evaluations the latest measurement
        # is repeated, and fewshot_epoch says which epoch it comes from.
        last = epoch + 1 == epochs
        if latest and not last and epoch % cfg.every:
            return dict(latest)
        if last and cfg.meta_epochs:
            out = fewshot_eval(model, split, spec, device, prefix="fewshot_classifier")
            out.update(run_meta(cfg, model, data, loss, loss_params, device, teacher, seed))
            out.update(fewshot_eval(model, split, spec, device))
        else:
            out = fewshot_eval(model, split, spec, device)
        latest.clear()
        latest.update(out, fewshot_epoch=epoch + 1)
        return dict(latest)

    return hook


def run_meta(cfg: FewShotConfig, model: torch.nn.Module, data: DatasetSplits, loss: str, loss_params: dict[str, Any],
             device: torch.device, teacher: Callable[[], torch.nn.Module] | None, seed: int) -> dict[str, float]:
    loss_fn = create_loss(loss, {**loss_params, **cfg.meta_loss_params}, num_classes=cfg.meta_ways).to(device)
    t_model = None
    if loss_fn.needs_teacher and teacher is not None:
        t_model = MetaBaseline(teacher().to(device), cfg.meta_teacher_temperature, learnable=False).to(device)
    meta = MetaBaseline(model, cfg.meta_temperature).to(device)
    was_training = model.training
    result = meta_train(meta, data.train_x, data.train_y,
                        MetaConfig(epochs=cfg.meta_epochs, batches=cfg.meta_batches,
                                   episodes_per_batch=cfg.meta_episodes_per_batch, ways=cfg.meta_ways,
                                   shots=cfg.meta_shots, queries=cfg.meta_queries, lr=cfg.meta_lr,
                                   weight_decay=cfg.meta_weight_decay, momentum=cfg.meta_momentum, seed=seed),
                        loss_fn, teacher=t_model, device=device)
    model.train(was_training)
    return result
