"""Sel-CL in the ``distill`` trainable: ``teacher.init: selcl`` (the teacher is the stage's
classifier), ``student_init: selcl`` (the student's own stage: its weights with a fresh head, the
training set cut to its selection), how the two share one recipe, what is refused, and the cache
keys of teachers that do not use it."""
from __future__ import annotations

import json
import math

import pytest
import torch

from orchestrator.store.cache import ArtifactCache
from trainables.data import load_dataset
from trainables.distill.loop import build_student, load_student_selcl, selected_subset
from trainables.distill.params import DistillParams
from trainables.distill.teacher import TeacherRecipe, recipe_fields
from trainables.distill.trainable import run_distill
from trainables.models import create_model
from trainables.runtime.engine import seed_everything
from trainables.runtime.session import LocalSession
from trainables.runtime.trainable import TrialContext
from trainables.selcl.config import SelCLConfig

CPU = torch.device("cpu")
TINY = {"epochs": 2, "batch_size": 128, "milestones": [], "warmup_epochs": 1, "uns_queue": 256,
        "queue_per_class": 20, "sup_queue_begin": 1, "k_val": 10, "low_dim": 16, "augment": "simple", "seed": 1}


def entries(kind_dir):
    """The cache entries of one kind (its lock files left out)."""
    return [d for d in kind_dir.iterdir() if not d.name.startswith(".")]


def params(**over):
    base = dict(dataset="digits", label_noise={"kind": "symmetric", "rate": 0.3, "seed": 42},
                teacher={"model": "cnn_small", "init": "selcl"}, teacher_mode="online", student="cnn",
                student_init="selcl", selcl=TINY, loss="kd", epochs=1, batch_size=64, lr=0.05)
    base.update(over)
    return DistillParams(**base)


def test_a_selcl_teacher_takes_its_recipe_and_refuses_the_keys_it_would_not_read():
    t = TeacherRecipe(model="cnn", init="selcl")
    assert t.selcl == SelCLConfig() and t.lr is None and t.optimizer is None  # no fr defaults filled in
    with pytest.raises(ValueError, match="epochs: init selcl trains"):
        TeacherRecipe(model="cnn", init="selcl", epochs=5)
    with pytest.raises(ValueError, match="mixup_alpha: init selcl"):
        TeacherRecipe(model="cnn", init="selcl", mixup_alpha=1.0)
    with pytest.raises(ValueError, match="selcl: only init selcl reads it"):
        TeacherRecipe(model="cnn", selcl={})
    # The full dump (how recipes travel to trials) validates again to the same recipe.
    assert TeacherRecipe.model_validate(t.model_dump()) == t


def test_teachers_without_selcl_keep_their_cache_keys():
    fields = recipe_fields(TeacherRecipe(model="cnn", epochs=3))
    assert "selcl" not in fields and fields["init"] == "fr"
    with_selcl = recipe_fields(TeacherRecipe(model="cnn", init="selcl", selcl={"k_val": 5}))
    assert with_selcl["selcl"]["k_val"] == 5


def test_the_teacher_takes_the_students_selcl_unless_it_names_its_own():
    p = params()
    assert p.teacher.selcl == p.selcl == SelCLConfig(**TINY)
    own = params(teacher={"model": "cnn_small", "init": "selcl", "selcl": {**TINY, "k_val": 7}})
    assert own.teacher.selcl.k_val == 7 and own.selcl.k_val == 10
    assert DistillParams.model_validate(p.model_dump()) == p


def test_what_selcl_cannot_follow_is_refused():
    with pytest.raises(ValueError, match="only student_init selcl"):
        params(student_init="random", teacher={"model": "cnn_small"})
    with pytest.raises(ValueError, match="fixed views of the whole training set"):
        params(augment="flip_crop", teacher_mode="cached")
    with pytest.raises(ValueError, match="student_init"):
        params(vectorize=2)
    with pytest.raises(ValueError, match="student_init selcl"):
        build = __import__("trainables.init", fromlist=["init_student"]).init_student
        build("cnn", {}, "selcl", None, num_classes=10, input_shape=(1, 8, 8))


def test_selected_subset_cuts_only_the_training_split():
    data = load_dataset("digits", seed=0)
    keep = torch.zeros(len(data.train_y), dtype=torch.bool)
    keep[[0, 5, 9]] = True
    cut = selected_subset(data, keep)
    assert torch.equal(cut.train_x, data.train_x[[0, 5, 9]]) and torch.equal(cut.train_y, data.train_y[[0, 5, 9]])
    assert cut.val_x is data.val_x and cut.test_y is data.test_y and cut.meta["selcl_selected"] == 3


