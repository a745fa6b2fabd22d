"""timm and torchvision models behind the same ``create_model`` / :class:`Classifier` interface.

Names: ``timm:<timm name>`` (a pretrained tag may follow a dot: ``timm:vit_small_patch16_224.dino``)
and ``tv:<torchvision classification model>`` reach any model those libraries have; a few aliases
are registered under short names (``ALIASES``, ``dino_resnet50``).

Keyword arguments every hub model takes (besides ``num_classes`` and ``input_shape``):

* ``pretrained`` (bool): load the library's weights (timm: the tag's or the default tag's;
  torchvision: ``weights`` or ``DEFAULT``). No network and no local copy fails at once with
  :class:`PretrainedUnavailable`, which says where the weights come from and how to pass a file.
* ``head``: ``new`` (default) puts a fresh ``num_classes``-way classifier on the pretrained body;
  ``pretrained`` keeps the library's own classifier, so logits live in its label space (for
  example AlexNet's 1000 ImageNet classes) and ``num_classes`` is ignored.
* anything else is passed to ``timm.create_model`` / the torchvision builder (``drop_path_rate``,
  ``dropout``, ``img_size`` …). Whether the library takes it is checked when the search space is
  parsed, by building the library model on the meta device (no memory, no weights): an unknown
  keyword is an error there, naming it, rather than a TypeError in a trial.

``timm:`` and ``tv:`` are prefix providers of the model registry (:mod:`trainables.core.registry`),
and the aliases are entries of it, so names are checked, listed and built by the registry.

``in_chans`` and, for fixed-size timm models (ViTs), ``img_size`` follow ``input_shape``.
"""
from __future__ import annotations

import functools
import json
import os
import re
from typing import Any, Callable
from urllib.parse import urlparse

import torch
from torch import nn

from trainables.core.offline import offline_mode, reachable
from trainables.core.registry import UnknownKeywords
from trainables.models import register_model
from trainables.models.base import Classifier

TIMM_PREFIX = "timm:"
TV_PREFIX = "tv:"
HEAD_CHOICES = ("new", "pretrained")

# Short names the seed search spaces use -> the library model they stand for.
ALIASES: dict[str, str] = {
    "alexnet": "tv:alexnet",
    "resnet18": "tv:resnet18",
    "resnet50": "tv:resnet50",
    "vit_tiny": "timm:vit_tiny_patch16_224",
    "vit_small": "timm:vit_small_patch16_224",
    "vit_base": "timm:vit_base_patch16_224",
    "convnext_femto": "timm:convnext_femto",
    "convnext_tiny": "timm:convnext_tiny",
    "dino_vits16": "timm:vit_small_patch16_224.dino",
    "dino_vitb8": "timm:vit_base_patch8_224.dino",
}
# The weight-selection paper's ConvNeXt-F uses linear MLPs like ConvNeXt-T (timm's femto defaults to
# 1x1-conv MLPs), so that ConvNeXt-T -> ConvNeXt-F selection matches every tensor. timm's pretrained
# femto weights are conv-MLP ones, so the override only applies without ``pretrained``.
ALIAS_DEFAULTS: dict[str, dict[str, Any]] = {"convnext_femto": {"conv_mlp": False}}
DINO_RESNET50_URL = "https://dl.fbaipublicfiles.com/dino/dino_resnet50_pretrain/dino_resnet50_pretrain.pth"
IMAGENET_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class PretrainedUnavailable(RuntimeError):
    """Pretrained weights are neither cached locally nor downloadable (offline)."""


# --------------------------------------------------------------------------- name and keyword checks


def timm_name_problem(arch: str) -> str | None:
    """``None`` when timm has model ``arch`` (with its pretrained tag, if one follows a dot), else why not."""
    import timm

    base = arch.split(".", 1)[0]
    if not timm.is_model(base):
        close = timm.list_models(f"*{base[:6]}*")[:8]
        return f"timm has no model {base!r}" + (f" (similar: {', '.join(close)})" if close else "")
    if "." in arch and arch not in timm.list_pretrained(arch):
        tags = timm.list_pretrained(f"{base}.*")[:8]
        return f"timm has no pretrained tag {arch!r}" + (f" (known: {', '.join(tags)})" if tags else "")
    return None


def tv_name_problem(arch: str) -> str | None:
    """``None`` when torchvision has classification model ``arch``, else why not."""
    from torchvision import models as tvm

    if arch not in tvm.list_models(module=tvm):
        return f"torchvision has no classification model {arch!r}"
    return None


