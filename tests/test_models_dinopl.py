"""The random-teacher paper's encoders (safelix/dinopl ``models/``): shapes, parameter counts,
``enc_norm_layer`` and registration (trainables/models/dinopl.py)."""
import pytest
import torch
from torch import nn

from trainables.core.registry import UnknownKeywords
from trainables.models import check_model_kwargs, create_model, model_names
from trainables.models.checkpoint import load_weights
from trainables.models.dinopl import NORM_LAYERS

CIFAR = (3, 32, 32)
RESNETS = ["resnet18_tiny", "resnet34_tiny", "resnet50_tiny"]
VGGS = ["vgg11_nobn", "vgg13_nobn", "vgg16_nobn", "vgg19_nobn"]
CONVNETS = [f"convnet_{w}_{d}" for w in (16, 32) for d in range(1, 6)]
MLPS = [f"mlp_{w}_{d}" for w in (512, 1024) for d in range(1, 6)]
ALL = RESNETS + VGGS + CONVNETS + MLPS + ["vit_medium"]


def n_params(model: nn.Module, head: bool = True) -> int:
    skip = {id(p) for p in model.head.parameters()} if not head else set()
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def test_every_name_is_registered():
    names = set(model_names())
    assert set(ALL) <= names


def test_tiny_resnet18_keeps_32px_to_a_4x4_map_and_pools_512():
    model = create_model("resnet18_tiny", num_classes=10, input_shape=CIFAR).eval()
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    x = torch.randn(2, *CIFAR)
    with torch.no_grad():
        fmap = model.forward_feature_map(x)
        feats = model.forward_features(x)
        logits, f2 = model(x, return_features=True)
    assert fmap.shape == (2, 512, 4, 4)
    assert feats.shape == (2, 512) and model.num_features == 512
    assert torch.allclose(feats, fmap.mean((2, 3)), atol=1e-6)
    assert logits.shape == (2, 10) and torch.equal(f2, feats)


@pytest.mark.parametrize("name, features, body", [
    # torchvision's counts less the 7x7 stem (3*64*49) plus the 3x3 one (3*64*9), without fc.
    ("resnet18_tiny", 512, 11_689_512 - 513_000 - 9_408 + 1_728),
    ("resnet34_tiny", 512, 21_797_672 - 513_000 - 9_408 + 1_728),
    ("resnet50_tiny", 2048, 25_557_032 - 2_049_000 - 9_408 + 1_728),
])
def test_tiny_resnet_counts(name, features, body):
    model = create_model(name, num_classes=10, input_shape=CIFAR)
    assert model.num_features == features
    assert n_params(model, head=False) == body
    assert n_params(model) == body + features * 10 + 10  # 11,173,962 for ResNet-18: the CIFAR count


@pytest.mark.parametrize("name, body", [
    # torchvision's vgg*'s conv stack (its "features"): 9.22M, 9.40M, 14.71M, 20.02M.
    ("vgg11_nobn", 9_220_480), ("vgg13_nobn", 9_404_992), ("vgg16_nobn", 14_714_688), ("vgg19_nobn", 20_024_384),
])
def test_vgg_without_batch_norm(name, body):
    model = create_model(name, num_classes=10, input_shape=CIFAR)
    assert not any(isinstance(m, nn.modules.batchnorm._NormBase) for m in model.modules())
    assert n_params(model, head=False) == body
    assert model.forward_features(torch.randn(2, *CIFAR)).shape == (2, 512) and model.num_features == 512
    big = create_model(name, num_classes=10, input_shape=(3, 64, 64))  # flattened, not pooled: 512 * 2 * 2
    assert big.num_features == 2048 and big.forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 2048)


@pytest.mark.parametrize("name", CONVNETS)
def test_convnets(name):
    width, depth = map(int, name.split("_")[1:])
    model = create_model(name, num_classes=10, input_shape=CIFAR)
    assert len(model.sequential) == depth and model.num_features == 4 * width
    body = (3 * 9 * width + width) + (depth - 1) * (width * 9 * width + width)
    assert n_params(model, head=False) == body
    assert model.forward_features(torch.randn(2, *CIFAR)).shape == (2, 4 * width)
    grey = create_model(name, num_classes=10, input_shape=(1, 28, 28))  # the last pool is adaptive
    assert grey.forward_features(torch.randn(2, 1, 28, 28)).shape == (2, 4 * width)


@pytest.mark.parametrize("name", MLPS)
def test_mlps(name):
    width, depth = map(int, name.split("_")[1:])
    model = create_model(name, num_classes=10, input_shape=CIFAR)
    body = (3072 * width + width) + (depth - 1) * (width * width + width)
    assert n_params(model, head=False) == body and model.num_features == width
    assert sum(isinstance(m, nn.GELU) for m in model.modules()) == depth
    assert model.forward_features(torch.randn(2, *CIFAR)).shape == (2, width)


