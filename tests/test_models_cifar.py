"""CIFAR model families: output and feature shapes on CIFAR- and digits-size inputs, and parameter
counts against the published ones (RepDistiller/mdistiller models, 100 classes)."""
import pytest
import torch

from trainables.models import Classifier, create_model, is_known_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Published parameter counts (millions, 100 classes), peers-perf.md B.2; MobileNetV2 / ShuffleNets
# as usually quoted for the RepDistiller versions.
PUBLISHED_M = {"resnet32x4": 7.42, "resnet8x4": 1.23, "vgg13": 9.46, "vgg8": 3.96, "wrn_40_2": 2.25,
               "wrn_16_2": 0.70, "wrn_40_1": 0.57, "resnet56": 0.86, "resnet20": 0.28, "resnet110": 1.73,
               "resnet32": 0.47, "mobilenetv2": 0.81, "shufflenetv1": 0.95, "shufflenetv2": 1.36}
FEATURES = {"resnet8": 64, "resnet14": 64, "resnet20": 64, "resnet32": 64, "resnet44": 64, "resnet56": 64,
            "resnet110": 64, "resnet8x4": 256, "resnet32x4": 256, "wrn_16_1": 64, "wrn_16_2": 128, "wrn_40_1": 64,
            "wrn_40_2": 128, "vgg8": 512, "vgg11": 512, "vgg13": 512, "vgg16": 512, "vgg19": 512,
            "mobilenetv2": 1280, "shufflenetv1": 960, "shufflenetv2": 1024}


@pytest.mark.parametrize("name", sorted(FEATURES))
def test_cifar_model_shapes_and_size(name):
    assert is_known_model(name)
    model = create_model(name, num_classes=100, input_shape=(3, 32, 32)).eval()
    assert isinstance(model, Classifier) and model.num_features == FEATURES[name]
    x = torch.randn(2, 3, 32, 32)
    logits, feats = model(x, return_features=True)
    assert logits.shape == (2, 100) and feats.shape == (2, FEATURES[name])
    assert torch.allclose(model.forward_features(x), feats) and torch.allclose(model.forward_head(feats), logits)
    if name in PUBLISHED_M:
        params = sum(p.numel() for p in model.parameters()) / 1e6
        assert params == pytest.approx(PUBLISHED_M[name], rel=0.01), params


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "vgg8", "mobilenetv2", "shufflenetv1", "shufflenetv2"])
def test_cifar_models_take_grey_digits(name):
    """1x8x8 (digits) and 1x28x28 (MNIST) inputs: the stem follows the channels, pooling adapts."""
    for shape in ((1, 8, 8), (1, 28, 28)):
        model = create_model(name, num_classes=10, input_shape=shape).eval()
        logits, feats = model(torch.randn(3, *shape), return_features=True)
        assert logits.shape == (3, 10) and feats.shape == (3, FEATURES[name]) and torch.isfinite(logits).all()


def test_resnet_depth_is_checked():
    from trainables.models.cifar_resnet import CifarResNet

    with pytest.raises(ValueError, match="6n\\+2"):
        CifarResNet(21, (16, 16, 32, 64), 10, (3, 32, 32))


def test_cifar_model_trains_one_step():
    model = create_model("resnet8", num_classes=10, input_shape=(3, 32, 32))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    before = torch.nn.functional.cross_entropy(model(x), y)
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert torch.nn.functional.cross_entropy(model(x), y) < before
