"""ShuffleNetV2 (1x) for CIFAR as in RepDistiller: a stride-1 3x3 stem with 24 channels, stages of
116/232/464 channels with 3/7/3 units after a down-sampling unit, a 1x1 conv to 1024 channels.
A unit splits its channels in half, transforms one half (1x1, 3x3 depthwise, 1x1), concatenates
and shuffles; the down-sampling unit transforms both halves at stride 2."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from trainables.models import register_model
from trainables.models.base import Classifier, global_avg_pool
from trainables.models.cifar_resnet import conv_bn
from trainables.models.shufflenetv1 import channel_shuffle


class SplitUnit(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.conv1 = conv_bn(half, half, 1)
        self.conv2 = conv_bn(half, half, 3, groups=half)
        self.conv3 = conv_bn(half, half, 1)

    def forward(self, x):
        keep, change = x.chunk(2, dim=1)
        out = F.relu(self.conv3(self.conv2(F.relu(self.conv1(change)))))
        return channel_shuffle(torch.cat([keep, out], 1), 2)


class DownUnit(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = cout // 2
        self.left_dw = conv_bn(cin, cin, 3, 2, groups=cin)
        self.left_pw = conv_bn(cin, mid, 1)
        self.right_pw1 = conv_bn(cin, mid, 1)
        self.right_dw = conv_bn(mid, mid, 3, 2, groups=mid)
        self.right_pw2 = conv_bn(mid, mid, 1)

    def forward(self, x):
        left = F.relu(self.left_pw(self.left_dw(x)))
        right = F.relu(self.right_pw2(self.right_dw(F.relu(self.right_pw1(x)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(Classifier):
    def __init__(self, num_classes: int, input_shape: tuple[int, ...], widths=(116, 232, 464), last: int = 1024,
                 blocks=(3, 7, 3), stem: int = 24):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(input_shape[0], stem, 3), nn.ReLU(inplace=True))
        stages, cin = [], stem
        for width, n in zip(widths, blocks):
            stages.append(nn.Sequential(DownUnit(cin, width), *[SplitUnit(width) for _ in range(n)]))
            cin = width
        self.stages = nn.Sequential(*stages)
        self.last_conv = nn.Sequential(conv_bn(cin, last, 1), nn.ReLU(inplace=True))
        self.num_features = last
        self.head = nn.Linear(last, num_classes)

    def forward_features(self, x):
        return global_avg_pool(self.last_conv(self.stages(self.stem(x))))


@register_model("shufflenetv2")
def shufflenetv2(num_classes: int, input_shape: tuple[int, ...]) -> ShuffleNetV2:
    return ShuffleNetV2(num_classes, input_shape)
