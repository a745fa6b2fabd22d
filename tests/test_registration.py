"""One registration contract for trainables, losses, models and datasets: the same decorator, and
an unknown keyword to any entry is an error naming it and the accepted ones, at parse time."""
import os
import time

import pytest
import torch
from pydantic import Field, ValidationError

from trainables.core.registry import UnknownKeywords
from trainables.data import DATASETS, check_dataset, load_dataset, register_dataset
from trainables.distill.params import DistillParams
from trainables.losses import LOSSES, check_loss_params, create_loss, register_loss
from trainables.losses.base import DistillLoss, LossInputs, LossParams
from trainables.models import MODELS, check_model_kwargs, create_model, register_model
from trainables.models.mlp import MLP
from trainables.runtime.trainable import TRAINABLES, TrialParams, get_trainable, register_trainable
from trainables.w2s_probe.params import W2SProbeParams

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "search_spaces", "quickstart.yaml")


@pytest.fixture
def scratch(monkeypatch):
    """Entries a test registers leave with it."""
    for registry in (LOSSES, MODELS, DATASETS, TRAINABLES):
        registry.names()  # the built-ins (and plugins) first
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))


class ScaleParams(LossParams):
    scale: float = Field(1.0, gt=0)


class TinyParams(TrialParams):
    epochs: int = Field(1, ge=1)


def test_every_registry_registers_with_the_same_decorator(scratch):
    @register_loss("test_scaled_ce", params=ScaleParams)
    class ScaledCE(DistillLoss):
        needs_teacher = False

        def forward(self, inputs: LossInputs):
            loss = self.params.scale * torch.nn.functional.cross_entropy(inputs.student_logits, inputs.targets)
            return {"loss": loss}

    @register_model("test_mlp", pretrained=False)
    def test_mlp(num_classes, input_shape, width: int = 8):
        return MLP(num_classes, input_shape, hidden=(width,))

    @register_dataset("test_digits")
    def test_digits(seed: int = 0, fractions: tuple[float, float, float] = (0.5, 0.25, 0.25)):
        return load_dataset("digits", seed=seed, fractions=fractions)

    @register_trainable("test_tiny", params=TinyParams, metric="score", mode="max", description="a test trainable")
    def run_tiny(p, session, ctx):
        return {"score": 1.0}

    # The decorator hands the object back unchanged and the registry records it with its options.
    assert isinstance(ScaledCE, type) and LOSSES.get("test_scaled_ce").obj is ScaledCE
    assert MODELS.get("test_mlp").obj is test_mlp and not MODELS.get("test_mlp").pretrained
    assert DATASETS.get("test_digits").obj is test_digits and DATASETS.get("test_digits").interface == "in-memory"
    assert get_trainable("test_tiny").train_loop is run_tiny and get_trainable("test_tiny").params_model is TinyParams
    assert create_model("test_mlp", num_classes=3, input_shape=(1, 8, 8), width=4).num_features == 4
    assert load_dataset("test_digits", seed=1).num_classes == 10
    with pytest.raises(ValueError, match="registered twice"):
        register_model("test_mlp")(test_mlp)


@pytest.mark.parametrize("register,options,accepted", [
    (register_loss, {"parmas": ScaleParams}, "forwarded, interface, names, params"),
    (register_model, {"pretrianed": True}, "forwarded, layer_groups, names, params, pretrained"),
    (register_dataset, {"availble": None}, "available, fetch, forwarded, names, novel, params, stream"),
])
def test_a_misspelt_registration_option_is_an_error(register, options, accepted):
    with pytest.raises(UnknownKeywords, match=f"has no parameter.s. {next(iter(options))}; accepted: {accepted}"):
        register("test_misspelt", **options)


def test_a_misspelt_trainable_option_is_an_error(scratch):
    with pytest.raises(UnknownKeywords, match="register_trainable.'test_misspelt'. has no parameter.s. metrc; "
                                              "accepted: .*metric.*vocabulary"):
        register_trainable("test_misspelt", params=TrialParams, metrc="val_acc", mode="max",
                           description="")(lambda p, session, ctx: None)


