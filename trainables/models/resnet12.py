"""The few-shot ResNets of few-shot-meta-baseline (Chen et al. 2021) and of the few-shot experiment
of "Vision Superalignment" (ggjy/vision_weak_to_strong, ``few_shot_leaerning/models/resnet.py``).

A block is three conv3x3-BN layers with LeakyReLU(0.1) between them, a residual connection (a 1x1
conv + BN projection on a stage's first block, the identity otherwise), LeakyReLU after the sum and,
on a stage's first block, a 2x2 max-pool. Four stages, no stem; global average pooling gives the
feature vector (the last stage's width), a linear head the logits. On 84x84 miniImageNet images the
last feature map is 5x5.

Registered:

* ``resnet12_fsl``: one block per stage, widths 64-160-320-640 (few-shot-meta-baseline's
  ``resnet12-wide``, the ResNet-12 of the few-shot literature; 640-d features).
* ``resnet12_bottle`` / ``resnet18_bottle`` / ``resnet36_bottle``: the superalignment authors'
  encoders, stages of 1-1-1-1, 1-2-2-1 and 2-3-5-2 blocks (3 convs each: 12, 18, 36 layers), widths
  64-128-256-512 (512-d features). Their configs pair a ResNet-12 or ResNet-18 teacher with a
  ResNet-36 student.

``channels`` overrides the widths of any of them (tiny models for CPU tests).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from trainables.models import register_model
from trainables.models.base import Classifier

FSL_WIDTHS = (64, 160, 320, 640)
AUTHORS_WIDTHS = (64, 128, 256, 512)


class FewShotBlock(nn.Module):
    def __init__(self, cin: int, cout: int, pool: bool):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(3):
            layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)]
            if i < 2:
                layers.append(nn.LeakyReLU(0.1))
        self.body = nn.Sequential(*layers)
        # Only a stage's first block changes the width; it projects, later blocks carry the input.
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
                         if pool else nn.Identity())
        self.act = nn.LeakyReLU(0.1)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.body(x) + self.shortcut(x)))


class FewShotResNet(Classifier):
    def __init__(self, blocks: Sequence[int], channels: Sequence[int], num_classes: int,
                 input_shape: tuple[int, ...]):
        super().__init__()
        if len(blocks) != 4 or len(channels) != 4:
            raise ValueError(f"channels: expected 4 stage widths, got {list(channels)}")
        stages, cin = [], input_shape[0]
        for n, cout in zip(blocks, channels):
            stages.append(nn.Sequential(*[FewShotBlock(cin if b == 0 else cout, cout, pool=b == 0) for b in range(n)]))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.num_features = channels[-1]
        self.head = nn.Linear(self.num_features, num_classes)
        # The authors' init: He-normal (fan_out, leaky_relu) convs, BN weight 1 and bias 0.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x).mean(dim=(2, 3))


def _factory(blocks: tuple[int, ...], widths: tuple[int, ...], doc: str):
    def factory(num_classes: int, input_shape: tuple[int, ...],
                channels: tuple[int, int, int, int] = widths) -> FewShotResNet:
        return FewShotResNet(blocks, tuple(channels), num_classes, input_shape)

    factory.__doc__ = doc
    return factory


for _name, _blocks, _widths in (("resnet12_fsl", (1, 1, 1, 1), FSL_WIDTHS),
                                ("resnet12_bottle", (1, 1, 1, 1), AUTHORS_WIDTHS),
                                ("resnet18_bottle", (1, 2, 2, 1), AUTHORS_WIDTHS),
                                ("resnet36_bottle", (2, 3, 5, 2), AUTHORS_WIDTHS)):
    register_model(_name)(_factory(_blocks, _widths, f"{_name}: stages of {_blocks} blocks, widths {_widths}"))
