"""The encoders of the random-teacher paper (safelix/dinopl, ``models/``), as registry classifiers.

All of them are :class:`Classifier` s, so the ``dino`` trainable takes them as encoders (it drops
``head``; ``forward_features`` is dinopl's ``embed_dim`` vector):

* ``resnet18_tiny`` / ``resnet34_tiny`` / ``resnet50_tiny``: torchvision's ResNets with dinopl's
  ``tiny_input`` stem (3x3 conv, stride 1, no max-pool): a 32 px input ends at 4x4 before the global
  average pool. Same module names as torchvision (and dinopl), so their state dicts load as they are.
  Names of their own rather than a ``tiny_input`` keyword on the ``resnet18``/``resnet50`` aliases:
  those are ``tv:`` hub entries that hand their keywords to torchvision and load ImageNet weights,
  which a 3x3 stem cannot take (and ``resnet34`` has no alias).
* ``vgg11_nobn`` … ``vgg19_nobn``: dinopl's ``vgg11`` … ``vgg19`` (torchvision's feature stack, conv
  with bias + ReLU, five max-pools, no batch norm unless ``enc_norm_layer`` asks for one), flattened
  with no pooling: 512 features at 32 px, ``512 · (H/32) · (W/32)`` otherwise.
* ``convnet_{16,32}_{1..5}``: blocks of conv 3x3 (same padding) → ReLU → norm (none by default) →
  2x2 average pool, the last pool adaptive to 2x2; flattened: ``4 · width`` features.
* ``mlp_{512,1024}_{1..5}``: flatten, then ``depth`` blocks of linear → [norm] → GELU.
* ``vit_medium``: dinopl's medium ViT (width 512, 12 blocks, 8 heads, MLP ratio 4, qkv bias, CLS
  token, final LayerNorm), built as a standard timm ``VisionTransformer``; ``patch_size`` 16 (dinopl's
  ``--tiny_input`` uses 8). dinopl's own code reuses *one* block object 12 times (``n * [Block]``)
  and attends across heads rather than tokens; we build the architecture it names, not those slips.

``enc_norm_layer`` is dinopl's ``--enc_norm_layer``: ``BatchNorm`` (BatchNorm2d; BatchNorm1d in an
MLP), ``InstanceNorm`` (GroupNorm with one group per channel), ``GroupNorm8`` (groups of 8 channels),
``LayerNorm`` (GroupNorm with one group), ``Identity``. It is taken where dinopl's models take a norm
layer (ResNets, VGGs, ConvNets, MLPs), not by the ViT. Left out, each model keeps its own default
(BatchNorm in the ResNets, none elsewhere).

Initialisation follows dinopl's ``reset_parameters`` defaults: Kaiming-normal (fan-out, ReLU) conv
weights in the conv nets, VGG conv biases zero, norm weights one and biases zero; PyTorch's default
linear init in the MLPs; timm's init in the ViT.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable

import torch
from torch import nn

from trainables.models import register_model
from trainables.models.base import Classifier, KeyNaming

NORM_LAYERS = ("BatchNorm", "InstanceNorm", "GroupNorm8", "LayerNorm", "Identity")


def norm_factory(name: str | None, default: Callable[[int], nn.Module] | None,
                 *, one_d: bool = False) -> Callable[[int], nn.Module] | None:
    """dinopl's ``get_enc_norm_layer``: a ``channels -> module`` factory for ``enc_norm_layer``
    (``None``: the model's ``default``). ``one_d``: the norm follows a linear layer (BatchNorm1d)."""
    if name is None:
        return default
    if name == "BatchNorm":
        return nn.BatchNorm1d if one_d else nn.BatchNorm2d
    if name == "InstanceNorm":
        return lambda c: nn.GroupNorm(c, c)
    if name == "GroupNorm8":
        def group8(c: int) -> nn.Module:
            if c % 8:
                raise ValueError(f"enc_norm_layer GroupNorm8 needs channel counts divisible by 8, got {c}")
            return nn.GroupNorm(c // 8, c)
        return group8
    if name == "LayerNorm":
        return lambda c: nn.GroupNorm(1, c)
    if name == "Identity":
        return lambda c: nn.Identity()
    raise ValueError(f"enc_norm_layer must be one of {', '.join(NORM_LAYERS)}, got {name!r}")


def _init_norms(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------- ResNets, tiny input

# torchvision's and dinopl's ResNet keys: ours but for the classifier, ``fc`` (dinopl's encoders
# save an identity ``fc``, so their files have no head: it stays fresh).
TORCHVISION_RESNET_NAMING = KeyNaming("torchvision/dinopl", """
    conv1.*         conv1.*
    bn1.*           bn1.*
    layer{s}.*      layer{s}.*
    fc.*            head.*
""")


class TinyResNet(Classifier):
    """A torchvision ResNet (its module names kept) with the CIFAR stem; ``fc`` is the head."""

    foreign_namings = (TORCHVISION_RESNET_NAMING,)

    def __init__(self, depth: int, num_classes: int, input_shape: tuple[int, ...],
                 norm_layer: Callable[[int], nn.Module] | None):
        super().__init__()
        from torchvision.models import resnet

        builder = {18: resnet.resnet18, 34: resnet.resnet34, 50: resnet.resnet50}[depth]
        net = builder(weights=None, num_classes=num_classes, **({"norm_layer": norm_layer} if norm_layer else {}))
        net.conv1 = nn.Conv2d(input_shape[0], net.conv1.out_channels, 3, 1, 1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()
        _init_norms(net)  # torchvision's init leaves GroupNorm at its defaults too, but be explicit
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.avgpool = net.avgpool
        self.num_features = net.fc.in_features
        self.head = net.fc

    def forward_feature_map(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_features(self, x):
        return torch.flatten(self.avgpool(self.forward_feature_map(x)), 1)



def _register_resnet(depth: int) -> None:
    def factory(num_classes: int, input_shape: tuple[int, ...], enc_norm_layer: str | None = None) -> TinyResNet:
        return TinyResNet(depth, num_classes, input_shape, norm_factory(enc_norm_layer, None))

    factory.__name__ = f"resnet{depth}_tiny"
    register_model(f"resnet{depth}_tiny")(factory)


# --------------------------------------------------------------------------- VGG without batch norm

VGG_CONFIGS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class PlainVGG(Classifier):
    """torchvision's VGG feature stack (``features``), flattened without pooling (dinopl)."""

    def __init__(self, cfg: list[int | str], num_classes: int, input_shape: tuple[int, ...],
                 norm_layer: Callable[[int], nn.Module] | None):
        super().__init__()
        layers: list[nn.Module] = []
        cin = input_shape[0]
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            layers.append(nn.Conv2d(cin, int(v), 3, padding=1))
            if norm_layer is not None:
                layers.append(norm_layer(int(v)))
            layers.append(nn.ReLU(inplace=True))
            cin = int(v)
        self.features = nn.Sequential(*layers)
        pools = cfg.count("M")
        h, w = (input_shape[1] >> pools, input_shape[2] >> pools) if len(input_shape) == 3 else (1, 1)
        if h < 1 or w < 1:
            raise ValueError(f"a VGG halves its input {pools} times; {tuple(input_shape[1:])} is too small "
                             f"(needs at least {2 ** pools} px)")
        self.num_features = cin * h * w
        self.head = nn.Linear(self.num_features, num_classes)
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        _init_norms(self.features)

    def forward_features(self, x):
        return torch.flatten(self.features(x), 1)


def _register_vgg(depth: int) -> None:
    def factory(num_classes: int, input_shape: tuple[int, ...], enc_norm_layer: str | None = None) -> PlainVGG:
        return PlainVGG(VGG_CONFIGS[depth], num_classes, input_shape, norm_factory(enc_norm_layer, None))

    factory.__name__ = f"vgg{depth}_nobn"
    register_model(f"vgg{depth}_nobn")(factory)


# --------------------------------------------------------------------------- ConvNets


class ConvNet(Classifier):
    """dinopl's ``ConvNet``: ``len(widths)`` blocks ``sequential.<i>`` of conv → ReLU → norm → pool."""

    def __init__(self, widths: list[int], num_classes: int, input_shape: tuple[int, ...],
                 norm_layer: Callable[[int], nn.Module] | None):
        super().__init__()
        norm_layer = norm_layer or (lambda c: nn.Identity())
        blocks, cin = [], input_shape[0]
        for i, cout in enumerate(widths):
            last = i == len(widths) - 1
            blocks.append(nn.Sequential(nn.Conv2d(cin, cout, 3, padding="same"), nn.ReLU(inplace=True),
                                        norm_layer(cout), nn.AdaptiveAvgPool2d(2) if last else nn.AvgPool2d(2)))
            cin = cout
        self.sequential = nn.Sequential(*blocks)
        self.num_features = widths[-1] * 4
        self.head = nn.Linear(self.num_features, num_classes)
        for m in self.sequential.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        _init_norms(self.sequential)

    def forward_features(self, x):
        return torch.flatten(self.sequential(x), 1)


def _register_convnet(width: int, depth: int) -> None:
    def factory(num_classes: int, input_shape: tuple[int, ...], enc_norm_layer: str | None = None) -> ConvNet:
        return ConvNet(depth * [width], num_classes, input_shape, norm_factory(enc_norm_layer, None))

    factory.__name__ = f"convnet_{width}_{depth}"
    register_model(f"convnet_{width}_{depth}")(factory)


# --------------------------------------------------------------------------- MLP encoders


class MLPEncoder(Classifier):
    """dinopl's ``MLPEnc``: ``flatten``, then ``layer<i>`` = ``lin`` → [``norm``] → ``act`` (GELU)."""

    def __init__(self, dims: list[int], num_classes: int, input_shape: tuple[int, ...],
                 norm_layer: Callable[[int], nn.Module] | None):
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten(1))
        cin = math.prod(input_shape)
        for i, cout in enumerate(dims):
            block: OrderedDict[str, nn.Module] = OrderedDict(lin=nn.Linear(cin, cout))
            if norm_layer is not None:
                block["norm"] = norm_layer(cout)
            block["act"] = nn.GELU()
            layers[f"layer{i}"] = nn.Sequential(block)
            cin = cout
        self.body = nn.Sequential(layers)
        self.num_features = cin
        self.head = nn.Linear(cin, num_classes)
        _init_norms(self.body)

    def forward_features(self, x):
        return self.body(x)


def _register_mlp(width: int, depth: int) -> None:
    def factory(num_classes: int, input_shape: tuple[int, ...], enc_norm_layer: str | None = None) -> MLPEncoder:
        return MLPEncoder(depth * [width], num_classes, input_shape, norm_factory(enc_norm_layer, None, one_d=True))

    factory.__name__ = f"mlp_{width}_{depth}"
    register_model(f"mlp_{width}_{depth}")(factory)


# --------------------------------------------------------------------------- ViT-Medium

VIT_MEDIUM = dict(embed_dim=512, depth=12, num_heads=8, mlp_ratio=4.0, qkv_bias=True)


@register_model("vit_medium", layer_groups=True)
def vit_medium(num_classes: int, input_shape: tuple[int, ...], patch_size: int = 16, drop_path_rate: float = 0.0):
    """dinopl's ``vit_medium``: a timm ``VisionTransformer`` of width 512, 12 blocks, 8 heads, on the
    data's image size; its CLS token (after the final LayerNorm) is the feature vector."""
    from timm.models.vision_transformer import VisionTransformer

    from trainables.models.hub import TimmClassifier

    if len(input_shape) != 3:
        raise ValueError(f"vit_medium takes images (C, H, W), got input shape {tuple(input_shape)}")
    if input_shape[1] % patch_size or input_shape[2] % patch_size:
        raise ValueError(f"vit_medium: patch_size {patch_size} does not divide the image size {tuple(input_shape[1:])}")
    net = VisionTransformer(img_size=tuple(input_shape[1:]), patch_size=patch_size, in_chans=input_shape[0],
                            num_classes=num_classes, global_pool="token", drop_path_rate=drop_path_rate, **VIT_MEDIUM)
    return TimmClassifier(net)


for _depth in (18, 34, 50):
    _register_resnet(_depth)
for _depth in VGG_CONFIGS:
    _register_vgg(_depth)
for _width in (16, 32):
    for _depth in range(1, 6):
        _register_convnet(_width, _depth)
for _width in (512, 1024):
    for _depth in range(1, 6):
        _register_mlp(_width, _depth)
