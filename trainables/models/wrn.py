"""Wide ResNets for CIFAR (Zagoruyko & Komodakis 2016) as used by RepDistiller: pre-activation
basic blocks, ``n = (depth - 4) / 6`` per stage, widths 16k/32k/64k after a 16-channel stem."""
from __future__ import annotations

from torch import nn
from torch.nn import functional as F

from trainables.models import register_model
from trainables.models.base import Classifier, KeyNaming, global_avg_pool

# RepDistiller / mdistiller: stem ``conv1``, stages ``block1..3.layer`` of blocks whose projection
# is ``convShortcut``, final ``bn1``, classifier ``fc``.
REPDISTILLER_NAMING = KeyNaming("RepDistiller/mdistiller", """
    conv1.*                                 stem.*
    block{s}.layer.{b}.convShortcut.*       layer{s}.{b}.shortcut.*
    block{s}.layer.{b}.*                    layer{s}.{b}.*
    bn1.*                                   bn.*
    fc.*                                    head.*
""")


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.dropout = dropout
        # A width or resolution change projects the *activated* input; otherwise the raw input
        # is carried, as in the original pre-activation design.
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if (cin != cout or stride != 1) else None

    def forward(self, x):
        act = F.relu(self.bn1(x))
        out = self.conv1(act)
        out = F.relu(self.bn2(out))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        out = self.conv2(out)
        return out + (self.shortcut(act) if self.shortcut is not None else x)


class WideResNet(Classifier):
    foreign_namings = (REPDISTILLER_NAMING,)

    def __init__(self, depth: int, widen: int, num_classes: int, input_shape: tuple[int, ...],
                 dropout: float = 0.0):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        blocks = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.stem = nn.Conv2d(input_shape[0], widths[0], 3, 1, 1, bias=False)
        stages, cin = [], widths[0]
        for cout, stride in zip(widths[1:], (1, 2, 2)):
            stages.append(nn.Sequential(*[PreActBlock(cin if b == 0 else cout, cout, stride if b == 0 else 1, dropout)
                                          for b in range(blocks)]))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.bn = nn.BatchNorm2d(widths[3])
        self.num_features = widths[3]
        self.head = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward_features(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return global_avg_pool(F.relu(self.bn(x)))


def _register(depth: int, widen: int) -> None:
    def factory(num_classes: int, input_shape: tuple[int, ...], dropout: float = 0.0) -> WideResNet:
        return WideResNet(depth, widen, num_classes, input_shape, dropout)

    register_model(f"wrn_{depth}_{widen}")(factory)


for _depth, _widen in ((16, 1), (16, 2), (40, 1), (40, 2)):
    _register(_depth, _widen)
