"""``student_init``: how the student's weights start.

* ``random`` (default): the architecture's own initialisation.
* ``pretrained``: the library's pretrained weights with a fresh head (hub models only).
* ``weight_selection``: weights selected from a larger model of the same family
  (:mod:`trainables.init.weight_selection`); the source is the trained teacher (``source:
  teacher``) or any model name with its kwargs (``pretrained: true`` or ``checkpoint: …``).
* ``selcl``: the student architecture's own Sel-CL stage on the noisy training labels, with a
  fresh head, trained on the examples that stage selected (the ``distill`` trainable runs the stage,
  with its ``selcl`` recipe, and builds the student from it: :mod:`trainables.distill.loop`).
* a path to a ``.pt``/``.pth``/``.safetensors`` file: those weights (head kept fresh when its
  shape differs).

A student whose weights come from elsewhere expects that source's input normalisation; the
caller converts the data's to it (:meth:`Classifier.adapt_input`).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from pydantic import Field, field_validator

from trainables.core.config import StrictModel
from trainables.core.registry import kwargs_validator
from trainables.init.weight_selection import SelectionMethod, apply_weight_selection
from trainables.models import Classifier, check_model_kwargs, check_model_name, create_model, supports_pretrained
from trainables.models.checkpoint import check_checkpoint_path, load_checkpoint

STUDENT_INIT_KEYWORDS = ("random", "pretrained", "weight_selection", "selcl")


def _check_source(source: str, kwargs: dict[str, Any]) -> None:
    if source != "teacher":
        check_model_kwargs(source, kwargs)
    elif kwargs:
        raise ValueError("the teacher is built by teacher.*; source_kwargs are for a source named by its model")


class WeightSelectionConfig(StrictModel):
    """Where weight selection takes its weights from, and how it picks them."""

    source: str = Field("teacher", description="'teacher' (the trained teacher) or a model name")
    source_kwargs: dict[str, Any] = Field(default_factory=dict,
                                          description="kwargs of the source model: pretrained, checkpoint, …")
    method: SelectionMethod = "uniform"
    seed: int = Field(0, ge=0, description="seed of the 'random' method's index sets")
    skip: list[str] = Field(default_factory=lambda: ["head"], description="keys containing these are not copied")

    @field_validator("source")
    @classmethod
    def _source_is_a_model(cls, v: str) -> str:
        return v if v == "teacher" else check_model_name(v)

    _source_kwargs_fit = kwargs_validator("source", "source_kwargs", _check_source)


def check_student_init(value: str, student: str, student_kwargs: dict[str, Any]) -> str:
    if value == "pretrained" and not supports_pretrained(student):
        raise ValueError(f"student_init: pretrained needs a model with pretrained weights (timm:/tv: names, "
                         f"aliases such as vit_tiny); {student!r} has none")
    if value not in STUDENT_INIT_KEYWORDS:
        try:
            check_checkpoint_path(value)
        except ValueError as exc:
            raise ValueError(f"student_init must be one of {', '.join(STUDENT_INIT_KEYWORDS)} or a checkpoint "
                             f"file: {exc}") from None
    if value != "random" and ("pretrained" in student_kwargs or "checkpoint" in student_kwargs):
        raise ValueError(f"student_init: {value} and student_kwargs.pretrained/checkpoint both set the weights; "
                         f"use one")
    return value


def init_student(name: str, kwargs: dict[str, Any], init: str, selection: WeightSelectionConfig, *,
                 num_classes: int, input_shape: tuple[int, ...],
                 teacher: Callable[[], Classifier] | None = None) -> Classifier:
    """Build the student. ``teacher`` returns the trained teacher (for ``source: teacher``)."""
    if init == "selcl":
        raise ValueError("student_init selcl: its weights come from the distill trainable's Sel-CL stage; "
                         "build the student with init random and load them")
    if init == "pretrained":
        return create_model(name, num_classes=num_classes, input_shape=input_shape, pretrained=True, **kwargs)
    student = create_model(name, num_classes=num_classes, input_shape=input_shape, **kwargs)
    if init == "random":
        return student
    if init != "weight_selection":
        load_checkpoint(student, init)
        return student
    # The source's random init would shift the global RNG and with it everything after; keep the
    # run identical to one without weight selection up to the weights themselves.
    with torch.random.fork_rng(devices=[]):
        if selection.source == "teacher":
            if teacher is None:
                raise ValueError("weight_selection from the teacher needs a trained teacher")
            source = teacher()
        else:
            source = create_model(selection.source, num_classes=num_classes, input_shape=input_shape,
                                  **selection.source_kwargs)
    apply_weight_selection(student, source.state_dict(), selection.method, selection.seed, tuple(selection.skip))
    student.input_norm = source.input_norm
    return student