_REFUSALS: dict[str, str | None] = {}  # the library's complaint per (library, model, keywords)


def _refuse(library: str, arch: str, build: Callable[..., Any], what: str, kwargs: dict[str, Any],
            accepted: list[str]) -> None:
    """Ask the library whether it takes ``kwargs`` by building the model on the meta device (no
    memory, no weights): its TypeError about a keyword becomes :class:`UnknownKeywords`; anything
    else that goes wrong there shows when the model is really built."""
    key = json.dumps([library, arch, kwargs], sort_keys=True, default=repr)
    if key not in _REFUSALS:
        _REFUSALS[key] = None
        try:
            with torch.device("meta"):
                build(**kwargs)
        except TypeError as exc:
            if "keyword argument" in str(exc):
                _REFUSALS[key] = str(exc)
        except Exception:  # noqa: BLE001 - not a keyword problem: the real build will say
            pass
    refusal = _REFUSALS[key]
    if refusal:
        named = re.search(r"keyword argument '(\w+)'", refusal)
        raise UnknownKeywords(what, [named.group(1)] if named else kwargs, accepted,
                              more=f"or a keyword {library} takes ({refusal})")


def check_timm_kwargs(arch: str, what: str, kwargs: dict[str, Any], accepted: list[str]) -> None:
    """Raise UnknownKeywords if timm's model ``arch`` does not take ``kwargs``."""
    import timm

    base = arch.split(".", 1)[0]
    _refuse("timm", base, functools.partial(timm.create_model, base, pretrained=False), what, kwargs, accepted)


def check_tv_kwargs(arch: str, what: str, kwargs: dict[str, Any], accepted: list[str]) -> None:
    """Raise UnknownKeywords if torchvision's builder of ``arch`` does not take ``kwargs``."""
    from torchvision import models as tvm

    _refuse("torchvision", arch, functools.partial(tvm.get_model, arch, weights=None), what, kwargs, accepted)


# --------------------------------------------------------------------------- offline-safe weights


def _torch_hub_file(url: str) -> str:
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(url).path))


def _unavailable(model: str, source: str, looked_in: str, why: str) -> PretrainedUnavailable:
    return PretrainedUnavailable(
        f"model {model!r}: pretrained weights unavailable ({why}). They come from {source} and were not "
        f"found in {looked_in}. Either run once with network access to fill that cache, or download the "
        f"weights elsewhere and pass them as a file: model kwargs `pretrained: false, checkpoint: "
        f"/path/to/weights.safetensors` (or .pt/.pth; a state dict, or {{'model': ...}}/{{'state_dict': ...}}), "
        f"plus `input_norm: pretrained` so inputs are normalised as the weights expect.")


def ensure_weights_reachable(model: str, source: str, cached: bool, looked_in: str, host: str) -> None:
    """Fail fast (no retries, no hanging socket) when weights must be downloaded but cannot be."""
    if cached:
        return
    if offline_mode():
        raise _unavailable(model, source, looked_in, "offline mode is set (HF_HUB_OFFLINE / W2S_OFFLINE)")
    if not reachable(host):
        raise _unavailable(model, source, looked_in, f"{host} cannot be reached")


def _download_guard(model: str, source: str, looked_in: str, build: Callable[[], Any]) -> Any:
    try:
        return build()
    except OSError as exc:  # URLError, HTTP and hub errors are all OSErrors
        raise _unavailable(model, source, looked_in, f"download failed: {type(exc).__name__}: {exc}") from exc


def _timm_weights_location(arch: str) -> tuple[str, bool, str, str]:
    """(where the weights come from, whether they are cached, where we looked, host)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch)
    if cfg is None:
        raise PretrainedUnavailable(f"timm model {arch!r} has no pretrained weights")
    cfg = cfg.to_dict()
    if cfg.get("hf_hub_id"):
        from huggingface_hub import constants, try_to_load_from_cache

        repo = cfg["hf_hub_id"]
        names = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else [
            "model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        cached = any(isinstance(try_to_load_from_cache(repo, n), str) for n in names)
        host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
        return f"the Hugging Face Hub repo {repo}", cached, constants.HF_HUB_CACHE, host
    url = cfg.get("url") or ""
    if not url:
        raise PretrainedUnavailable(f"timm model {arch!r} names no weight source")
    path = _torch_hub_file(url)
    return url, os.path.exists(path), path, urlparse(url).hostname or url


def check_timm_weights(arch: str, display: str | None = None, /, **_: Any) -> tuple[str, str]:
    """Raise :class:`PretrainedUnavailable` unless timm's weights for ``arch`` are cached here or can
    be downloaded; else (where they come from, where the cache is). The model's ``weights`` check
    (the pre-flight) and its build share it. Takes the factory's arguments, and ignores the rest."""
    display = display or TIMM_PREFIX + arch
    source, cached, looked_in, host = _timm_weights_location(arch)
    ensure_weights_reachable(display, source, cached, looked_in, host)
    return source, looked_in