def test_distill_runs_both_stages_once_and_trains_the_student_on_its_selection(tmp_path):
    cache = tmp_path / "cache"
    ctx = TrialContext(artifacts=ArtifactCache(str(cache)), checkpoint_every=0)
    p = params()
    session = LocalSession(CPU)
    final = run_distill(p, session, ctx)
    assert math.isfinite(final["train_loss"]) and 0.0 <= final["test_acc"] <= 1.0
    teacher_dir, = entries(cache / "teacher")
    student_dir, = entries(cache / "selcl")
    teacher_meta = json.loads((teacher_dir / "teacher.json").read_text())
    assert teacher_meta["init"] == "selcl" and teacher_meta["model"] == "cnn_small"
    assert len(json.loads((teacher_dir / "selcl.json").read_text())["history"]) == TINY["epochs"]
    selected = torch.load(student_dir / "selected.pt")
    assert final["selcl_selected"] == int(selected.sum()) < len(selected)
    # Under 30 % noise the student's stage keeps mostly right labels (digits: 70 % of the labels are).
    assert final["selcl_selected_precision"] > 0.75
    # The student: the stage's weights with a fresh head (the same head a random init draws).
    entry = load_student_selcl(p, ctx)
    data = load_dataset("digits", seed=0)
    seed_everything(p.seed)
    student = build_student(p, data, None, entry)
    stage = torch.load(student_dir / "model.pt")
    seed_everything(p.seed)
    fresh = create_model("cnn", num_classes=10, input_shape=data.input_shape)
    for key, value in student.state_dict().items():
        want = fresh.state_dict()[key] if key.startswith("head.") else stage[key]
        assert torch.equal(value, want), key
    assert not torch.equal(student.state_dict()["head.weight"], stage["head.weight"])
    # Another trial and a control of the same recipe reuse both stages.
    run_distill(params(seed=1, loss="ce"), LocalSession(CPU), ctx)
    assert len(entries(cache / "teacher")) == 1 and len(entries(cache / "selcl")) == 1


def test_the_driver_prepares_the_teacher_with_the_students_selcl(tmp_path):
    """prepare_distill trains a Sel-CL teacher up front with the recipe the trials give it (the
    student's selcl when it names none), and leaves it to the trials when that recipe is searched."""
    from trainables.distill.loop import teacher_recipe
    from trainables.distill.prepare import prepare_distill

    fixed = {"dataset": "digits", "teacher": {"model": "cnn_small", "init": "selcl"}, "student": "cnn",
             "student_init": "selcl", "selcl": TINY, "teacher_mode": "online",
             "label_noise": {"kind": "symmetric", "rate": 0.2, "seed": 3}}
    ctx = TrialContext(artifacts=ArtifactCache(str(tmp_path / "cache")))
    out = prepare_distill(fixed, {"seed"}, ctx)
    trial_entry = ctx.artifacts.get_or_create("teacher", teacher_recipe(DistillParams(**fixed)), None)
    assert out["teacher_cache_id"] == trial_entry.key and trial_entry.meta["init"] == "selcl"
    assert prepare_distill(fixed, {"seed", "selcl.k_val"}, ctx) is None


def test_an_online_teacher_in_train_mode_normalises_with_the_batch_and_updates_its_statistics():
    from trainables.training.classifier_loop import OnlineTeacher

    seed_everything(0)
    model = create_model("cnn_small", num_classes=10, input_shape=(1, 8, 8))
    x = torch.randn(16, 1, 8, 8) * 3 + 1
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    reference = __import__("copy").deepcopy(model)
    with torch.no_grad():
        want_train = reference.train()(x)
    before = bn.running_mean.clone()
    got, _ = OnlineTeacher(model, train_bn=True).outputs(None, x)
    assert torch.allclose(got, want_train, atol=1e-5) and not torch.equal(bn.running_mean, before)
    assert all(not p.requires_grad for p in model.parameters())
    frozen = __import__("copy").deepcopy(reference)
    stats = [m.running_mean.clone() for m in frozen.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    got_eval, _ = OnlineTeacher(frozen).outputs(None, x)
    after = [m.running_mean for m in frozen.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(stats, after))
    assert not torch.allclose(got_eval, want_train, atol=1e-3)


def test_teacher_bn_train_needs_an_online_teacher_of_a_single_trial():
    with pytest.raises(ValueError, match="teacher_bn: train runs the teacher's batch norms"):
        params(teacher_bn="train", teacher_mode="cached")
    with pytest.raises(ValueError, match="teacher_bn"):
        params(teacher_bn="train", student_init="random", selcl={}, teacher={"model": "cnn_small"}, vectorize=2)
    assert params(teacher_bn="train").teacher_bn == "train"
