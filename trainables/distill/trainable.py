"""``distill``: train (or reuse) a teacher, then train a student with a distillation loss.

The teacher is content-addressed in the sweep's artifact cache by its full recipe (data, split,
architecture, optimisation, seed), so it is trained once and shared by every trial and by later
sweeps that name the same recipe. With ``teacher_mode: cached`` its logits on the (un-augmented)
training set are stored with it, and student trials never run a teacher forward pass. With
``augment``, ``cached`` and ``sampled_views`` cache the teacher's logits on K fixed augmented views
per image instead (see :mod:`trainables.training.views` for the exact definition of each mode).

How the teacher gets its weights (scratch, linear probe, fine-tune, pretrained) is in
:mod:`trainables.distill.teacher`; how the student starts (``student_init``) in :mod:`trainables.init`.
"""
from __future__ import annotations

import os
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator

from trainables.training.classifier_loop import (CachedTeacher, OnlineTeacher, OptimConfig, TeacherSignal,
                                                 train_classifier)
from trainables.data import DatasetSplits, dataset_issues, load_dataset
from trainables.training.dataset_params import DatasetParams, prepare_fixed_dataset
from trainables.data.augment import Augment, AugmentName
from trainables.runtime.engine import predict, seed_everything
from trainables.init import WeightSelectionConfig, check_student_init, init_student
from trainables.losses import LossName, check_loss_params, create_loss, loss_class
from trainables.core.registry import kwargs_validator
from trainables.models import Classifier, ModelName, check_model_kwargs
from trainables.runtime.trainable import TrialContext, register_trainable
from trainables.runtime.session import Session
from trainables.runtime.vocabulary import Vocabulary
from trainables.distill.teacher import Optimizer, Schedule, TeacherRecipe, build_teacher, load_teacher_model, recipe_fields
from trainables.training.views import BatchViews, FixedViews, PlainViews, RandomViews, teacher_view_logits, view_params


class DistillParams(DatasetParams):
    teacher: TeacherRecipe = Field(default_factory=TeacherRecipe)
    teacher_mode: Literal["cached", "online", "sampled_views"] = Field(
        "cached", description="cached | sampled_views: teacher logits computed once (per view) and looked up; "
        "online: teacher forward every step")
    augment: AugmentName = Field("none", description="on-device augmentation of the student's training "
                                 "batches: none | flip_crop | rrc_flip")
    crop_pad: int = Field(4, ge=0, le=64, description="flip_crop: pixels of padding before the crop")
    pad_mode: Literal["reflect", "zeros"] = "reflect"
    rrc_scale: tuple[float, float] = Field((0.08, 1.0), description="rrc_flip: crop area range (fractions)")
    teacher_views: int = Field(8, ge=1, le=256, description="cached / sampled_views with augment: fixed "
                               "augmented views per image whose teacher logits are cached")
    view_seed: int = Field(0, ge=0, description="seed that regenerates the fixed views (shared by all trials)")
    compile: bool = Field(False, description="torch.compile the student's training forward")
    student: ModelName = "mlp"
    student_kwargs: dict[str, Any] = Field(default_factory=dict)
    student_init: str = Field("random", description="random | pretrained | weight_selection | a checkpoint file")
    weight_selection: WeightSelectionConfig = Field(default_factory=WeightSelectionConfig)
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

    _student_kwargs_fit = kwargs_validator("student", "student_kwargs", check_model_kwargs)

    @field_validator("rrc_scale")
    @classmethod
    def _scale_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1] <= 1:
            raise ValueError("rrc_scale must be (low, high) with 0 < low <= high <= 1")
        return v

    @model_validator(mode="after")
    def _loss_params_fit_loss(self):
        check_loss_params(self.loss, self.loss_params)
        if self.teacher_mode == "sampled_views" and self.augment == "none":
            raise ValueError("teacher_mode sampled_views draws among augmented views; set augment "
                             "(flip_crop or rrc_flip) or use teacher_mode cached")
        if self.augment != "none" and self.teacher_mode != "online" and loss_class(self.loss).needs_features:
            raise ValueError(f"loss {self.loss!r} needs teacher features, which are cached for un-augmented "
                             f"images only; with augment {self.augment!r} use teacher_mode online")
        check_student_init(self.student_init, self.student, self.student_kwargs)
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be below epochs ({self.epochs})")
        return self


