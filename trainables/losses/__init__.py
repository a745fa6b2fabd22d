"""Loss registry: one file per loss, each registering a :class:`DistillLoss` subclass together
with a pydantic model of its hyperparameters, so a search space's ``loss_params`` are validated
(unknown keys, bad ranges) before any trial starts.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from trainables.losses.base import DistillLoss, LossInputs, LossParams
from trainables.registry_base import Registry


def _import_builtin() -> None:
    from trainables.losses import auxconf, ce, kd  # noqa: F401


LOSSES: Registry[tuple[type[DistillLoss], type[LossParams]]] = Registry("loss", _import_builtin, plural="losses")
loss_names = LOSSES.names
LossName = LOSSES.name_type()


def register_loss(name: str, params: type[LossParams]):
    def wrap(cls: type[DistillLoss]):
        LOSSES.register(name, (cls, params))
        cls.registry_name = name
        return cls

    return wrap


def loss_params_model(name: str) -> type[LossParams]:
    return LOSSES.get(name)[1]


def validate_loss_params(name: str, params: dict[str, Any] | None) -> LossParams:
    return loss_params_model(name).model_validate(params or {})


def check_loss_params(name: str, params: dict[str, Any] | None, prefix: str = "loss_params") -> None:
    """Validate ``params`` for loss ``name`` inside another model's validator: raises a ValueError
    whose message starts with the offending dotted key, e.g. ``loss_params.temperature: ...``."""
    try:
        validate_loss_params(name, params)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        raise ValueError(f"{prefix}.{loc}: {msg} for loss {name!r}" if loc else f"{prefix}: {msg}") from None


def create_loss(name: str, params: dict[str, Any] | BaseModel | None = None, **context: Any) -> DistillLoss:
    """Build a loss. ``context`` carries shapes a loss may need to build heads
    (``num_classes``, ``student_dim``, ``teacher_dim``, ``num_samples``)."""
    cls, params_model = LOSSES.get(name)
    validated = params if isinstance(params, params_model) else params_model.model_validate(params or {})
    return cls(validated, **context)


__all__ = ["LOSSES", "DistillLoss", "LossInputs", "LossName", "LossParams", "check_loss_params", "create_loss",
           "loss_names", "loss_params_model", "register_loss", "validate_loss_params"]
