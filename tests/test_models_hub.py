"""timm / torchvision models by name, checkpoints, offline pretrained errors, input normalisation."""
import os
import time

import numpy as np
import pytest
import torch
from pydantic import BaseModel, ValidationError

from trainables.models import ModelName, create_model, is_known_model
from trainables.models.hub import ALIASES, PretrainedUnavailable

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Spec(BaseModel):
    model: ModelName


def test_prefixed_names_validate_against_the_libraries():
    for name in ["timm:resnet18", "timm:vit_small_patch16_224.dino", "tv:alexnet", "tv:vit_b_16", *ALIASES,
                 "dino_resnet50", "resnet56"]:
        assert Spec(model=name).model == name
    for name, problem in [("timm:resnet_nope", "timm has no model 'resnet_nope'"),
                          ("timm:vit_small_patch16_224.nope", "no pretrained tag"),
                          ("tv:resnet_nope", "torchvision has no classification model"),
                          ("resnet_nope", "; or timm:<name> / tv:<name>")]:
        with pytest.raises(ValidationError, match=problem):
            Spec(model=name)
        assert not is_known_model(name)


def test_timm_model_features_and_fresh_head():
    model = create_model("timm:resnet10t", num_classes=7, input_shape=(1, 16, 16)).eval()
    logits, feats = model(torch.randn(2, 1, 16, 16), return_features=True)
    assert logits.shape == (2, 7) and feats.shape == (2, model.num_features)
    assert model.head is model.model.get_classifier() and model.input_norm is None  # random init: the data's


def test_torchvision_model_split_at_its_last_linear_layer():
    model = create_model("alexnet", num_classes=5, input_shape=(3, 64, 64)).eval()
    logits, feats = model(torch.randn(2, 3, 64, 64), return_features=True)
    assert logits.shape == (2, 5) and feats.shape == (2, 4096) and model.head_path == "classifier.6"
    native = create_model("alexnet", num_classes=5, input_shape=(3, 64, 64), head="pretrained")
    assert native(torch.randn(1, 3, 64, 64)).shape == (1, 1000)  # ImageNet label space
    with pytest.raises(ValueError, match="3-channel"):
        create_model("tv:resnet18", num_classes=5, input_shape=(1, 32, 32))


@pytest.mark.parametrize("name", ["timm:vit_small_patch16_224.dino", "alexnet", "dino_resnet50"])
def test_pretrained_offline_fails_fast_with_instructions(name, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    t0 = time.monotonic()
    with pytest.raises(PretrainedUnavailable) as err:
        create_model(name, num_classes=10, input_shape=(3, 32, 32), pretrained=True)
    assert time.monotonic() - t0 < 30
    message = str(err.value)
    assert f"model {name!r}" in message and "checkpoint:" in message and "offline" in message
    assert ("huggingface" in message.lower()) if name.startswith("timm:") else ("https://" in message)


def test_cifar_models_have_no_pretrained_weights():
    with pytest.raises(ValueError, match="'resnet20' has no pretrained weights; .*checkpoint"):
        create_model("resnet20", num_classes=10, input_shape=(3, 32, 32), pretrained=True)


def test_pretrained_torchvision_weights_load_from_the_local_cache(monkeypatch, tmp_path):
    """No network needed when the weights file is already in torch hub's cache."""
    from torchvision.models import ShuffleNet_V2_X0_5_Weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("W2S_OFFLINE", "1")
    reference = create_model("tv:shufflenet_v2_x0_5", num_classes=3, input_shape=(3, 32, 32), head="pretrained")
    native = {("fc." + k[5:]) if k.startswith("head.") else k[5:]: v for k, v in reference.state_dict().items()}
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(native, cache / os.path.basename(ShuffleNet_V2_X0_5_Weights.DEFAULT.url))
    model = create_model("tv:shufflenet_v2_x0_5", num_classes=3, input_shape=(3, 32, 32), pretrained=True,
                         head="pretrained")
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert model.input_norm == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.mark.parametrize("fmt", ["raw.pt", "wrapped.pth", "native.safetensors"])
def test_checkpoint_files_load(fmt, tmp_path):
    source = create_model("timm:resnet10t", num_classes=4, input_shape=(3, 16, 16))
    state = source.state_dict()
    path = str(tmp_path / fmt)
    if fmt == "raw.pt":
        torch.save(state, path)
    elif fmt == "wrapped.pth":
        torch.save({"model": state, "epoch": 3}, path)
    else:  # timm's own key names, as the Hub publishes them
        from safetensors.torch import save_file

        save_file({k[len("model."):]: v.contiguous() for k, v in state.items()}, path)
    loaded = create_model("timm:resnet10t", num_classes=4, input_shape=(3, 16, 16), checkpoint=path)
    for key, value in state.items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # Another label space: the body loads, the head stays fresh.
    other = create_model("timm:resnet10t", num_classes=9, input_shape=(3, 16, 16), checkpoint=path)
    assert torch.equal(other.state_dict()["model.conv1.0.weight"], state["model.conv1.0.weight"])
    assert other.head.out_features == 9


def test_checkpoint_of_another_architecture_is_a_clear_error(tmp_path):
    path = str(tmp_path / "w.pt")
    torch.save(create_model("resnet8", num_classes=10, input_shape=(3, 32, 32)).state_dict(), path)
    with pytest.raises(ValueError, match="does not fit .*missing .*unexpected"):
        create_model("wrn_16_1", num_classes=10, input_shape=(3, 32, 32), checkpoint=path)


def test_input_normalisation_is_converted_numerically():
    """Data normalised with dataset statistics, a model expecting ImageNet's: after adapt_input
    the model sees exactly (raw - mean_model) / std_model."""
    data_mean, data_std = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    model_mean, model_std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    model = create_model("resnet8", num_classes=10, input_shape=(3, 8, 8),
                         input_norm={"mean": list(model_mean), "std": list(model_std)}).eval()
    raw = np.random.default_rng(0).random((4, 3, 8, 8)).astype(np.float32)
    as_data = (raw - np.array(data_mean, np.float32)[:, None, None]) / np.array(data_std, np.float32)[:, None, None]
    as_model = (raw - np.array(model_mean, np.float32)[:, None, None]) / np.array(model_std, np.float32)[:, None, None]
    expected = model.forward_head(model.forward_features(torch.from_numpy(as_model)))
    assert model.adapt_input(data_mean, data_std)
    got = model(torch.from_numpy(as_data))
    assert torch.allclose(got, expected, atol=1e-5)
    assert not any("input_" in k for k in model.state_dict())  # conversions never enter checkpoints
    # Matching statistics need no conversion, and a model with no expectation is left alone.
    assert not model.adapt_input(model_mean, model_std) and torch.allclose(model(torch.from_numpy(as_model)), expected)
    plain = create_model("resnet8", num_classes=10, input_shape=(3, 8, 8))
    assert not plain.adapt_input(data_mean, data_std)


def test_input_norm_option_is_validated():
    with pytest.raises(ValueError, match="no known pretrained input normalisation"):
        create_model("resnet8", num_classes=10, input_shape=(3, 8, 8), input_norm="pretrained")
    with pytest.raises(ValueError, match="input_norm must be one of"):
        create_model("resnet8", num_classes=10, input_shape=(3, 8, 8), input_norm="imagenet!")
    vit = create_model("vit_tiny", num_classes=10, input_shape=(3, 32, 32), input_norm="pretrained", depth=1)
    assert vit.input_norm == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # timm's pretrained_cfg for this model
