"""The ``distill`` trial: the teacher from the artifact cache, its signal, the student, and the
shared classifier loop.

The teacher is content-addressed in the sweep's artifact cache by its full recipe (data, split,
architecture, optimisation, seed), so it is trained once and shared by every trial and by later
sweeps that name the same recipe. With ``teacher_mode: cached`` its logits on the (un-augmented)
training set are stored with it, and student trials never run a teacher forward pass. With
``augment``, ``cached`` and ``sampled_views`` cache the teacher's logits on K fixed augmented views
per image instead (see :mod:`trainables.training.views` for the exact definition of each mode).
"""
from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import torch

from trainables.data import DatasetSplits, load_dataset
from trainables.distill.fewshot import fewshot_hook
from trainables.distill.params import DistillParams
from trainables.distill.synthetic import cached_student_set_logits, student_set_differs, training_set
from trainables.distill.teacher import build_teacher, load_teacher_model, recipe_fields
from trainables.init import init_student
from trainables.losses import create_loss, loss_class
from trainables.models import Classifier
from trainables.models import create_model
from trainables.models.base import head_state_keys
from trainables.runtime.engine import predict, seed_everything
from trainables.runtime.session import Session, default_device
from trainables.selcl.stage import run_stage
from trainables.runtime.trainable import TrialContext
from trainables.training.classifier_loop import (CachedTeacher, OnlineTeacher, OptimConfig, TeacherSignal,
                                                 train_classifier)
from trainables.training.batch_augment import batch_augment_of, geometric_of
from trainables.training.noise_params import with_label_noise
from trainables.training.views import BatchViews, FixedViews, PlainViews, RandomViews, teacher_view_logits, view_params


def teacher_recipe(p: DistillParams) -> dict[str, Any]:
    # ``download`` says how to get the data, not what the data is: it stays out of the key.
    data_kwargs = {k: v for k, v in p.dataset_kwargs.items() if k != "download"}
    # Noisy training labels or generated images make another teacher; without them the key stays
    # what it always was.
    noise = {"label_noise": p.label_noise.recipe()} if p.label_noise.active else {}
    generated = p.synthetic.train_set(teacher=True)
    return {"dataset": p.dataset, "split_seed": p.split_seed, "dataset_kwargs": data_kwargs,
            **recipe_fields(p.teacher), **noise, **({"synthetic": generated} if generated else {})}


def load_data(p: DistillParams, ctx: TrialContext | None = None, teacher: bool = False) -> DatasetSplits:
    """The splits with the real training labels corrupted per ``label_noise`` (the realised rate in
    ``meta["label_noise"]``), then the student's (or the teacher's) generated training images added."""
    data = load_dataset(p.dataset, seed=p.split_seed, **p.dataset_kwargs)
    data = with_label_noise(data, p.label_noise, p.dataset, p.dataset_kwargs)[0]
    return training_set(p, data, ctx, teacher) if ctx is not None else data


def load_teacher(p: DistillParams, ctx: TrialContext):
    recipe = teacher_recipe(p)
    if ctx.artifacts is None:
        raise RuntimeError("the distill trainable needs an artifact store (TrialContext.artifacts) for its teacher")
    download = bool(p.dataset_kwargs.get("download", False))
    data = (lambda: load_data(p, ctx, teacher=True)) if p.synthetic.uses(teacher=True) else None
    entry = ctx.artifacts.get_or_create("teacher", recipe, lambda d: build_teacher(recipe, d, download=download,
                                                                                   data=data and data()))
    return entry


def cached_teacher_features(p: DistillParams, ctx: TrialContext, entry, data, device: torch.device) -> torch.Tensor:
    """The teacher's penultimate features on the (un-augmented) training set, computed once.

    A cache entry of their own, derived from the teacher's: the teacher recipe and its cache key
    stay as they are, and teachers cached before feature losses existed serve them too."""
    recipe = {"teacher": teacher_recipe(p), "outputs": "train_features",
              **({"train_set": p.synthetic.train_set(teacher=False)} if student_set_differs(p) else {})}

    def build(out_dir: str) -> dict[str, Any]:
        feats = predict(load_teacher_model(p.teacher, entry, data, data.train_x.device), data.train_x, features=True)
        torch.save(feats.cpu(), os.path.join(out_dir, "train_features.pt"))
        return {"num_samples": feats.shape[0], "num_features": feats.shape[1]}

    features = ctx.artifacts.get_or_create("teacher_features", recipe, build)
    return torch.load(features.file("train_features.pt"), map_location=device)