def test_an_entry_must_declare_its_parameters(scratch):
    with pytest.raises(TypeError, match=r"takes \*\*kwargs, so any keyword would pass"):
        register_model("test_swallows")(lambda num_classes, input_shape, **_: None)
    with pytest.raises(TypeError, match=r"takes \*\*kwargs"):
        register_dataset("test_swallows")(lambda seed=0, **_: None)
    with pytest.raises(TypeError, match="forbids unknown keys"):
        register_trainable("test_open", params=dict, metric="m", mode="max", description="")(lambda *a: None)
    with pytest.raises(TypeError, match="needs params="):
        register_loss("test_no_params")(DistillLoss)
    assert "test_swallows" not in MODELS and "test_swallows" not in DATASETS


@pytest.mark.parametrize("check,bad,accepted", [
    (lambda: check_model_kwargs("mlp", {"widht": 2}), "model 'mlp' has no parameter(s) widht",
     "checkpoint, dropout, hidden, input_norm"),
    (lambda: check_model_kwargs("wrn_16_1", {"num_classes": 3}), "model 'wrn_16_1' has no parameter(s) num_classes",
     "checkpoint, dropout, input_norm"),
    (lambda: check_dataset("digits", val_fracton=0.2), "dataset 'digits' has no parameter(s) val_fracton",
     "fractions"),
    (lambda: check_dataset("cifar10", colour=1), "dataset 'cifar10' has no parameter(s) colour",
     "data_root, download, image_size, label_key, memory_limit_gb, val_fraction"),
    (lambda: check_loss_params("kd", {"temprature": 3}), "loss_params.temprature: loss 'kd' has no parameter(s) "
     "temprature", "kd_weight, label_smoothing, label_weight, temperature"),
    (lambda: create_loss("kd", {"temprature": 3}), "loss 'kd' has no parameter(s) temprature", "kd_weight"),
])
def test_an_unknown_keyword_names_itself_and_the_accepted_ones(check, bad, accepted):
    with pytest.raises(ValueError) as err:
        check()
    assert f"{bad}; accepted: {accepted}" in str(err.value)


def test_a_trainable_refuses_unknown_parameters():
    with pytest.raises(ValidationError, match="lr_"):
        get_trainable("distill").params_model.model_validate({"lr_": 0.1})


def test_hub_keywords_are_asked_of_the_library():
    """timm:/tv: models and their aliases hand keywords on; the library, built on the meta device,
    says which it does not take."""
    check_model_kwargs("timm:resnet10t", {"drop_path_rate": 0.1, "pretrained": False, "head": "new"})
    check_model_kwargs("resnet18", {"weights": "IMAGENET1K_V1", "zero_init_residual": True})
    with pytest.raises(UnknownKeywords, match=r"model 'timm:resnet10t' has no parameter\(s\) widht; accepted: "
                                              r"checkpoint, head, input_norm, pretrained, or a keyword timm takes "
                                              r"\(.*unexpected keyword argument 'widht'\)") as err:
        check_model_kwargs("timm:resnet10t", {"drop_path_rate": 0.1, "widht": 2})
    assert err.value.unknown == ["widht"]
    with pytest.raises(UnknownKeywords, match="model 'resnet18' has no parameter.s. colour; .*weights, or a keyword "
                                              "torchvision takes"):
        check_model_kwargs("resnet18", {"colour": 1})


def test_prefixes_and_streamed_datasets_are_registered_providers():
    assert MODELS.prefixes() == ["timm:", "tv:"]
    assert "timm:resnet10t" in MODELS and "tv:resnet18" in MODELS and "timm:resnet_nope" not in MODELS
    assert MODELS.get("tv:resnet18").pretrained and MODELS.get("tv:resnet18").name == "tv:resnet18"
    assert "imagenet" in DATASETS and DATASETS.get("imagenet").interface == "streamed"
    with pytest.raises(ValidationError, match="dataset 'imagenet' is streamed and cannot be used here; in-memory "
                                              "datasets: .*digits"):
        DistillParams(dataset="imagenet")
    with pytest.raises(ValidationError, match="dataset_kwargs.splt: dataset 'imagenet' has no parameter.s. splt; "
                                              "accepted: data_root, split"):
        W2SProbeParams(dataset="imagenet", dataset_kwargs={"data_root": "/data/imagenet", "splt": "val"})


