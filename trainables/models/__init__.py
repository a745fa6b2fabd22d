"""Model registry, in the style of timm's ``create_model``.

Every model is a :class:`Classifier`: ``model(x)`` returns logits and
``model(x, return_features=True)`` returns ``(logits, penultimate_features)``, which is what the
feature-based distillation losses need. Calling through ``forward`` (rather than a separate
method) keeps DistributedDataParallel's gradient hooks in play for both paths.

Names are registered ones (``model_names()``: the CIFAR families, the small test models and
aliases such as ``vit_tiny``) or ``timm:<name>`` / ``tv:<name>`` for any timm or torchvision model.
"""
from __future__ import annotations

import functools
from typing import Annotated, Any, Callable

from pydantic import AfterValidator

from trainables.models.base import Classifier, Norm
from trainables.core.registry import Registry, scan


MODELS: Registry[Callable[..., Classifier]] = Registry("model", scan("trainables.models"))
register_model = MODELS.decorator
model_names = MODELS.names
INPUT_NORM_CHOICES = ("auto", "data", "pretrained")


def check_model_name(name: str) -> str:
    from trainables.models import hub

    if name in MODELS:
        return name
    if hub.is_prefixed(name):
        problem = hub.check_prefixed_name(name)
        if problem is None:
            return name
        raise ValueError(f"unknown model {name!r}: {problem}")
    raise ValueError(f"unknown model {name!r}; known models: {', '.join(model_names())}, or any timm / "
                     f"torchvision model as {hub.TIMM_PREFIX}<name> / {hub.TV_PREFIX}<name>")


ModelName = Annotated[str, AfterValidator(check_model_name)]


def is_known_model(name: str) -> bool:
    try:
        check_model_name(name)
    except ValueError:
        return False
    return True


def _factory(name: str) -> Callable[..., Classifier]:
    from trainables.models import hub

    if name not in MODELS and hub.is_prefixed(name):
        check_model_name(name)
        return functools.partial(hub.create_prefixed, name)
    return MODELS.get(name)


def _resolve_norm(model: Classifier, name: str, input_norm: Any) -> Norm | None:
    if input_norm == "auto":
        return model.input_norm
    if input_norm == "data":
        return None
    if input_norm == "pretrained":
        norm = getattr(model, "pretrained_norm", None)
        if norm is None:
            raise ValueError(f"model {name!r} has no known pretrained input normalisation; give input_norm as "
                             f"{{mean: [...], std: [...]}}")
        return norm
    if isinstance(input_norm, dict) and set(input_norm) == {"mean", "std"}:
        mean, std = input_norm["mean"], input_norm["std"]
    elif isinstance(input_norm, (list, tuple)) and len(input_norm) == 2:
        mean, std = input_norm
    else:
        raise ValueError(f"input_norm must be one of {', '.join(INPUT_NORM_CHOICES)} or {{mean: [...], std: [...]}}, "
                         f"got {input_norm!r}")
    mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if len(mean) != len(std) or any(s <= 0 for s in std):
        raise ValueError(f"input_norm needs as many means as positive stds, got {input_norm!r}")
    return mean, std


def _accepts_pretrained(factory) -> bool:
    return getattr(getattr(factory, "func", factory), "accepts_pretrained", False)


def supports_pretrained(name: str) -> bool:
    """Whether ``name`` can load library weights (``pretrained: true``)."""
    return _accepts_pretrained(_factory(name))


def create_model(name: str, *, num_classes: int, input_shape: tuple[int, ...], checkpoint: str | None = None,
                 input_norm: Any = "auto", **kwargs) -> Classifier:
    """Build a model by name.

    Keyword arguments understood for every model: ``checkpoint`` (a weights file, see
    :mod:`trainables.models.checkpoint`), ``input_norm`` (``auto``: what the pretrained weights
    expect, else the data's; ``data``; ``pretrained``: the library weights' statistics even when the
    weights come from ``checkpoint``; or ``{mean, std}``), and ``pretrained`` for hub models. The
    rest goes to the model's factory.
    """
    factory = _factory(name)
    if kwargs.get("pretrained") and not _accepts_pretrained(factory):
        raise ValueError(f"model {name!r} has no pretrained weights; train it, or pass checkpoint: /path/to/weights.pt")
    if not _accepts_pretrained(factory):
        kwargs.pop("pretrained", None)
    model = factory(num_classes=num_classes, input_shape=tuple(input_shape), **kwargs)
    if checkpoint:
        from trainables.models.checkpoint import load_checkpoint

        load_checkpoint(model, checkpoint)
    model.input_norm = _resolve_norm(model, name, input_norm)
    return model


__all__ = ["MODELS", "Classifier", "ModelName", "check_model_name", "create_model", "is_known_model", "model_names",
           "register_model", "supports_pretrained"]