def test_vit_medium():
    model = create_model("vit_medium", num_classes=10, input_shape=CIFAR)
    net = model.model
    assert (net.embed_dim, len(net.blocks), net.blocks[0].attn.num_heads) == (512, 12, 8)
    assert net.patch_embed.patch_size == (16, 16) and model.num_features == 512
    # Independent blocks (dinopl's list multiplication would share one): 12 x 3.15M + patches, tokens, norm.
    block = (3 * 512 * 512 + 3 * 512) + (512 * 512 + 512) + (2 * 512 * 2048 + 2048 + 512) + 4 * 512
    body = 12 * block + (3 * 16 * 16 * 512 + 512) + 512 + 5 * 512 + 2 * 512
    assert n_params(model, head=False) == body
    assert model.forward_features(torch.randn(2, *CIFAR)).shape == (2, 512)
    small = create_model("vit_medium", num_classes=10, input_shape=CIFAR, patch_size=8)  # dinopl's --tiny_input
    assert small.model.pos_embed.shape[1] == 1 + 16
    with pytest.raises(ValueError, match="patch_size 12"):
        create_model("vit_medium", num_classes=10, input_shape=CIFAR, patch_size=12)


def _norms(model):
    return [m for m in model.modules() if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm))]


@pytest.mark.parametrize("name", ["resnet18_tiny", "vgg11_nobn", "convnet_16_2", "mlp_512_2"])
def test_enc_norm_layer_changes_the_modules(name):
    default = create_model(name, num_classes=10, input_shape=CIFAR)
    built = {}
    for norm in NORM_LAYERS:
        model = create_model(name, num_classes=10, input_shape=CIFAR, enc_norm_layer=norm)
        assert model.forward_features(torch.randn(2, *CIFAR)).shape[1] == model.num_features
        built[norm] = model
    groups = {norm: {(type(m).__name__, getattr(m, "num_groups", None), getattr(m, "num_channels", None))
                     for m in _norms(m)} for norm, m in built.items()}
    assert not groups["Identity"]
    assert groups["BatchNorm"] and all(t.startswith("BatchNorm") for t, _, _ in groups["BatchNorm"])
    assert all(g == c for _, g, c in groups["InstanceNorm"]) and groups["InstanceNorm"]
    assert all(g == c // 8 for _, g, c in groups["GroupNorm8"]) and groups["GroupNorm8"]
    assert all(g == 1 for _, g, _ in groups["LayerNorm"]) and groups["LayerNorm"]
    if name == "resnet18_tiny":  # its default is BatchNorm, the others' none
        assert len(_norms(default)) == len(_norms(built["BatchNorm"])) == 20
    else:
        assert not _norms(default)
    if name == "mlp_512_2":
        assert all(isinstance(m, nn.BatchNorm1d) for m in _norms(built["BatchNorm"]))


def test_unknown_kwargs_and_norms_are_refused():
    for name in ["resnet18_tiny", "vgg16_nobn", "convnet_32_5", "mlp_1024_3", "vit_medium"]:
        with pytest.raises(UnknownKeywords, match="widht"):
            check_model_kwargs(name, {"widht": 2})
    with pytest.raises(UnknownKeywords, match="enc_norm_layer"):
        check_model_kwargs("vit_medium", {"enc_norm_layer": "LayerNorm"})  # dinopl's ViT takes none either
    check_model_kwargs("resnet50_tiny", {"enc_norm_layer": "GroupNorm8", "checkpoint": None})
    with pytest.raises(ValueError, match="enc_norm_layer must be one of BatchNorm"):
        create_model("convnet_16_1", num_classes=10, input_shape=CIFAR, enc_norm_layer="batchnorm")


def test_tiny_resnet_loads_torchvision_and_dinopl_key_names():
    from torchvision.models import resnet18

    model = create_model("resnet18_tiny", num_classes=10, input_shape=CIFAR)
    tv = resnet18(num_classes=10)
    tv.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    assert load_weights(model, tv.state_dict()) == []
    assert torch.equal(model.head.weight, tv.fc.weight) and torch.equal(model.layer4[1].conv2.weight,
                                                                          tv.layer4[1].conv2.weight)
    # dinopl's encoders keep an identity fc: no head in the file, so the fresh one stays.
    body = {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    assert sorted(load_weights(create_model("resnet18_tiny", num_classes=10, input_shape=CIFAR), body)) == [
        "head.bias", "head.weight"]


def test_dino_trainable_can_drop_the_head():
    from trainables.dino.model import remove_class_head

    for name in ["resnet18_tiny", "vgg11_nobn", "convnet_16_1", "mlp_512_1", "vit_medium"]:
        model = create_model(name, num_classes=10, input_shape=CIFAR)
        remove_class_head(model)
        assert model(torch.randn(2, *CIFAR)).shape == (2, model.num_features)


def test_dino_params_take_them_as_encoders():
    from pydantic import ValidationError

    from trainables.dino.params import DinoParams

    p = DinoParams(encoder="resnet18_tiny", encoder_kwargs={"enc_norm_layer": "GroupNorm8"})
    assert p.encoder == "resnet18_tiny"
    with pytest.raises(ValidationError, match="no parameter.s. enc_norm_layer"):
        DinoParams(encoder="vit_medium", encoder_kwargs={"enc_norm_layer": "LayerNorm"})
