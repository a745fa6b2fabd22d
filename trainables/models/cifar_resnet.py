"""CIFAR ResNets in the style of RepDistiller / mdistiller (He et al. 2016, section 4.2).

A 3x3 stem, then three stages of basic blocks (``n = (depth - 2) / 6`` each; the second and third
halve the resolution), global average pooling and a linear head. ``resnet8 … resnet110`` use
widths 16/16/32/64; the ``x4`` variants 32/64/128/256, which is why their first stage opens with a
1x1 projection shortcut. Pooling is adaptive, so inputs smaller than 32x32 (digits, MNIST) work.
"""
from __future__ import annotations

from torch import nn
from torch.nn import functional as F

from trainables.models import register_model
from trainables.models.base import Classifier, KeyNaming, global_avg_pool

# RepDistiller / mdistiller (the CIFAR distillation zoo): ``conv1``/``bn1`` stem, blocks of
# ``conv1 bn1 conv2 bn2`` with a ``downsample`` (conv, bn) projection, classifier ``fc``.
REPDISTILLER_NAMING = KeyNaming("RepDistiller/mdistiller", """
    conv1.*                         stem.0.0.*
    bn1.*                           stem.0.1.*
    layer{s}.{b}.conv{i}.*          layer{s}.{b}.conv{i}.0.*
    layer{s}.{b}.bn{i}.*            layer{s}.{b}.conv{i}.1.*
    layer{s}.{b}.downsample.*       layer{s}.{b}.shortcut.*
    fc.*                            head.*
""")


def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Convolution (no bias) and batch norm, without activation."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = conv_bn(cin, cout, 3, stride)
        self.conv2 = conv_bn(cout, cout, 3)
        self.shortcut = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        out = self.conv2(F.relu(self.conv1(x)))
        return F.relu(out + self.shortcut(x))


class CifarResNet(Classifier):
    foreign_namings = (REPDISTILLER_NAMING,)

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int,
                 input_shape: tuple[int, ...]):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks = (depth - 2) // 6
        self.stem = nn.Sequential(conv_bn(input_shape[0], widths[0]), nn.ReLU(inplace=True))
        stages, cin = [], widths[0]
        for i, (cout, stride) in enumerate(zip(widths[1:], (1, 2, 2))):
            stage = [BasicBlock(cin if b == 0 else cout, cout, stride if b == 0 else 1) for b in range(blocks)]
            stages.append(nn.Sequential(*stage))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.num_features = widths[3]
        self.head = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return global_avg_pool(x)


def _register(name: str, depth: int, widths: tuple[int, int, int, int]) -> None:
    def factory(num_classes: int, input_shape: tuple[int, ...]) -> CifarResNet:
        return CifarResNet(depth, widths, num_classes, input_shape)

    register_model(name)(factory)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _register(f"resnet{_depth}", _depth, (16, 16, 32, 64))
for _depth in (8, 32):
    _register(f"resnet{_depth}x4", _depth, (32, 64, 128, 256))
