"""Loss registry: one file per loss, each registering a loss module together with a pydantic
model of its hyperparameters, so a search space's ``loss_params`` are validated (unknown keys, bad
ranges) before any trial starts.

Every loss also names the *interface* it consumes, so a trainable can only select losses its loop
can feed: ``classifier`` losses take :class:`LossInputs` (student/teacher logits, labels, features)
and are what ``distill`` uses; ``multicrop`` losses (``dino``) take per-crop student and teacher
head outputs and belong to self-distillation trainables.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from torch import nn

from trainables.core.config import first_problem
from trainables.core.registry import Entry, Registry, UnknownKeywords, kwargs_problem, scan
from trainables.losses.base import DistillLoss, LossInputs, LossParams

LossInterface = Literal["classifier", "multicrop"]


@dataclass(frozen=True)
class LossEntry(Entry):
    """A loss module class (``obj``), its hyperparameter model (``params``, required) and the
    inputs it consumes (``interface``)."""

    interface: LossInterface = "classifier"

    def __post_init__(self):
        if self.params is None:
            raise TypeError(f"register_loss({self.name!r}): a loss needs params= (a LossParams model of its "
                            f"hyperparameters)")
        self.obj.registry_name = self.name

    @property
    def cls(self) -> type[nn.Module]:
        return self.obj


LOSSES: Registry[LossEntry] = Registry("loss", scan("trainables.losses"), record=LossEntry, plural="losses",
                                       interface="takes {} inputs")
register_loss = LOSSES.register


def loss_names(interface: LossInterface | None = None) -> list[str]:
    return LOSSES.names() if interface is None else LOSSES.names(interface=interface)


def loss_name_type(interface: LossInterface):
    """A pydantic field type: the name of a registered loss with the given interface."""
    return LOSSES.name_type(interface)


# The losses the classifier loop (``distill`` and friends) can drive.
LossName = loss_name_type("classifier")


def loss_class(name: str) -> type[nn.Module]:
    return LOSSES.get(name).cls


def loss_params_model(name: str) -> type[LossParams]:
    return LOSSES.get(name).params


def validate_loss_params(name: str, params: dict[str, Any] | None) -> LossParams:
    return loss_params_model(name).model_validate(params or {})


def check_loss_params(name: str, params: dict[str, Any] | None, prefix: str = "loss_params") -> None:
    """Validate ``params`` for loss ``name`` inside another model's validator: raises a ValueError
    whose message starts with the offending dotted key, e.g. ``loss_params.temperature: ...``."""
    try:
        LOSSES.check_kwargs(name, params or {})
    except UnknownKeywords as exc:
        raise kwargs_problem(prefix, exc) from None
    try:
        validate_loss_params(name, params)
    except ValidationError as exc:
        located = bool(exc.errors()[0]["loc"])
        raise ValueError(first_problem(exc, prefix) + (f" for loss {name!r}" if located else "")) from None


def create_loss(name: str, params: dict[str, Any] | BaseModel | None = None, **context: Any) -> nn.Module:
    """Build a loss from its searchable ``params`` and the trainable's non-searchable ``context``.

    Context keys a loss may read: ``num_classes``, ``student_dim`` and ``teacher_dim`` (penultimate
    feature sizes), ``num_samples`` and ``train_labels`` (the training set, for memory banks),
    ``teacher_head`` (the frozen teacher classifier), ``out_dim`` (multi-crop head size). Context
    never overlaps the params: a shape or a dataset is not a hyperparameter to search.
    """
    entry = LOSSES.get(name)
    clash = sorted(set(context) & set(entry.params.model_fields))
    if clash:
        raise ValueError(f"loss {name!r}: {', '.join(clash)} are loss parameters, not trainable context")
    if not isinstance(params, BaseModel):
        LOSSES.check_kwargs(name, params or {})
    if not isinstance(params, entry.params):
        params = entry.params.model_validate(params or {})
    return entry.obj(params, **context)


__all__ = ["LOSSES", "DistillLoss", "LossEntry", "LossInputs", "LossInterface", "LossName", "LossParams",
           "check_loss_params", "create_loss", "loss_class", "loss_name_type", "loss_names", "loss_params_model",
           "register_loss", "validate_loss_params"]
