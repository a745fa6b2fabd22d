from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

Norm = tuple[tuple[float, ...], tuple[float, ...]]


_FIELD = re.compile(r"\{(\w+)(-1)?\}")


@dataclass(frozen=True)
class KeyNaming:
    """Another code base's state-dict key names for a model family, as data: ``table`` has one
    rule a line, ``their-pattern  our-template``. In a pattern ``{s}`` stands for a number and a
    final ``*`` for the rest of the key; a template repeats them (``{s-1}``: one less). Rules are
    tried in order. A model class lists the namings its weights may come in as
    ``foreign_namings``; :mod:`trainables.models.checkpoint` picks one by key set."""

    name: str
    table: str

    @functools.cached_property
    def rules(self) -> tuple[tuple[re.Pattern[str], str], ...]:
        rules = []
        for line in filter(None, (line.strip() for line in self.table.splitlines())):
            theirs, ours = line.split()
            pattern = _FIELD.sub(lambda m: rf"(?P<{m[1]}>\d+)", re.escape(theirs).replace(r"\{", "{")
                                 .replace(r"\}", "}")).replace(r"\*", "(?P<rest>.+)")
            rules.append((re.compile(pattern), ours))
        return tuple(rules)

    def rename(self, key: str) -> str | None:
        """``key`` in our naming, or None when no rule matches it."""
        for pattern, template in self.rules:
            match = pattern.fullmatch(key)
            if match:
                fields = match.groupdict()
                ours = _FIELD.sub(lambda m: str(int(fields[m[1]]) - (1 if m[2] else 0)), template)
                return ours.replace("*", fields.get("rest") or "")
        return None


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C): the mean over the spatial dimensions. ``adaptive_avg_pool2d(x, 1)``
    computes the same, but under ``torch.func.vmap`` (fused trials) it has no batching rule for a
    channels_last input and falls back to a slow per-member loop; a reduction batches natively."""
    return x.mean((2, 3))


class GlobalAvgPool(nn.Module):
    """:func:`global_avg_pool` as a module, for ``nn.Sequential`` bodies."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return global_avg_pool(x)


class Classifier(nn.Module):
    """A backbone producing a pooled feature vector, followed by a linear head.

    Subclasses implement :meth:`forward_features` and set ``self.head`` and ``num_features``.

    ``input_norm`` is the ``(mean, std)`` the weights expect their inputs normalised with, when the
    weights were learnt elsewhere (pretrained, or a checkpoint); ``None`` means "whatever the data
    it is trained on uses". :meth:`adapt_input` makes :meth:`forward` accept inputs normalised
    differently; :meth:`forward_features` always takes model-normalised input.
    """

    num_features: int
    head: nn.Module
    input_norm: Norm | None = None
    # Other code bases' key names these weights may come in (checkpoint files load either way).
    foreign_namings: tuple[KeyNaming, ...] = ()
    # The registered name the model was created under (create_model sets it), for messages.
    registry_name: str | None = None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        scale = getattr(self, "input_scale", None)
        if scale is not None:
            x = torch.addcmul(self.input_shift, x, scale)
        features = self.forward_features(x)
        logits = self.forward_head(features)
        return (logits, features) if return_features else logits

    def adapt_input(self, data_mean: Sequence[float], data_std: Sequence[float]) -> bool:
        """Convert inputs normalised with the data's ``(mean, std)`` to ``self.input_norm`` inside
        :meth:`forward`: ``x_model = x * std_d / std_m + (mean_d - mean_m) / std_m`` per channel.

        Returns whether a conversion was installed (none is needed when the statistics agree or the
        model has no expectation). The factors are non-persistent buffers: they follow the model
        across devices but stay out of its state dict and checkpoints.
        """
        if self.input_norm is None:
            if getattr(self, "input_scale", None) is not None:
                self.register_buffer("input_scale", None, persistent=False)
            return False
        model_mean, model_std = (torch.tensor(v, dtype=torch.float32) for v in self.input_norm)
        data_mean_t = torch.tensor(tuple(data_mean), dtype=torch.float32)
        data_std_t = torch.tensor(tuple(data_std), dtype=torch.float32)
        if len(data_mean_t) == 1 and len(model_mean) > 1:
            # Grey-scale data into an RGB-pretrained model whose first layer was collapsed to one
            # channel (timm's in_chans=1): the channel-averaged statistics are the best single fit.
            model_mean, model_std = model_mean.mean(0, keepdim=True), model_std.mean(0, keepdim=True)
        if len(model_mean) != len(data_mean_t):
            raise ValueError(f"input normalisation has {len(model_mean)} channels in the model and "
                             f"{len(data_mean_t)} in the data")
        scale = data_std_t / model_std
        shift = (data_mean_t - model_mean) / model_std
        needed = not (torch.allclose(scale, torch.ones_like(scale)) and torch.allclose(shift, torch.zeros_like(shift)))
        self.register_buffer("input_scale", scale.view(1, -1, 1, 1) if needed else None, persistent=False)
        self.register_buffer("input_shift", shift.view(1, -1, 1, 1) if needed else None, persistent=False)
        return needed


def head_state_keys(model: nn.Module) -> set[str]:
    """The state-dict keys that belong to ``model.head`` (however deep the head sits)."""
    head = getattr(model, "head", None)
    if head is None:
        return set()
    for name, module in model.named_modules():
        if module is head:
            prefix = f"{name}." if name else ""
            return {prefix + k for k in head.state_dict()}
    return set()