def teacher_recipe(p: DistillParams) -> dict[str, Any]:
    # ``download`` says how to get the data, not what the data is: it stays out of the key.
    data_kwargs = {k: v for k, v in p.dataset_kwargs.items() if k != "download"}
    return {"dataset": p.dataset, "split_seed": p.split_seed, "dataset_kwargs": data_kwargs,
            **recipe_fields(p.teacher)}


def load_data(p: DistillParams) -> DatasetSplits:
    return load_dataset(p.dataset, seed=p.split_seed, **p.dataset_kwargs)


def load_teacher(p: DistillParams, ctx: TrialContext):
    recipe = teacher_recipe(p)
    if ctx.artifacts is None:
        raise RuntimeError("the distill trainable needs an artifact store (TrialContext.artifacts) for its teacher")
    download = bool(p.dataset_kwargs.get("download", False))
    entry = ctx.artifacts.get_or_create("teacher", recipe, lambda d: build_teacher(recipe, d, download=download))
    return entry


def cached_teacher_features(p: DistillParams, ctx: TrialContext, entry, data, device: torch.device) -> torch.Tensor:
    """The teacher's penultimate features on the (un-augmented) training set, computed once.

    A cache entry of their own, derived from the teacher's: the teacher recipe and its cache key
    stay as they are, and teachers cached before feature losses existed serve them too."""
    recipe = {"teacher": teacher_recipe(p), "outputs": "train_features"}

    def build(out_dir: str) -> dict[str, Any]:
        feats = predict(load_teacher_model(p.teacher, entry, data, data.train_x.device), data.train_x, features=True)
        torch.save(feats.cpu(), os.path.join(out_dir, "train_features.pt"))
        return {"num_samples": feats.shape[0], "num_features": feats.shape[1]}

    features = ctx.artifacts.get_or_create("teacher_features", recipe, build)
    return torch.load(features.file("train_features.pt"), map_location=device)


def augment_of(p: DistillParams) -> Augment:
    return Augment(p.augment, pad=p.crop_pad, pad_mode=p.pad_mode, scale=tuple(p.rrc_scale))


def uses_fixed_views(p: DistillParams) -> bool:
    return p.augment != "none" and p.teacher_mode != "online"


def student_views(p: DistillParams, data: DatasetSplits, device: torch.device) -> BatchViews:
    """What the student sees each epoch. The no-teacher control (same ``teacher_mode``) sees the
    same views as the distilled student."""
    aug = augment_of(p)
    if not aug.active:
        return PlainViews()
    if p.teacher_mode == "online":
        return RandomViews(aug, p.seed, device)
    params = view_params(aug, len(data.train_y), data.input_shape, p.teacher_views, p.view_seed)
    order = "cycle" if p.teacher_mode == "cached" else "sampled"
    return FixedViews(aug, params, p.teacher_views, order, p.seed, device)


def views_recipe(p: DistillParams) -> dict[str, Any]:
    return {"teacher": teacher_recipe(p), "outputs": "view_logits", "augment": augment_of(p).recipe(),
            "views": p.teacher_views, "view_seed": p.view_seed}


def cached_view_logits(p: DistillParams, ctx: TrialContext, entry, data, device: torch.device) -> torch.Tensor:
    """The teacher's logits for the K fixed views of every training image, (K, N, classes),
    computed once per (teacher, augmentation, K, view_seed) and shared by every trial."""
    def build(out_dir: str) -> dict[str, Any]:
        aug = augment_of(p)
        params = view_params(aug, len(data.train_y), data.input_shape, p.teacher_views, p.view_seed)
        model = load_teacher_model(p.teacher, entry, data, data.train_x.device)
        logits = teacher_view_logits(model, data.train_x, aug, params)
        torch.save(logits.cpu(), os.path.join(out_dir, "view_logits.pt"))
        return {"views": p.teacher_views, "num_samples": logits.shape[1]}

    views = ctx.artifacts.get_or_create("teacher_views", views_recipe(p), build)
    return torch.load(views.file("view_logits.pt"), map_location=device)


