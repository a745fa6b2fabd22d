"""The ``distill`` family's driver-side steps, before any trial: the teacher trained once up front,
and the check that the dataset is there."""
from __future__ import annotations

import functools
import json
from typing import Any, Iterator

from trainables.data import dataset_issues, dataset_problem, load_dataset
from trainables.distill.loop import load_teacher
from trainables.data.generated import GenerationRecipe, PipelineMissing, resolve_pipeline
from trainables.distill.params import DistillParams
from trainables.losses import loss_class, validate_loss_params
from trainables.models import create_model, weights_issues
from trainables.training.fused import device_memory_bytes, fusion_problem, member_bytes
from trainables.distill.synthetic import generated_set
from trainables.runtime.trainable import TrialContext
from trainables.training.dataset_params import prepare_fixed_dataset


def prepare_distill(fixed: dict[str, Any], searched: set[str], ctx: TrialContext) -> dict[str, Any] | None:
    """Train the teacher once, up front, unless its recipe is itself searched (then the first
    trial that needs each recipe builds it, under the cache's lock)."""
    prepare_fixed_dataset(DistillParams, fixed, searched)
    info = prepare_generated(fixed, searched, ctx)
    # label_noise changes the teacher's training labels, so it is part of its recipe too.
    # A Sel-CL teacher without a recipe of its own takes the student's selcl: searched, it varies too.
    teacher_keys = {"dataset", "split_seed", "label_noise"} | {
        k for k in searched if k == "teacher" or k.startswith(("teacher.", "dataset_kwargs", "label_noise.", "selcl."))
        or k in ("synthetic", "selcl") or k.startswith(TEACHER_SET_KEYS)}
    if teacher_keys & searched:
        return info or None
    keys = ("dataset", "dataset_kwargs", "split_seed", "teacher", "label_noise", "synthetic")
    if (fixed.get("teacher") or {}).get("init") == "selcl":
        keys += ("selcl",)  # the teacher's recipe when it names none
    defaults = DistillParams.model_validate({k: v for k, v in fixed.items() if k in keys})
    entry = load_teacher(defaults, ctx)
    return {**info, "teacher_cache_id": entry.key, "teacher_cache_hit": entry.hit, **{f"teacher_{k}": v
            for k, v in entry.meta.items() if k in ("val_acc", "test_acc")}}


# Searching any of these makes the teacher's training set (and so the teacher) differ per trial.
TEACHER_SET_KEYS = ("synthetic.generation", "synthetic.teacher_synset_size", "synthetic.teacher_real")


def prepare_generated(fixed: dict[str, Any], searched: set[str], ctx: TrialContext) -> dict[str, Any]:
    """Generate the synthetic images once, up front, unless their recipe is searched (then the
    first trial that needs each recipe generates it, under the cache's lock)."""
    synthetic = fixed.get("synthetic") or {}
    generation = synthetic.get("generation")
    if generation is None or any(k == "synthetic" or k.startswith("synthetic.generation") for k in searched):
        return {}
    sizes = ("synthetic.synset_size", "synthetic.teacher_synset_size")
    if not any(k in searched for k in sizes) and not any(synthetic.get(k.split(".")[1]) for k in sizes):
        return {}  # a recipe that no model trains on: nothing to generate
    entry = generated_set(GenerationRecipe.model_validate(generation), ctx)
    return {"generated_images_id": entry.key, "generated_images_hit": entry.hit}


def check_distill_inputs(p: DistillParams) -> list[tuple[str, str]]:
    """Before Ray starts: the dataset must be on disk (or downloadable), the pretrained weights
    and checkpoints the teacher and student are built from cached (or downloadable), and the
    generation pipeline's weights too when a model trains on generated images."""
    issues = dataset_issues("dataset", p.dataset, **p.dataset_kwargs)
    issues += weights_issues(_weight_sources(p))
    s = p.synthetic
    if s.generation is not None and (s.uses(teacher=False) or s.uses(teacher=True)):
        try:
            resolve_pipeline(s.generation.pipeline)
        except PipelineMissing as exc:
            issues.append(("synthetic.generation.pipeline", str(exc).removeprefix("generation.pipeline: ")))
    if p.is_fused and not issues:
        problem = fused_memory_problem(p)
        if problem:
            issues.append(("vectorize", problem))
    if not issues:
        issues += selcl_memory_issues(p)
    return issues


def _weight_sources(p: DistillParams) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(key, model, kwargs) of every model a trial builds from weights made elsewhere. The teacher
    is always built (prepare_distill trains or loads it up front, whatever the loss)."""
    t = p.teacher
    yield "teacher.pretrained", t.model, {**t.model_kwargs, "pretrained": t.pretrained}
    if p.student_init == "pretrained":
        yield "student_init", p.student, {**p.student_kwargs, "pretrained": True}
    else:
        yield "student_kwargs", p.student, p.student_kwargs
    ws = p.weight_selection
    if p.student_init == "weight_selection" and ws.source != "teacher":
        yield "weight_selection.source_kwargs", ws.source, ws.source_kwargs


def selcl_memory_issues(p: DistillParams) -> list[tuple[str, str]]:
    """A Sel-CL stage whose pair memory cannot hold one step's push would fail at its first step.
    Judged when the data is on disk (its class count); otherwise the stage says so when it starts."""
    stages = [("selcl", p.selcl)] if p.student_init == "selcl" else []
    if p.teacher.init == "selcl":
        stages.append(("teacher.selcl", p.teacher.selcl))
    if not stages:
        return []
    if dataset_problem(p.dataset, **{**p.dataset_kwargs, **({"download": False} if "download" in p.dataset_kwargs
                                                         else {})}):
        return []  # not on disk yet: downloaded when the sweep prepares
    classes = _shape_of(p.dataset, json.dumps(p.dataset_kwargs, sort_keys=True), p.split_seed)[1]
    return [(f"{key}.queue_per_class", problem) for key, cfg in stages
            if (problem := cfg.memory_problem(classes))]


@functools.lru_cache(maxsize=16)
def _shape_of(dataset: str, kwargs: str, split_seed: int) -> tuple[tuple[int, ...], int, int]:
    data = load_dataset(dataset, seed=split_seed, **json.loads(kwargs))
    return tuple(data.input_shape), data.num_classes, len(data.train_y)


def fused_memory_problem(p: DistillParams) -> str | None:
    """A fused trial whose members cannot all fit the device (an estimate, before Ray starts):
    each member's student and its loss's own state (CRD's memory banks)."""
    shape, classes, n_train = _shape_of(p.dataset, json.dumps(p.dataset_kwargs, sort_keys=True), p.split_seed)
    model = create_model(p.student, num_classes=classes, input_shape=shape, **p.student_kwargs)
    budget, where = device_memory_bytes()
    loss_state = loss_class(p.loss).state_bytes(validate_loss_params(p.loss, p.loss_params), n_train, p.batch_size)
    per_member = member_bytes(model, shape, p.batch_size, p.optimizer) + loss_state
    return fusion_problem(p.members, per_member, budget, where, p.batch_size)