@pytest.mark.parametrize("params,key,accepted", [
    ({"student": "mlp_tiny", "student_kwargs": {"widht": 2}}, "student_kwargs.widht", "checkpoint, dropout"),
    ({"teacher": {"model": "cnn", "model_kwargs": {"widht": 2}}}, "model_kwargs.widht", "input_norm, width"),
    ({"weight_selection": {"source": "cnn", "source_kwargs": {"depht": 2}}}, "source_kwargs.depht", "width"),
    ({"dataset_kwargs": {"val_fracton": 0.2}}, "dataset_kwargs.val_fracton", "fractions"),
])
def test_distill_checks_every_kwargs_field(params, key, accepted):
    with pytest.raises(ValidationError, match=f"{key}: .* has no parameter.s. {key.split('.')[1]}; accepted: "
                                              f".*{accepted}"):
        DistillParams(**params)


def test_a_new_loss_is_one_decorated_class(scratch):
    """What a user's plugin (or a new file in trainables/losses/) does; nothing else to edit."""

    class MarginParams(LossParams):
        margin: float = Field(1.0, ge=0)

    @register_loss("test_margin", params=MarginParams)
    class MarginLoss(DistillLoss):
        needs_teacher = False

        def forward(self, inputs: LossInputs):
            logits = inputs.student_logits
            true = logits.gather(1, inputs.targets.view(-1, 1))
            loss = torch.relu(self.params.margin + logits - true).mean()
            return {"loss": loss}

    loss = create_loss("test_margin", {"margin": 0.5})
    out = loss(LossInputs(student_logits=torch.zeros(4, 3), targets=torch.tensor([0, 1, 2, 0])))
    assert loss.registry_name == "test_margin" and out["loss"].item() == pytest.approx(0.5)
    assert DistillParams(loss="test_margin", loss_params={"margin": 2.0}).loss == "test_margin"
    with pytest.raises(ValidationError, match="loss_params.margni: loss 'test_margin' has no parameter.s. margni; "
                                              "accepted: margin"):
        DistillParams(loss="test_margin", loss_params={"margni": 2.0})


@pytest.mark.parametrize("override,bad,accepted", [
    ("params.student_kwargs={widht: 2}", "widht", "dropout"),
    ("params.dataset_kwargs={val_fracton: 0.2}", "val_fracton", "fractions"),
    ("params.loss_params.temprature=3", "temprature", "temperature"),
])
def test_quickstart_with_an_unknown_keyword_stops_before_ray(override, bad, accepted, run_cli, tmp_path):
    t0 = time.monotonic()
    proc = run_cli(QUICKSTART, "--set", override, timeout=120)
    elapsed = time.monotonic() - t0
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert f"has no parameter(s) {bad}; accepted: " in output and accepted in output, output
    assert "Traceback" not in output, output
    assert elapsed < 30, f"took {elapsed:.0f}s: did Ray start?"
    assert os.listdir(tmp_path) == [], "nothing may be created before the spec is valid (no ray_results/, mlflow.db)"


@pytest.mark.parametrize("override,key", [
    ("params.student_kwargs={widht: 2}", "params.student_kwargs.widht"),
    # A nested model's check names the key inside the model: the error puts the two together.
    ("params.teacher.model_kwargs={widht: 2}", "params.teacher.model_kwargs.widht"),
    ("params.dataset_kwargs={val_fracton: 0.2}", "params.dataset_kwargs.val_fracton"),
])
def test_the_error_points_at_the_key_the_user_wrote(override, key):
    from orchestrator.errors import SpecError
    from orchestrator.space.spec import load_spec

    with pytest.raises(SpecError) as info:
        load_spec(QUICKSTART, [override])
    (issue,) = info.value.issues
    bad = key.rsplit(".", 1)[1]
    assert issue.key == key, issue
    assert issue.message.startswith(("model ", "dataset ")), issue
    assert f"no parameter(s) {bad}; accepted: " in issue.message
    assert not isinstance(issue.value, dict), "the offending value, not the whole enclosing mapping"
