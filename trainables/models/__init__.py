"""Model registry, in the style of timm's ``create_model``.

Every model is a :class:`Classifier`: ``model(x)`` returns logits and
``model(x, return_features=True)`` returns ``(logits, penultimate_features)``, which is what the
feature-based distillation losses need. Calling through ``forward`` (rather than a separate
method) keeps DistributedDataParallel's gradient hooks in play for both paths.
"""
from __future__ import annotations

from typing import Annotated, Callable

from pydantic import AfterValidator

from trainables.models.base import Classifier

_MODELS: dict[str, Callable[..., Classifier]] = {}


def register_model(name: str):
    def wrap(fn: Callable[..., Classifier]):
        if name in _MODELS:
            raise ValueError(f"model {name!r} registered twice")
        _MODELS[name] = fn
        return fn

    return wrap


def model_names() -> list[str]:
    _import_builtin()
    return sorted(_MODELS)


def is_known_model(name: str) -> bool:
    return name in model_names()


def _known_model(name: str) -> str:
    if not is_known_model(name):
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(model_names())}")
    return name


# A pydantic field type: a model name that must be in the registry.
ModelName = Annotated[str, AfterValidator(_known_model)]


def create_model(name: str, *, num_classes: int, input_shape: tuple[int, ...], **kwargs) -> Classifier:
    _import_builtin()
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(sorted(_MODELS))}")
    return _MODELS[name](num_classes=num_classes, input_shape=tuple(input_shape), **kwargs)


def _import_builtin() -> None:
    from trainables.models import mlp, small_cnn  # noqa: F401


__all__ = ["Classifier", "ModelName", "create_model", "is_known_model", "model_names", "register_model"]
