"""Multi-layer perceptrons on flattened images."""
from __future__ import annotations

import math

from torch import nn

from trainables.models import register_model
from trainables.models.base import Classifier


class MLP(Classifier):
    def __init__(self, num_classes: int, input_shape: tuple[int, ...], hidden: tuple[int, ...] = (128,),
                 dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        self.body = nn.Sequential(*layers)
        self.num_features = width
        self.head = nn.Linear(width, num_classes)

    def forward_features(self, x):
        return self.body(x)


@register_model("mlp")
def mlp(num_classes: int, input_shape: tuple[int, ...], hidden=(128,), dropout: float = 0.0) -> MLP:
    return MLP(num_classes, input_shape, hidden=tuple(hidden), dropout=dropout)


@register_model("mlp_tiny")
def mlp_tiny(num_classes: int, input_shape: tuple[int, ...], dropout: float = 0.0) -> MLP:
    return MLP(num_classes, input_shape, hidden=(32,), dropout=dropout)


@register_model("mlp_wide")
def mlp_wide(num_classes: int, input_shape: tuple[int, ...], dropout: float = 0.0) -> MLP:
    return MLP(num_classes, input_shape, hidden=(512, 256), dropout=dropout)


@register_model("linear")
def linear(num_classes: int, input_shape: tuple[int, ...], dropout: float = 0.0) -> MLP:
    return MLP(num_classes, input_shape, hidden=(), dropout=dropout)
