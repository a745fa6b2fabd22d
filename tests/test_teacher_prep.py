"""Teacher preparation modes (fr / lp / ft / pt): the recipe is content-addressed and reused,
LP leaves the backbone untouched, FT changes it with a higher head lr."""
import os
import time

import pytest
import torch

from orchestrator.store.cache import ArtifactCache
from trainables.distill.loop import load_data, load_teacher, teacher_recipe
from trainables.distill.trainable import run_distill
from trainables.distill.params import DistillParams
from trainables.distill.teacher import INIT_DEFAULTS, TeacherRecipe, load_teacher_model
from trainables.runtime.engine import head_lr_groups, predict
from trainables.runtime.session import LocalSession
from trainables.runtime.trainable import TrialContext

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    """A 'pretrained' backbone: a cnn_small trained briefly from scratch (fr), saved as a checkpoint."""
    tmp = tmp_path_factory.mktemp("backbone")
    ctx = TrialContext(artifacts=ArtifactCache(str(tmp / "cache")))
    entry = load_teacher(DistillParams(teacher={"model": "cnn_small", "epochs": 3, "lr": 0.1}), ctx)
    return entry.file("model.pt"), torch.load(entry.file("model.pt"))


def prepared(params, ctx):
    run_distill(params, LocalSession(CPU), ctx)
    entry = ctx.artifacts.get_or_create("teacher", teacher_recipe(params), None)
    return entry, torch.load(entry.file("model.pt"))


def test_lp_freezes_the_backbone_ft_changes_it_and_recipes_are_reused(backbone, tmp_path):
    path, start = backbone
    ctx = TrialContext(artifacts=ArtifactCache(str(tmp_path / "cache")))
    states = {}
    for init in ("lp", "ft", "pt"):
        params = DistillParams(teacher={"model": "cnn_small", "init": init, "checkpoint": path, "epochs": 2},
                               student="mlp_tiny", epochs=1)
        entry, states[init] = prepared(params, ctx)
        assert entry.meta["init"] == init and 0.0 <= entry.meta["test_acc"] <= 1.0
    body = [k for k in start if not k.startswith("head.")]
    assert all(torch.equal(states["lp"][k], start[k]) for k in body)  # weights and BN statistics alike
    assert not torch.equal(states["lp"]["head.weight"], start["head.weight"])
    assert not all(torch.equal(states["ft"][k], start[k]) for k in body)
    assert all(torch.equal(states["pt"][k], start[k]) for k in body)
    misses = ctx.artifacts.stats.misses
    # A second trial naming the same recipe (another student seed) reuses the prepared teacher.
    again = DistillParams(teacher={"model": "cnn_small", "init": "lp", "checkpoint": path, "epochs": 2},
                          student="mlp_tiny", epochs=1, seed=1)
    run_distill(again, LocalSession(CPU), ctx)
    assert ctx.artifacts.stats.misses == misses and ctx.artifacts.stats.hits >= 1


def test_lp_on_a_trained_backbone_learns(backbone, tmp_path):
    path, _ = backbone
    ctx = TrialContext(artifacts=ArtifactCache(str(tmp_path / "cache")))
    params = DistillParams(teacher={"model": "cnn_small", "init": "lp", "checkpoint": path, "epochs": 10, "lr": 0.01},
                           student="mlp_tiny", epochs=1)
    entry, _ = prepared(params, ctx)
    assert entry.meta["val_acc"] > 0.5  # chance is 0.1


def test_online_teacher_reproduces_cached_logits_through_input_conversion(backbone, tmp_path):
    """A backbone that expects other input statistics than the data's: the prepared teacher, loaded
    again for online use, gives exactly the cached logits."""
    path, _ = backbone
    ctx = TrialContext(artifacts=ArtifactCache(str(tmp_path / "cache")))
    params = DistillParams(teacher={"model": "cnn_small", "init": "lp", "checkpoint": path, "epochs": 1,
                                    "model_kwargs": {"input_norm": {"mean": [0.3], "std": [2.0]}}},
                           student="mlp_tiny", epochs=1, teacher_mode="online")
    entry, _ = prepared(params, ctx)
    assert entry.meta["input_norm"] == [[0.3], [2.0]]
    data = load_data(params)
    teacher = load_teacher_model(params.teacher, entry, data, CPU)
    assert teacher.input_scale is not None  # digits are normalised with their own statistics
    assert torch.allclose(predict(teacher, data.train_x), torch.load(entry.file("train_logits.pt")), atol=1e-5)


def test_teacher_recipe_validation_and_mode_defaults():
    for recipe, problem in [({"init": "lp"}, "set exactly one of teacher.pretrained"),
                            ({"init": "fr", "pretrained": True}, "fr trains from scratch"),
                            ({"model": "resnet20", "init": "ft", "pretrained": True}, "has no pretrained weights"),
                            ({"init": "ft", "model_kwargs": {"pretrained": True}}, "set teacher.pretrained"),
                            ({"init": "lp", "checkpoint": "/nope/w.pt"}, "does not exist")]:
        with pytest.raises(ValueError, match=problem):
            TeacherRecipe.model_validate(recipe)
    ft = TeacherRecipe(model="vit_tiny", init="ft", pretrained=True)
    assert (ft.optimizer, ft.lr, ft.head_lr_mult, ft.weight_decay, ft.schedule) == ("adamw", 1e-4, 10.0, 5e-4, "constant")
    # Spelling the defaults out names the same cached teacher.
    explicit = TeacherRecipe(model="vit_tiny", init="ft", pretrained=True, **INIT_DEFAULTS["ft"])
    assert explicit.model_dump() == ft.model_dump()
    assert TeacherRecipe().lr == 0.05 and TeacherRecipe().optimizer == "sgd"  # fr keeps the old defaults


def test_head_lr_groups():
    from trainables.models import create_model

    model = create_model("cnn_small", num_classes=10, input_shape=(1, 8, 8))
    groups = head_lr_groups(model, 1e-4, 10.0)
    assert len(groups) == 2 and groups[1]["lr"] == pytest.approx(1e-3)
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.head.parameters()}
    assert len(head_lr_groups(model, 1e-4, 1.0)) == 1


def test_a_checkpoint_enters_the_key_by_content(tmp_path):
    from trainables.distill.teacher import recipe_fields

    path = tmp_path / "backbone.pt"
    torch.save({"w": torch.zeros(3)}, path)
    first = recipe_fields(TeacherRecipe(model="cnn_small", init="lp", checkpoint=str(path)))
    torch.save({"w": torch.ones(3)}, path)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new mtime even on coarse clocks
    second = recipe_fields(TeacherRecipe(model="cnn_small", init="lp", checkpoint=str(path)))
    assert first["checkpoint"] == second["checkpoint"] and first["checkpoint_sha256"] != second["checkpoint_sha256"]