def selcl_recipe(p: DistillParams) -> dict[str, Any]:
    """The cache key of the student architecture's own Sel-CL stage (``student_init: selcl``)."""
    data_kwargs = {k: v for k, v in p.dataset_kwargs.items() if k != "download"}
    noise = {"label_noise": p.label_noise.recipe()} if p.label_noise.active else {}
    return {"dataset": p.dataset, "split_seed": p.split_seed, "dataset_kwargs": data_kwargs, **noise,
            "model": p.student, "model_kwargs": p.student_kwargs, "selcl": p.selcl.model_dump()}


def load_student_selcl(p: DistillParams, ctx: TrialContext):
    """The student's Sel-CL stage from the artifact cache, run once per recipe and shared by every
    trial and control that names it (the authors run it once per network, noise and seed)."""
    def build(out_dir: str) -> dict[str, Any]:
        device = default_device()
        clean = load_dataset(p.dataset, seed=p.split_seed, **p.dataset_kwargs)
        data = with_label_noise(clean, p.label_noise, p.dataset, p.dataset_kwargs)[0].to(device)
        seed_everything(p.selcl.seed)
        model = create_model(p.student, num_classes=data.num_classes, input_shape=data.input_shape,
                             **p.student_kwargs).to(device)
        return run_stage(model, data, p.selcl, out_dir, clean.train_y if p.label_noise.active else None,
                         label=f"student {p.student} (Sel-CL stage, {p.dataset})")

    return ctx.artifacts.get_or_create("selcl", selcl_recipe(p), build)


def selected_subset(data: DatasetSplits, selected: torch.Tensor) -> DatasetSplits:
    """The training split cut to the examples Sel-CL selected (the authors' ``clean_idx``); val and
    test stay whole."""
    idx = selected.nonzero().squeeze(1).to(data.train_y.device)
    meta = {**data.meta, "selcl_selected": int(idx.numel())}
    return replace(data, train_x=data.train_x[idx], train_y=data.train_y[idx], meta=meta)


def uses_fixed_views(p: DistillParams) -> bool:
    return p.augment != "none" and p.teacher_mode != "online"


def student_views(p: DistillParams, data: DatasetSplits, device: torch.device) -> BatchViews:
    """What the student sees each epoch. The no-teacher control (same ``teacher_mode``) sees the
    same views as the distilled student."""
    aug = geometric_of(p, data.mean, data.std)
    if not aug.active:
        return PlainViews()
    if p.teacher_mode == "online":
        return RandomViews(aug, p.seed, device)
    params = view_params(aug, len(data.train_y), data.input_shape, p.teacher_views, p.view_seed)
    order = "cycle" if p.teacher_mode == "cached" else "sampled"
    return FixedViews(aug, params, p.teacher_views, order, p.seed, device)


def views_recipe(p: DistillParams) -> dict[str, Any]:
    return {"teacher": teacher_recipe(p), "outputs": "view_logits", "augment": geometric_of(p).recipe(),
            "views": p.teacher_views, "view_seed": p.view_seed,
            **({"train_set": p.synthetic.train_set(teacher=False)} if student_set_differs(p) else {})}


def cached_view_logits(p: DistillParams, ctx: TrialContext, entry, data, device: torch.device) -> torch.Tensor:
    """The teacher's logits for the K fixed views of every training image, (K, N, classes),
    computed once per (teacher, augmentation, K, view_seed) and shared by every trial."""
    def build(out_dir: str) -> dict[str, Any]:
        aug = geometric_of(p, data.mean, data.std)
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
        return OnlineTeacher(t_model.to(device), train_bn=p.teacher_bn == "train"), context
    if uses_fixed_views(p):
        return CachedTeacher(cached_view_logits(p, ctx, entry, data, device)), context
    features = cached_teacher_features(p, ctx, entry, data, device) if wants_features else None
    if features is not None:
        context["teacher_dim"] = features.shape[1]
    if student_set_differs(p):
        logits = cached_student_set_logits(p, ctx, teacher_recipe(p),
                                           lambda: load_teacher_model(p.teacher, entry, data, data.train_x.device),
                                           data, device)
    else:
        logits = torch.load(entry.file("train_logits.pt"), map_location=device)
    return CachedTeacher(logits, features), context


