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
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ValidationError
from torch import nn

from trainables.losses.base import DistillLoss, LossInputs, LossParams
from trainables.core.config import first_problem
from trainables.core.registry import Registry, scan

LossInterface = Literal["classifier", "multicrop"]


@dataclass(frozen=True)
class LossEntry:
    cls: type[nn.Module]
    params: type[LossParams]
    interface: LossInterface


LOSSES: Registry[LossEntry] = Registry("loss", scan("trainables.losses"), plural="losses")


def loss_names(interface: LossInterface | None = None) -> list[str]:
    return [n for n in LOSSES.names() if interface is None or LOSSES.get(n).interface == interface]


def loss_name_type(interface: LossInterface):
    """A pydantic field type: the name of a registered loss with the given interface."""

    def check(name: str) -> str:
        LOSSES.check(name)
        entry = LOSSES.get(name)
        if entry.interface != interface:
            raise ValueError(f"loss {name!r} takes {entry.interface} inputs and cannot be used here; "
                             f"{interface} losses: {', '.join(loss_names(interface))}")
        return name

    return Annotated[str, AfterValidator(check)]


# The losses the classifier loop (``distill`` and friends) can drive.
LossName = loss_name_type("classifier")


def register_loss(name: str, params: type[LossParams], interface: LossInterface = "classifier"):
    def wrap(cls: type[nn.Module]):
        LOSSES.register(name, LossEntry(cls, params, interface))
        cls.registry_name = name
        return cls

    return wrap


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
    validated = params if isinstance(params, entry.params) else entry.params.model_validate(params or {})
    return entry.cls(validated, **context)


__all__ = ["LOSSES", "DistillLoss", "LossEntry", "LossInputs", "LossInterface", "LossName", "LossParams",
           "check_loss_params", "create_loss", "loss_class", "loss_name_type", "loss_names", "loss_params_model",
           "register_loss", "validate_loss_params"]