def teacher_signal(p: DistillParams, ctx: TrialContext, entry, data, loss_cls,
                   device: torch.device) -> tuple[TeacherSignal | None, dict[str, Any]]:
    """The teacher's per-batch outputs, and the loss context that describes the teacher
    (``teacher_dim`` for feature losses, ``teacher_head`` for losses that reuse its classifier)."""
    if not loss_cls.needs_teacher:
        return None, {}
    wants_features = loss_cls.needs_features
    t_model = None
    if p.teacher_mode == "online" or loss_cls.needs_teacher_head:
        t_model = load_teacher_model(p.teacher, entry, data, torch.device("cpu"))
    context: dict[str, Any] = {"teacher_head": t_model.head} if loss_cls.needs_teacher_head else {}
    if p.teacher_mode == "online":
        if wants_features:
            context["teacher_dim"] = t_model.num_features
        return OnlineTeacher(t_model.to(device)), context
    if uses_fixed_views(p):
        return CachedTeacher(cached_view_logits(p, ctx, entry, data, device)), context
    features = cached_teacher_features(p, ctx, entry, data, device) if wants_features else None
    if features is not None:
        context["teacher_dim"] = features.shape[1]
    logits = torch.load(entry.file("train_logits.pt"), map_location=device)
    return CachedTeacher(logits, features), context


def build_student(p: DistillParams, data: DatasetSplits, entry) -> Classifier:
    """The student per ``student_init``, reading inputs normalised as ``data`` is."""
    student = init_student(p.student, p.student_kwargs, p.student_init, p.weight_selection,
                           num_classes=data.num_classes, input_shape=data.input_shape,
                           teacher=lambda: load_teacher_model(p.teacher, entry, data, torch.device("cpu")))
    student.adapt_input(data.mean, data.std)
    return student


def run_distill(p: DistillParams, session: Session, ctx: TrialContext) -> dict[str, Any]:
    device = session.device
    entry = load_teacher(p, ctx)
    data = load_data(p).to(device)
    seed_everything(p.seed)
    teacher, teacher_context = teacher_signal(p, ctx, entry, data, loss_class(p.loss), device)
    student = build_student(p, data, entry)
    # Built after the student, so a loss's own random init (projectors, memory banks) leaves the
    # student's init the same for every loss, the no-teacher control included.
    loss_fn = create_loss(p.loss, p.loss_params, num_classes=data.num_classes, student_dim=student.num_features,
                          num_samples=len(data.train_y), train_labels=data.train_y, **teacher_context)
    return train_classifier(
        model=student, data=data, loss_fn=loss_fn, session=session, seed=p.seed, teacher=teacher,
        checkpoint_every=ctx.checkpoint_every, views=student_views(p, data, device),
        static_metrics={"teacher_test_acc": entry.meta["test_acc"], "teacher_val_acc": entry.meta["val_acc"]},
        optim=OptimConfig(epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, optimizer=p.optimizer,
                          weight_decay=p.weight_decay, momentum=p.momentum, schedule=p.schedule,
                          warmup_epochs=p.warmup_epochs, compile=p.compile))


def prepare_distill(fixed: dict[str, Any], searched: set[str], ctx: TrialContext) -> dict[str, Any] | None:
    """Train the teacher once, up front, unless its recipe is itself searched (then the first
    trial that needs each recipe builds it, under the cache's lock)."""
    prepare_fixed_dataset(DistillParams, fixed, searched)
    teacher_keys = {"dataset", "split_seed"} | {k for k in searched
                                                if k == "teacher" or k.startswith(("teacher.", "dataset_kwargs"))}
    if teacher_keys & searched:
        return None
    defaults = DistillParams.model_validate({k: v for k, v in fixed.items()
                                             if k in ("dataset", "dataset_kwargs", "split_seed", "teacher")})
    entry = load_teacher(defaults, ctx)
    return {"teacher_cache_id": entry.key, "teacher_cache_hit": entry.hit, **{f"teacher_{k}": v
            for k, v in entry.meta.items() if k in ("val_acc", "test_acc")}}


def check_distill_inputs(p: DistillParams) -> list[tuple[str, str]]:
    """Before Ray starts: the dataset must be on disk (or downloadable)."""
    return dataset_issues("dataset", p.dataset, **p.dataset_kwargs)


def distill_control(config: dict[str, Any]) -> dict[str, Any]:
    """Same budget and hyperparameters, no teacher: plain cross-entropy on the labels."""
    return {"loss": "ce", "loss_params": {}}


register_trainable(
    "distill",
    params=DistillParams,
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
    vocabulary=Vocabulary(
        headline="test_acc",
        table_metrics=("test_acc", "teacher_test_acc"),
        reference_metric="test_acc",
        control="its no-teacher control",
        identity={"teacher": ("teacher.model", "teacher"), "student": ("student.model", "student"),
                  "method": ("method", "loss")},
        curves=("val_acc", "test_acc"),
        loss_curves=("train_loss", "val_loss"),
        per_worker_batch="batch_size",
    ),
)(run_distill)