def check_tv_weights(arch: str, display: str | None = None, pretrained_url: str | None = None, /, *,
                     weights: str | None = None, **_: Any) -> str:
    """:func:`check_timm_weights` for a torchvision model (or a backbone-only ``pretrained_url``);
    returns the weights' URL."""
    display = display or TV_PREFIX + arch
    if pretrained_url is None:
        tv_weights = _tv_weights(arch, weights)
        if tv_weights is None:
            raise PretrainedUnavailable(f"torchvision model {display!r} has no pretrained weights")
    url = pretrained_url or tv_weights.url
    path = _torch_hub_file(url)
    ensure_weights_reachable(display, url, os.path.exists(path), path, urlparse(url).hostname or url)
    return url


# --------------------------------------------------------------------------- wrappers


class TimmClassifier(Classifier):
    """A timm model: features are timm's pre-logits (pooled, normed) vector."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.num_features = int(getattr(model, "head_hidden_size", model.num_features))

    @property
    def head(self) -> nn.Module:
        return self.model.get_classifier()

    def forward_features(self, x):
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)

    def forward_head(self, features):
        return self.model.get_classifier()(features)

    def layer_decay_module(self) -> nn.Module:
        """The module whose ``group_matcher`` orders its layers (timm's layer-decay helpers)."""
        return self.model

    def native_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A state dict in timm's own key names -> this wrapper's."""
        return {f"model.{k}": v for k, v in state.items()}


class TorchvisionClassifier(Classifier):
    """A torchvision model split at its last linear layer: ``body`` (with that layer replaced by
    an identity) gives the penultimate features, ``head`` is the layer itself."""

    def __init__(self, model: nn.Module, name: str):
        super().__init__()
        linears = [(path, m) for path, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(f"torchvision model {name!r} has no linear classifier to split off")
        self.head_path, head = linears[-1]
        model.set_submodule(self.head_path, nn.Identity())
        self.body = model
        self.head = head
        self.num_features = head.in_features

    def forward_features(self, x):
        return self.body(x)

    def native_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A state dict in torchvision's key names (``fc.weight`` …) -> this wrapper's."""
        prefix = self.head_path + "."
        return {("head." + k[len(prefix):]) if k.startswith(prefix) else f"body.{k}": v for k, v in state.items()}

    def replace_head(self, num_classes: int) -> None:
        self.head = nn.Linear(self.num_features, num_classes)


# --------------------------------------------------------------------------- builders


def _check_head(head: str) -> None:
    if head not in HEAD_CHOICES:
        raise ValueError(f"head must be one of {', '.join(HEAD_CHOICES)}, got {head!r}")


@register_model(TIMM_PREFIX, names=timm_name_problem, pretrained=True, weights=check_timm_weights, layer_groups=True,
                forwarded=check_timm_kwargs)
def create_timm(arch: str, display: str | None = None, defaults: dict[str, Any] | None = None, /, *,
                num_classes: int, input_shape: tuple[int, ...], pretrained: bool = False, head: str = "new",
                **kwargs) -> TimmClassifier:
    """``timm:<arch>``. Positional parameters are the registration's (an alias's name, and keyword
    ``defaults`` that apply without pretrained weights); keywords are the user's."""
    import timm
    from timm.models import get_pretrained_cfg

    _check_head(head)
    display = display or TIMM_PREFIX + arch
    if not pretrained:
        kwargs = {**(defaults or {}), **kwargs}
    cfg = get_pretrained_cfg(arch)
    cfg = cfg.to_dict() if cfg is not None else {}
    if head == "pretrained":
        if not cfg.get("num_classes"):
            raise ValueError(f"model {display!r} has no pretrained classifier (a feature backbone); use head: new")
    else:
        kwargs["num_classes"] = num_classes
    kwargs.setdefault("in_chans", input_shape[0])
    if cfg.get("fixed_input_size") and len(input_shape) == 3:
        kwargs.setdefault("img_size", tuple(input_shape[1:]))

    def build() -> nn.Module:
        return timm.create_model(arch, pretrained=pretrained, **kwargs)

    if pretrained:
        source, looked_in = check_timm_weights(arch, display)
        model = TimmClassifier(_download_guard(display, source, looked_in, build))
        model.input_norm = (tuple(cfg["mean"]), tuple(cfg["std"]))
    else:
        model = TimmClassifier(build())
    model.pretrained_norm = (tuple(cfg["mean"]), tuple(cfg["std"])) if cfg.get("mean") else None
    return model


def _tv_weights(arch: str, weights: str | None):
    from torchvision import models as tvm

    try:
        enum = tvm.get_model_weights(arch)
    except (KeyError, ValueError):
        return None
    if weights is None:
        return enum.DEFAULT
    try:
        return enum[weights]
    except KeyError:
        raise ValueError(f"torchvision model {arch!r} has no weights {weights!r}; known: "
                         f"{', '.join(w.name for w in enum)}") from None


def _tv_norm(weights) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    if weights is None:
        return None
    transform = weights.transforms()
    return tuple(transform.mean), tuple(transform.std)


@register_model(TV_PREFIX, names=tv_name_problem, pretrained=True, weights=check_tv_weights, forwarded=check_tv_kwargs)
def create_torchvision(arch: str, display: str | None = None, pretrained_url: str | None = None, /, *,
                       num_classes: int, input_shape: tuple[int, ...], pretrained: bool = False,
                       head: str = "new", weights: str | None = None, **kwargs) -> TorchvisionClassifier:
    """``tv:<arch>``. Positional parameters are the registration's: an alias's name, and
    ``pretrained_url``, a backbone-only state dict (no classifier) to load from a URL instead of
    torchvision's weights (DINO ResNet-50)."""
    from torchvision import models as tvm

    _check_head(head)
    display = display or TV_PREFIX + arch
    if input_shape[0] != 3:
        raise ValueError(f"model {display!r} takes 3-channel images, the data has {input_shape[0]}; "
                         f"use a timm model (timm:<name>, which adapts in_chans) or a 3-channel dataset")
    tv_weights = None if pretrained_url else _tv_weights(arch, weights)
    if head == "pretrained" and (pretrained_url or tv_weights is None):
        raise ValueError(f"model {display!r} has no pretrained classifier; use head: new")
    url = check_tv_weights(arch, display, pretrained_url, weights=weights) if pretrained else ""
    if pretrained and pretrained_url is None:
        net = _download_guard(display, url, _torch_hub_file(url), lambda: tvm.get_model(arch, weights=tv_weights, **kwargs))
    else:
        net = tvm.get_model(arch, weights=None, **kwargs)
    model = TorchvisionClassifier(net, display)
    if pretrained and pretrained_url is not None:
        state = _download_guard(display, url, _torch_hub_file(url),
                                lambda: torch.hub.load_state_dict_from_url(url, map_location="cpu", check_hash=False))
        missing, unexpected = model.body.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise RuntimeError(f"weights from {url} do not fit {display!r}: missing {missing[:5]}, "
                               f"unexpected {unexpected[:5]}")
    if head == "new":
        model.replace_head(num_classes)
    if pretrained:
        model.input_norm = _tv_norm(tv_weights) or IMAGENET_NORM
    model.pretrained_norm = _tv_norm(tv_weights) or IMAGENET_NORM
    return model


# --------------------------------------------------------------------------- aliases


for _alias, _target in ALIASES.items():
    _prefix, _arch = _target.split(":", 1)
    if _prefix + ":" == TIMM_PREFIX:
        register_model(_alias, pretrained=True, weights=functools.partial(check_timm_weights, _arch, _alias),
                       layer_groups=True, forwarded=functools.partial(check_timm_kwargs, _arch))(
            functools.partial(create_timm, _arch, _alias, ALIAS_DEFAULTS.get(_alias)))
    else:
        register_model(_alias, pretrained=True, weights=functools.partial(check_tv_weights, _arch, _alias),
                       forwarded=functools.partial(check_tv_kwargs, _arch))(
            functools.partial(create_torchvision, _arch, _alias))

# torchvision's ResNet-50 with DINO's self-supervised weights (facebookresearch/dino), the same
# checkpoint ``torch.hub.load('facebookresearch/dino:main', 'dino_resnet50')`` fetches.
register_model("dino_resnet50", pretrained=True,
               weights=functools.partial(check_tv_weights, "resnet50", "dino_resnet50", DINO_RESNET50_URL),
               forwarded=functools.partial(check_tv_kwargs, "resnet50"))(
    functools.partial(create_torchvision, "resnet50", "dino_resnet50", DINO_RESNET50_URL))