def build_student(p: DistillParams, data: DatasetSplits, entry, selcl_entry=None) -> Classifier:
    """The student per ``student_init``, reading inputs normalised as ``data`` is. ``selcl``: the
    student's Sel-CL stage weights with a fresh head (the authors' ``ReInitializeClassif``)."""
    init = "random" if p.student_init == "selcl" else p.student_init
    student = init_student(p.student, p.student_kwargs, init, p.weight_selection,
                           num_classes=data.num_classes, input_shape=data.input_shape,
                           teacher=lambda: load_teacher_model(p.teacher, entry, data, torch.device("cpu")))
    if selcl_entry is not None:
        state = torch.load(selcl_entry.file("model.pt"), map_location="cpu")
        head = head_state_keys(student)
        student.load_state_dict({k: v for k, v in state.items() if k not in head}, strict=False)
    student.adapt_input(data.mean, data.std)
    return student


def optim_config(p: DistillParams) -> OptimConfig:
    return OptimConfig(epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, optimizer=p.optimizer,
                       weight_decay=p.weight_decay, momentum=p.momentum, schedule=p.schedule,
                       warmup_epochs=p.warmup_epochs, compile=p.compile, cuda_graphs=p.cuda_graphs,
                       ema_decay=p.ema_decay, bootstrap_beta=p.bootstrap_beta, bootstrap_start=p.bootstrap_start,
                       **p.recipe_fields())


def static_metrics(p: DistillParams, entry, data: DatasetSplits, selcl_entry=None) -> dict[str, Any]:
    selcl = {f"selcl_{k}": selcl_entry.meta[k] for k in ("selected", "selected_precision", "clean_recall")
             if selcl_entry is not None and k in selcl_entry.meta}
    return {"teacher_test_acc": entry.meta["test_acc"], "teacher_val_acc": entry.meta["val_acc"],
            **({"label_noise_rate": data.meta["label_noise"]["realised_rate"]} if p.label_noise.active else {}),
            **selcl}


def student_and_loss(p: DistillParams, data: DatasetSplits, entry, teacher_context: dict[str, Any],
                     selcl_entry=None):
    """The student and its loss, from ``p.seed`` alone: seeded here, so the init is the same
    whatever ran before (an online teacher's construction draws from the global generator), for
    every loss, the no-teacher control, and each member of a fused trial."""
    seed_everything(p.seed)
    student = build_student(p, data, entry, selcl_entry)
    # Built after the student, so a loss's own random init (projectors, memory banks) leaves the
    # student's init the same for every loss, the no-teacher control included.
    loss_fn = create_loss(p.loss, p.loss_params, num_classes=data.num_classes, student_dim=student.num_features,
                          num_samples=len(data.train_y), train_labels=data.train_y, **teacher_context)
    return student, loss_fn


def run_student(p: DistillParams, session: Session, ctx: TrialContext) -> dict[str, Any]:
    """One student's distill trial (a fused one is :func:`trainables.distill.fused.run_distill_fused`;
    the trainable's entry, :func:`trainables.distill.trainable.run_distill`, picks)."""
    device = session.device
    entry = load_teacher(p, ctx)
    selcl_entry = load_student_selcl(p, ctx) if p.student_init == "selcl" else None
    data = load_data(p, ctx).to(device)
    seed_everything(p.seed)
    teacher, teacher_context = teacher_signal(p, ctx, entry, data, loss_class(p.loss), device)
    if selcl_entry is not None:
        selected = torch.load(selcl_entry.file("selected.pt"), map_location=device)
        data = selected_subset(data, selected)
        if isinstance(teacher, CachedTeacher):  # cached on the whole training set: the same cut
            idx = selected.nonzero().squeeze(1)
            feats = teacher.train_features
            teacher = CachedTeacher(teacher.train_logits[idx], None if feats is None else feats[idx])
    student, loss_fn = student_and_loss(p, data, entry, teacher_context, selcl_entry)
    return train_classifier(
        model=student, data=data, loss_fn=loss_fn, session=session, seed=p.seed, teacher=teacher,
        checkpoint_every=ctx.checkpoint_every, views=student_views(p, data, device),
        batch_augment=batch_augment_of(p, data.mean, data.std, data.num_classes, p.seed),
        static_metrics=static_metrics(p, entry, data, selcl_entry),
        epoch_hook=p.fewshot and fewshot_hook(p.fewshot, data, p.epochs, p.loss, p.loss_params, device, seed=p.seed,
                                              teacher=lambda: load_teacher_model(p.teacher, entry, data, device)),
        optim=optim_config(p))
