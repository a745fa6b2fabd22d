"""``distill``: train (or reuse) a teacher, then train a student with a distillation loss.

The teacher is content-addressed in the sweep's artifact cache by its full recipe (data, split,
architecture, optimisation, seed), so it is trained once and shared by every trial and by later
sweeps that name the same recipe. With ``teacher_mode: cached`` its logits on the (un-augmented)
training set are stored with it, and student trials never run a teacher forward pass.
"""
from __future__ import annotations

import json
import os
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from trainables.classifier_loop import CachedTeacher, OnlineTeacher, OptimConfig, train_classifier
from trainables.data import DatasetName, dataset_issues, load_dataset
from trainables.engine import predict_logits, seed_everything
from trainables.losses import LossName, check_loss_params, create_loss
from trainables.models import ModelName, create_model
from trainables.registry import TrainableDef, TrialContext, TrialParams, register_trainable
from trainables.session import LocalSession, Session, default_device

Optimizer = Literal["sgd", "adam", "adamw"]
Schedule = Literal["cosine", "constant"]


class TeacherRecipe(BaseModel):
    """How to train the teacher. Everything here goes into the teacher's cache key."""

    model_config = ConfigDict(extra="forbid")

    model: ModelName = "cnn"
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=1)
    optimizer: Optimizer = "sgd"
    lr: float = Field(0.05, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    seed: int = Field(0, ge=0)


class DistillParams(TrialParams):
    dataset: DatasetName = "digits"
    split_seed: int = Field(0, ge=0, description="seed of the train/val/test split")
    teacher: TeacherRecipe = Field(default_factory=TeacherRecipe)
    teacher_mode: Literal["cached", "online"] = "cached"
    student: ModelName = "mlp"
    student_kwargs: dict[str, Any] = Field(default_factory=dict)
    loss: LossName = "kd"
    loss_params: dict[str, Any] = Field(default_factory=dict)
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(64, ge=1)
    optimizer: Optimizer = "sgd"
    lr: float = Field(0.05, gt=0, le=10)
    weight_decay: float = Field(5e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    schedule: Schedule = "cosine"
    warmup_epochs: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _loss_params_fit_loss(self):
        check_loss_params(self.loss, self.loss_params)
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be below epochs ({self.epochs})")
        return self


def teacher_recipe(p: DistillParams) -> dict[str, Any]:
    return {"dataset": p.dataset, "split_seed": p.split_seed, **p.teacher.model_dump()}


def build_teacher(recipe: dict[str, Any], out_dir: str, device: torch.device | None = None) -> dict[str, Any]:
    """Train a teacher with cross-entropy and write ``model.pt`` and ``train_logits.pt``."""
    device = device or default_device()
    t = TeacherRecipe.model_validate({k: v for k, v in recipe.items() if k not in ("dataset", "split_seed")})
    data = load_dataset(recipe["dataset"], seed=recipe["split_seed"]).to(device)
    seed_everything(t.seed)
    model = create_model(t.model, num_classes=data.num_classes, input_shape=data.input_shape, **t.model_kwargs)
    session = LocalSession(device)
    final = train_classifier(
        model=model, data=data, loss_fn=create_loss("ce"), session=session, seed=t.seed,
        optim=OptimConfig(epochs=t.epochs, batch_size=t.batch_size, lr=t.lr, optimizer=t.optimizer,
                          weight_decay=t.weight_decay))
    model = model.cpu()
    torch.save(model.state_dict(), os.path.join(out_dir, "model.pt"))
    logits = predict_logits(model, data.train_x.cpu())
    torch.save(logits, os.path.join(out_dir, "train_logits.pt"))
    meta = {"val_acc": final["val_acc"], "test_acc": final["test_acc"], "train_loss": final["train_loss"],
            "model": t.model, "num_classes": data.num_classes, "input_shape": list(data.input_shape)}
    with open(os.path.join(out_dir, "teacher.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return meta


def load_teacher(p: DistillParams, ctx: TrialContext, device: torch.device):
    recipe = teacher_recipe(p)
    if ctx.cache is None:
        raise RuntimeError("the distill trainable needs an artifact cache for its teacher")
    entry = ctx.cache.get_or_create("teacher", recipe, lambda d: build_teacher(recipe, d))
    return entry


def run_distill(p: DistillParams, session: Session, ctx: TrialContext) -> dict[str, Any]:
    device = session.device
    entry = load_teacher(p, ctx, device)
    data = load_dataset(p.dataset, seed=p.split_seed).to(device)
    seed_everything(p.seed)
    loss_fn = create_loss(p.loss, p.loss_params, num_classes=data.num_classes)
    teacher = None
    if loss_fn.needs_teacher:
        if p.teacher_mode == "cached":
            teacher = CachedTeacher(torch.load(entry.file("train_logits.pt"), map_location=device))
        else:
            # The teacher's random init is overwritten by its weights; keep it off the global RNG
            # so the student initialises identically in every teacher mode.
            with torch.random.fork_rng(devices=[]):
                t_model = create_model(p.teacher.model, num_classes=data.num_classes,
                                       input_shape=data.input_shape, **p.teacher.model_kwargs)
            t_model.load_state_dict(torch.load(entry.file("model.pt"), map_location="cpu"))
            teacher = OnlineTeacher(t_model.to(device))
    student = create_model(p.student, num_classes=data.num_classes, input_shape=data.input_shape,
                           **p.student_kwargs)
    return train_classifier(
        model=student, data=data, loss_fn=loss_fn, session=session, seed=p.seed, teacher=teacher,
        checkpoint_every=ctx.checkpoint_every,
        static_metrics={"teacher_test_acc": entry.meta["test_acc"], "teacher_val_acc": entry.meta["val_acc"]},
        optim=OptimConfig(epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, optimizer=p.optimizer,
                          weight_decay=p.weight_decay, momentum=p.momentum, schedule=p.schedule,
                          warmup_epochs=p.warmup_epochs))


def prepare_distill(fixed: dict[str, Any], searched: set[str], ctx: TrialContext) -> dict[str, Any] | None:
    """Train the teacher once, up front, unless its recipe is itself searched (then the first
    trial that needs each recipe builds it, under the cache's lock)."""
    teacher_keys = {"dataset", "split_seed"} | {k for k in searched if k == "teacher" or k.startswith("teacher.")}
    if teacher_keys & searched:
        return None
    defaults = DistillParams.model_validate({k: v for k, v in fixed.items()
                                             if k in ("dataset", "split_seed", "teacher")})
    entry = load_teacher(defaults, ctx, default_device())
    return {"teacher_cache_id": entry.key, "teacher_cache_hit": entry.hit, **{f"teacher_{k}": v
            for k, v in entry.meta.items() if k in ("val_acc", "test_acc")}}


def check_distill_inputs(p: DistillParams) -> list[tuple[str, str]]:
    """Before Ray starts: the dataset must be on disk (or downloadable)."""
    return dataset_issues("dataset", p.dataset)


def distill_control(config: dict[str, Any]) -> dict[str, Any]:
    """Same budget and hyperparameters, no teacher: plain cross-entropy on the labels."""
    return {"loss": "ce", "loss_params": {}}


register_trainable(TrainableDef(
    name="distill",
    params_model=DistillParams,
    train_loop=run_distill,
    metric="val_acc",
    mode="max",
    description="Teacher (trained once, cached) to student distillation with a registered loss.",
    prepare=prepare_distill,
    control_overrides=distill_control,
    check_available=check_distill_inputs,
    metrics_doc={
        "val_acc": "student top-1 on the validation split (last epoch)",
        "test_acc": "student top-1 on the test split (last epoch)",
        "best_val_acc": "best validation top-1 so far",
        "test_acc_at_best_val": "test top-1 at the epoch of best validation accuracy",
        "teacher_test_acc": "the teacher's test top-1",
        "train_loss": "mean training loss of the epoch (and train_<component> for each loss term)",
    },
))
