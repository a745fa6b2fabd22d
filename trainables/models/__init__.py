"""Model registry, in the style of timm's ``create_model``.

Every model is a :class:`Classifier`: ``model(x)`` returns logits and
``model(x, return_features=True)`` returns ``(logits, penultimate_features)``, which is what the
feature-based distillation losses need. Calling through ``forward`` (rather than a separate
method) keeps DistributedDataParallel's gradient hooks in play for both paths.
"""
from __future__ import annotations

from typing import Callable

from trainables.models.base import Classifier
from trainables.registry_base import Registry


def _import_builtin() -> None:
    from trainables.models import mlp, small_cnn  # noqa: F401


MODELS: Registry[Callable[..., Classifier]] = Registry("model", _import_builtin)
register_model = MODELS.decorator
model_names = MODELS.names
ModelName = MODELS.name_type()


def is_known_model(name: str) -> bool:
    return name in MODELS


def create_model(name: str, *, num_classes: int, input_shape: tuple[int, ...], **kwargs) -> Classifier:
    return MODELS.get(name)(num_classes=num_classes, input_shape=tuple(input_shape), **kwargs)


__all__ = ["MODELS", "Classifier", "ModelName", "create_model", "is_known_model", "model_names", "register_model"]
