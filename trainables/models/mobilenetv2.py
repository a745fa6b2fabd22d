"""MobileNetV2 for CIFAR as in RepDistiller's ``mobile_half`` (the distillation benchmarks'
"MobileNetV2"): width multiplier 0.5, expansion 6, a stride-2 stem, the second stage at stride 1
instead of 2 (overall stride 16: 32 px inputs end at 2x2), and a 1x1 conv to 1280 channels.

Unlike torchvision's version, every inverted residual keeps its 1x1 expansion conv, even with
expansion 1.
"""
from __future__ import annotations

from torch import nn

from trainables.models import register_model
from trainables.models.base import Classifier, KeyNaming, global_avg_pool
from trainables.models.cifar_resnet import conv_bn

# (expansion, channels, blocks, stride of the first block); expansion None means "the model's T".
STAGES = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2), (None, 96, 3, 1),
          (None, 160, 3, 2), (None, 320, 1, 1))

# RepDistiller / mdistiller ``mobile_half``: stem ``conv1`` (conv, bn, relu), stages ``blocks.S``
# of blocks whose ``conv`` Sequential is flat (pw conv, bn, relu, dw conv, bn, relu, pw conv, bn),
# ``conv2`` (conv, bn, relu) to 1280 channels and ``classifier.0``. A flat index 3k + j is our
# ``body.{2k}.{j}`` (k: which conv_bn, j: conv 0 or bn 1).
REPDISTILLER_NAMING = KeyNaming("RepDistiller/mdistiller", """
    conv1.*                     stem.0.*
    blocks.{s}.{b}.conv.0.*     stages.{s}.{b}.body.0.0.*
    blocks.{s}.{b}.conv.1.*     stages.{s}.{b}.body.0.1.*
    blocks.{s}.{b}.conv.3.*     stages.{s}.{b}.body.2.0.*
    blocks.{s}.{b}.conv.4.*     stages.{s}.{b}.body.2.1.*
    blocks.{s}.{b}.conv.6.*     stages.{s}.{b}.body.4.0.*
    blocks.{s}.{b}.conv.7.*     stages.{s}.{b}.body.4.1.*
    conv2.*                     last_conv.0.*
    classifier.0.*              head.*
""")


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        self.residual = stride == 1 and cin == cout
        self.body = nn.Sequential(
            conv_bn(cin, hidden, 1), nn.ReLU(inplace=True),
            conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU(inplace=True),
            conv_bn(hidden, cout, 1),
        )

    def forward(self, x):
        out = self.body(x)
        return x + out if self.residual else out


class CifarMobileNetV2(Classifier):
    foreign_namings = (REPDISTILLER_NAMING,)

    def __init__(self, num_classes: int, input_shape: tuple[int, ...], width_mult: float = 0.5,
                 expansion: int = 6, last_channels: int = 1280):
        super().__init__()
        cin = int(32 * width_mult)
        self.stem = nn.Sequential(conv_bn(input_shape[0], cin, 3, 2), nn.ReLU(inplace=True))
        stages = []
        for t, c, n, s in STAGES:
            cout = int(c * width_mult)
            blocks = []
            for b in range(n):
                blocks.append(InvertedResidual(cin, cout, s if b == 0 else 1, expansion if t is None else t))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.last_conv = nn.Sequential(conv_bn(cin, last_channels, 1), nn.ReLU(inplace=True))
        self.num_features = last_channels
        self.head = nn.Linear(last_channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x):
        x = self.last_conv(self.stages(self.stem(x)))
        return global_avg_pool(x)


@register_model("mobilenetv2")
def mobilenetv2(num_classes: int, input_shape: tuple[int, ...], width_mult: float = 0.5):
    return CifarMobileNetV2(num_classes, input_shape, width_mult=width_mult)
