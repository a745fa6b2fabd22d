"""Model registry, in the style of timm's ``create_model``.

Every model is a :class:`Classifier`: ``model(x)`` returns logits and
``model(x, return_features=True)`` returns ``(logits, penultimate_features)``, which is what the
feature-based distillation losses need. Calling through ``forward`` (rather than a separate
method) keeps DistributedDataParallel's gradient hooks in play for both paths.

Names are registered ones (``model_names()``: the CIFAR families, the small test models and
aliases such as ``vit_tiny``) or ``timm:<name>`` / ``tv:<name>`` for any timm or torchvision model.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Callable, Iterable, Mapping

from trainables.core.registry import Entry, Registry, scan
from trainables.models.base import Classifier, Norm


@dataclass(frozen=True)
class ModelEntry(Entry):
    """A model factory (``obj``, called with ``num_classes`` and ``input_shape`` and the model's own
    keyword arguments) and whether it can load library weights (``pretrained: true``)."""

    pretrained: bool = False
    # timm's layer groups (``group_matcher``) are there: layer-wise lr decay applies.
    layer_groups: bool = False
    # The pre-flight of ``pretrained: true`` (:func:`weights_problem`): called like ``obj`` with the
    # user's keyword arguments, it raises when the weights are neither cached nor downloadable here.
    weights: Callable[..., Any] | None = None

    def resolve(self, name: str) -> "ModelEntry":
        entry = super().resolve(name)  # a provider's obj takes the rest of the name first; so does its check
        return replace(entry, weights=partial(self.weights, name[len(self.name):]) if self.weights else None)


MODELS: Registry[ModelEntry] = Registry("model", scan("trainables.models"), record=ModelEntry,
                                        fixed=("num_classes", "input_shape"))
register_model = MODELS.register
model_names = MODELS.names
check_model_name = MODELS.check
ModelName = MODELS.name_type()
INPUT_NORM_CHOICES = ("auto", "data", "pretrained")
CREATE_MODEL_KWARGS = ("checkpoint", "input_norm")  # create_model's own, for every model


def is_known_model(name: str) -> bool:
    return name in MODELS


def supports_pretrained(name: str) -> bool:
    """Whether ``name`` can load library weights (``pretrained: true``)."""
    return MODELS.get(name).pretrained


def supports_layer_decay(name: str) -> bool:
    """Whether ``name`` has layer groups for layer-wise lr decay (timm models)."""
    return MODELS.get(name).layer_groups


def _factory_kwargs(name: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``kwargs`` as the factory of ``name`` takes them: ``pretrained`` only where there are
    weights to load (``pretrained: false`` is accepted, and dropped, for every model)."""
    kwargs = dict(kwargs)
    if not MODELS.get(name).pretrained and "pretrained" in kwargs:
        if kwargs.pop("pretrained"):
            raise ValueError(f"model {name!r} has no pretrained weights; train it, or pass checkpoint: "
                             f"/path/to/weights.pt")
    return kwargs


def check_model_kwargs(name: str, kwargs: Mapping[str, Any]) -> None:
    """Raise ValueError unless ``kwargs`` are keyword arguments ``create_model(name, ...)`` takes:
    the factory's parameters and :data:`CREATE_MODEL_KWARGS`. A ``timm:``/``tv:`` model (or an
    alias of one) hands unknown keywords to the library, and the library is asked whether it takes
    them, on the meta device (:mod:`trainables.models.hub`)."""
    MODELS.check_kwargs(name, _factory_kwargs(name, kwargs), extra=CREATE_MODEL_KWARGS)


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


def predicts_with_untrained_head(pretrained: bool, kwargs: dict[str, Any]) -> str | None:
    """Why a model used for its *predictions* would predict noise, or None: library weights
    (``pretrained``) whose ``head`` was left at its default, ``new``, which puts a freshly
    initialised classifier on the pretrained body (the bug that voided a seed space's weak labels).
    Writing ``head: new`` explicitly opts in to that untrained classifier."""
    if not pretrained or "head" in kwargs:
        return None
    return ("with pretrained weights and no head given, the classifier is new and untrained, so its predictions "
            "are noise; set head: pretrained (the library's own classifier and label space), or head: new to "
            "opt in to an untrained one")


def weights_problem(name: str, kwargs: Mapping[str, Any]) -> str | None:
    """Why the library weights ``create_model(name, **kwargs)`` would load (``pretrained: true``)
    cannot be had on this machine: neither in its cache nor downloadable (offline, or the host
    unreachable). ``None`` when they can, or none are needed. Builds nothing, downloads nothing:
    the pre-flight's check (``check_available``), so that a sweep does not fail in its trials."""
    if not kwargs.get("pretrained") or name not in MODELS:
        return None
    entry = MODELS.get(name)
    if entry.weights is None:
        return None
    try:
        entry.weights(**kwargs)
    except (RuntimeError, ValueError) as exc:  # PretrainedUnavailable (hub.py), an unknown weights name
        return str(exc)
    return None


def weights_issues(sources: Iterable[tuple[str, str, Mapping[str, Any]]]) -> list[tuple[str, str]]:
    """For a trainable's ``check_available``: (key, problem) for each (key, model name, model
    kwargs) a trial would build whose weights are missing here: library weights
    (:func:`weights_problem`) or a ``checkpoint`` file."""
    from trainables.models.checkpoint import check_checkpoint_path

    issues = []
    for key, name, kwargs in sources:
        problem = weights_problem(name, kwargs)
        if problem is None and isinstance(kwargs.get("checkpoint"), str):
            try:
                check_checkpoint_path(kwargs["checkpoint"])
            except ValueError as exc:
                problem = str(exc)
        if problem is not None:
            issues.append((key, problem))
    return issues


def create_model(name: str, *, num_classes: int, input_shape: tuple[int, ...], checkpoint: str | None = None,
                 input_norm: Any = "auto", **kwargs) -> Classifier:
    """Build a model by name.

    Keyword arguments understood for every model: ``checkpoint`` (a weights file, see
    :mod:`trainables.models.checkpoint`), ``input_norm`` (``auto``: what the pretrained weights
    expect, else the data's; ``data``; ``pretrained``: the library weights' statistics even when the
    weights come from ``checkpoint``; or ``{mean, std}``), and ``pretrained`` for hub models. The
    rest goes to the model's factory.
    """
    check_model_kwargs(name, kwargs)
    model = MODELS.get(name).obj(num_classes=num_classes, input_shape=tuple(input_shape),
                                 **_factory_kwargs(name, kwargs))
    model.registry_name = name
    if checkpoint:
        from trainables.models.checkpoint import load_checkpoint

        load_checkpoint(model, checkpoint)
    model.input_norm = _resolve_norm(model, name, input_norm)
    return model


__all__ = ["MODELS", "Classifier", "ModelEntry", "ModelName", "check_model_kwargs", "check_model_name", "create_model",
           "is_known_model", "model_names", "predicts_with_untrained_head", "register_model", "supports_layer_decay",
           "supports_pretrained", "weights_issues", "weights_problem"]
