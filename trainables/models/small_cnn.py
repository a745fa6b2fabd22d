"""Small convolutional networks for low-resolution inputs (digits 8x8, 28x28, 32x32)."""
from __future__ import annotations

from torch import nn

from trainables.models import register_model
from trainables.models.base import Classifier, GlobalAvgPool


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class SmallCNN(Classifier):
    """Two conv stages (the second downsampling) and global average pooling."""

    def __init__(self, num_classes: int, input_shape: tuple[int, ...], width: int = 32):
        super().__init__()
        channels = input_shape[0]
        self.body = nn.Sequential(
            _conv_bn(channels, width), _conv_bn(width, width), nn.MaxPool2d(2),
            _conv_bn(width, 2 * width), _conv_bn(2 * width, 2 * width),
            GlobalAvgPool(),
        )
        self.num_features = 2 * width
        self.head = nn.Linear(2 * width, num_classes)

    def forward_features(self, x):
        return self.body(x)


@register_model("cnn_small")
def cnn_small(num_classes: int, input_shape: tuple[int, ...], width: int = 16) -> SmallCNN:
    return SmallCNN(num_classes, input_shape, width=width)


@register_model("cnn")
def cnn(num_classes: int, input_shape: tuple[int, ...], width: int = 32) -> SmallCNN:
    return SmallCNN(num_classes, input_shape, width=width)
