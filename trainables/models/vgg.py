"""VGG with batch norm for CIFAR (RepDistiller layout): five conv groups, max-pooling between the
first four (the fourth pool only on inputs of 64 px or more, so 32x32 inputs end at 4x4), global
average pooling and one linear layer on the 512-d vector. The last ReLU of every group is applied
outside the group, so a group's output is its pre-activation (what feature losses hook)."""
from __future__ import annotations

from torch import nn
from torch.nn import functional as F

from trainables.models import register_model
from trainables.models.base import Classifier, KeyNaming, global_avg_pool

# RepDistiller / mdistiller ``vgg*_bn``: groups ``block0..4`` laid out as ours (conv, bn, relu, ...),
# classifier ``classifier``.
REPDISTILLER_NAMING = KeyNaming("RepDistiller/mdistiller", """
    block{g}.*          groups.{g}.*
    classifier.*        head.*
""")

CONFIGS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


def _group(cin: int, widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for cout in widths:
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        cin = cout
    return nn.Sequential(*layers[:-1])


class VGG(Classifier):
    foreign_namings = (REPDISTILLER_NAMING,)

    def __init__(self, cfg: list[list[int]], num_classes: int, input_shape: tuple[int, ...]):
        super().__init__()
        cins = [input_shape[0]] + [g[-1] for g in cfg[:-1]]
        self.groups = nn.ModuleList(_group(cin, g) for cin, g in zip(cins, cfg))
        self.num_features = cfg[-1][-1]
        self.head = nn.Linear(self.num_features, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x):
        pool_fourth = x.shape[-1] >= 64
        for i, group in enumerate(self.groups):
            x = F.relu(group(x))
            if i < 3 or (i == 3 and pool_fourth):
                # Tiny inputs (8x8 digits) stop halving at 1x1.
                x = F.max_pool2d(x, 2) if min(x.shape[-2:]) >= 2 else x
        return global_avg_pool(x)


def _register(name: str, cfg: list[list[int]]) -> None:
    def factory(num_classes: int, input_shape: tuple[int, ...]) -> VGG:
        return VGG(cfg, num_classes, input_shape)

    register_model(name)(factory)


for _name, _cfg in CONFIGS.items():
    _register(_name, _cfg)
