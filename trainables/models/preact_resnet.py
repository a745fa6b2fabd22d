"""Pre-activation ResNets for CIFAR (He et al. 2016, "Identity Mappings in Deep Residual Networks"),
as the noisy-label code of "Vision Superalignment" builds them (Sel-CL's ``PreActResNet18/34``):

* stem: 3x3 convolution (64 channels, stride 1, no bias), batch norm, ReLU; no max-pool, so 32x32
  inputs keep their resolution into the first stage;
* four stages of pre-activation basic blocks (BN, ReLU, 3x3 conv, BN, ReLU, 3x3 conv, plus a
  shortcut taken from the *activated* input: a 1x1 convolution without bias or BN where the shape
  changes, the identity elsewhere), widths 64/128/256/512, the first block of stages 2-4 at stride 2;
  ``[2, 2, 2, 2]`` blocks for PreAct-ResNet18, ``[3, 4, 6, 3]`` for PreAct-ResNet34;
* global average pooling straight after the last block (this variant has no final BN-ReLU), then
  the linear classifier (their ``linear2``);
* Kaiming-normal (fan-out) convolutions, BN weights 1 and biases 0.

Sel-CL's contrastive projection (``head``, 512 -> 128, L2-normalised) serves only its contrastive
selection stage, which this project does not run; it is left out, so the model is the classifier
the fine-tuning stage trains. Pooling is adaptive, so smaller inputs (digits, MNIST) work, and the
stem takes the data's channel count.
"""
from __future__ import annotations

from torch import nn
from torch.nn import functional as F

from trainables.models import register_model
from trainables.models.base import Classifier, global_avg_pool

STAGE_WIDTHS = (64, 128, 256, 512)


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, padding=1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x):
        out = F.relu(self.bn1(x))
        # The projection reads the pre-activated input, the identity the raw one (He et al. 2016b).
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + shortcut


class PreActResNet(Classifier):
    def __init__(self, blocks: tuple[int, int, int, int], num_classes: int, input_shape: tuple[int, ...]):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(input_shape[0], STAGE_WIDTHS[0], 3, 1, padding=1, bias=False),
                                  nn.BatchNorm2d(STAGE_WIDTHS[0]), nn.ReLU(inplace=True))
        stages, cin = [], STAGE_WIDTHS[0]
        for i, (cout, n) in enumerate(zip(STAGE_WIDTHS, blocks)):
            first_stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(*[PreActBlock(cin if b == 0 else cout, cout, first_stride if b == 0 else 1)
                                          for b in range(n)]))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.num_features = STAGE_WIDTHS[-1]
        self.head = nn.Linear(self.num_features, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x):
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return global_avg_pool(x)


@register_model("preact_resnet18")
def preact_resnet18(num_classes: int, input_shape: tuple[int, ...]) -> PreActResNet:
    return PreActResNet((2, 2, 2, 2), num_classes, input_shape)


@register_model("preact_resnet34")
def preact_resnet34(num_classes: int, input_shape: tuple[int, ...]) -> PreActResNet:
    return PreActResNet((3, 4, 6, 3), num_classes, input_shape)
