"""ShuffleNet (v1) for CIFAR as in RepDistiller: groups 3, stage widths 240/480/960 with 4/8/4
units, a 1x1 stem (no down-sampling), and units whose first layer is a grouped 1x1 conv followed
by a channel shuffle, a 3x3 depthwise conv and a grouped 1x1 conv. A stride-2 unit concatenates an
average-pooled copy of its input, so its convolutions produce ``out - in`` channels."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from trainables.models import register_model
from trainables.models.base import Classifier, KeyNaming, global_avg_pool

# RepDistiller / mdistiller ``ShuffleV1``: stem ``conv1``/``bn1``, stages ``layer1..3`` of units with
# ``conv1..3``/``bn1..3``, classifier ``linear``.
REPDISTILLER_NAMING = KeyNaming("RepDistiller/mdistiller", """
    conv1.*                     stem.0.0.*
    bn1.*                       stem.0.1.*
    layer{s}.{b}.conv{i}.*      stages.{s-1}.{b}.conv{i}.0.*
    layer{s}.{b}.bn{i}.*        stages.{s-1}.{b}.conv{i}.1.*
    linear.*                    head.*
""")
from trainables.models.cifar_resnet import conv_bn


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, groups: int, first_groups: int):
        super().__init__()
        self.stride = stride
        branch_out = cout - cin if stride == 2 else cout
        mid = branch_out // 4
        self.first_groups = first_groups
        self.conv1 = conv_bn(cin, mid, 1, groups=first_groups)
        self.conv2 = conv_bn(mid, mid, 3, stride, groups=mid)
        self.conv3 = conv_bn(mid, branch_out, 1, groups=groups)

    def forward(self, x):
        out = channel_shuffle(F.relu(self.conv1(x)), self.first_groups)
        out = self.conv3(F.relu(self.conv2(out)))
        if self.stride == 2:
            return F.relu(torch.cat([out, F.avg_pool2d(x, 3, 2, 1)], 1))
        return F.relu(out + x)


class ShuffleNetV1(Classifier):
    foreign_namings = (REPDISTILLER_NAMING,)

    def __init__(self, num_classes: int, input_shape: tuple[int, ...], widths=(240, 480, 960),
                 blocks=(4, 8, 4), groups: int = 3, stem: int = 24):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(input_shape[0], stem, 1), nn.ReLU(inplace=True))
        stages, cin = [], stem
        for width, n in zip(widths, blocks):
            units = []
            for b in range(n):
                # The first unit sees the narrow stem output, too few channels to group.
                units.append(ShuffleUnit(cin, width, 2 if b == 0 else 1, groups, 1 if cin == stem else groups))
                cin = width
            stages.append(nn.Sequential(*units))
        self.stages = nn.Sequential(*stages)
        self.num_features = widths[-1]
        self.head = nn.Linear(widths[-1], num_classes)

    def forward_features(self, x):
        return global_avg_pool(self.stages(self.stem(x)))


@register_model("shufflenetv1")
def shufflenetv1(num_classes: int, input_shape: tuple[int, ...]) -> ShuffleNetV1:
    return ShuffleNetV1(num_classes, input_shape)
