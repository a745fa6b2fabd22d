"""Weight selection: selected tensors are the strided slices of the teacher's; ViT-S -> ViT-T,
ConvNeXt-T -> ConvNeXt-F and CIFAR ResNet-56 -> ResNet-20 work; student_init in the trainable."""
import numpy as np
import pytest
import torch

from orchestrator.store.cache import ArtifactCache
from trainables.distill.loop import build_student, load_data, load_teacher
from trainables.distill.trainable import run_distill
from trainables.distill.params import DistillParams
from trainables.init import select_weights, uniform_indices
from trainables.init.weight_selection import IndexSets, select_tensor
from trainables.models import create_model
from trainables.runtime.session import LocalSession
from trainables.runtime.trainable import TrialContext

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_uniform_indices_follow_the_paper():
    assert uniform_indices(384, 192).tolist() == list(range(0, 384, 2))  # step D/d when it divides
    assert uniform_indices(96, 32).tolist() == list(range(0, 96, 3))
    assert uniform_indices(10, 4).tolist() == np.round(np.linspace(0, 9, 4)).astype(int).tolist()  # [0, 3, 6, 9]


def test_selection_equals_strided_slices_and_is_consistent():
    g = torch.Generator().manual_seed(0)
    teacher = {"a.weight": torch.randn(8, 6, 3, 3, generator=g), "a.bias": torch.randn(8, generator=g),
               "b.weight": torch.randn(4, 8, generator=g), "head.weight": torch.randn(10, 4, generator=g),
               "blk.attn.qkv.weight": torch.randn(12, 8, generator=g), "n": torch.tensor(7)}
    student = {"a.weight": torch.zeros(4, 3, 3, 3), "a.bias": torch.zeros(4), "b.weight": torch.zeros(2, 4),
               "head.weight": torch.zeros(5, 2), "blk.attn.qkv.weight": torch.zeros(6, 4), "n": torch.tensor(0)}
    out = select_weights(student, teacher)
    assert "head.weight" not in out  # the head is skipped
    assert torch.equal(out["a.weight"], teacher["a.weight"][::2, ::2])  # 3x3 kernels kept whole
    assert torch.equal(out["a.bias"], teacher["a.bias"][::2])
    assert torch.equal(out["b.weight"], teacher["b.weight"][::2, ::2])
    qkv = teacher["blk.attn.qkv.weight"]  # q, k, v blocks of 4 rows, each halved on its own
    assert torch.equal(out["blk.attn.qkv.weight"], torch.cat([qkv[0:4:2, ::2], qkv[4:8:2, ::2], qkv[8:12:2, ::2]]))
    assert out["n"].item() == 7
    first = select_weights(student, teacher, method="consecutive")
    assert torch.equal(first["a.weight"], teacher["a.weight"][:4, :3]) and torch.equal(first["b.weight"], teacher["b.weight"][:2, :4])
    # random: one index set per logical dimension (8 -> 4 here), shared by every tensor that has it;
    # sets are drawn in first-use order (a.weight dim 0, a.weight dim 1, then b.weight dim 0).
    rnd = select_weights(student, teacher, method="random", seed=3)
    sets = IndexSets("random", 3)
    i8, i6, i4 = sets.get(8, 4), sets.get(6, 3), sets.get(4, 2)
    assert i8.tolist() == sorted(set(i8.tolist())) and max(i8) < 8
    assert torch.equal(rnd["a.weight"], teacher["a.weight"][i8][:, i6])
    assert torch.equal(rnd["a.bias"], teacher["a.bias"][i8])
    assert torch.equal(rnd["b.weight"], teacher["b.weight"][i4][:, i8])


def test_selection_errors_are_clear():
    sets = IndexSets()
    with pytest.raises(ValueError, match="rank 2 .* student rank 4"):
        select_tensor(torch.zeros(4, 4), (2, 2, 1, 1), sets, key="fc1")
    with pytest.raises(ValueError, match="teacher is smaller than the student along dim 0"):
        select_tensor(torch.zeros(4, 4), (8, 2), sets, key="w")
    with pytest.raises(ValueError, match="no same-named teacher tensor .*extra.weight"):
        select_weights({"extra.weight": torch.zeros(2)}, {"w": torch.zeros(4)})
    with pytest.raises(ValueError, match="method must be one of"):
        IndexSets("strided")


def test_vit_small_to_vit_tiny_and_convnext_tiny_to_femto():
    x = torch.randn(2, 3, 32, 32)
    for big, small in (("vit_small", "vit_tiny"), ("convnext_tiny", "convnext_femto")):
        teacher = create_model(big, num_classes=10, input_shape=(3, 32, 32))
        student = create_model(small, num_classes=10, input_shape=(3, 32, 32))
        t, selected = teacher.state_dict(), select_weights(student.state_dict(), teacher.state_dict())
        student.load_state_dict(selected, strict=False)
        s = student.state_dict()
        if big == "vit_small":
            assert torch.equal(s["model.pos_embed"], t["model.pos_embed"][..., ::2])
            assert torch.equal(s["model.blocks.11.mlp.fc2.weight"], t["model.blocks.11.mlp.fc2.weight"][::2, ::2])
            assert torch.equal(s["model.norm.weight"], t["model.norm.weight"][::2])  # ViT's final norm transfers
        else:
            # first-N: femto's stage 2 has 6 blocks, taken from the first 6 of tiny's 9
            assert torch.equal(s["model.stages.2.blocks.5.mlp.fc1.weight"], t["model.stages.2.blocks.5.mlp.fc1.weight"][::2, ::2])
            assert torch.equal(s["model.stages.1.downsample.1.weight"], t["model.stages.1.downsample.1.weight"][::2, ::2])
            assert "model.head.norm.weight" not in selected  # ConvNeXt's final norm sits in the head
        assert not any("head" in k for k in selected) and len(selected) == len(s) - sum("head" in k for k in s)
        assert student(x).shape == (2, 10)


def test_cifar_resnet56_to_resnet20_copies_the_first_blocks():
    teacher = create_model("resnet56", num_classes=100, input_shape=(3, 32, 32))
    student = create_model("resnet20", num_classes=100, input_shape=(3, 32, 32))
    selected = select_weights(student.state_dict(), teacher.state_dict())
    t = teacher.state_dict()
    assert all(torch.equal(v, t[k]) for k, v in selected.items())  # same widths: first blocks, verbatim
    assert "layer3.2.conv2.0.weight" in selected and "head.weight" not in selected


FAST_TEACHER = {"model": "cnn", "epochs": 2, "lr": 0.1}


def test_student_init_weight_selection_from_the_trained_teacher(tmp_path):
    ctx = TrialContext(artifacts=ArtifactCache(str(tmp_path / "cache")))
    params = DistillParams(teacher=FAST_TEACHER, student="cnn_small", student_init="weight_selection", epochs=1)
    entry = load_teacher(params, ctx)
    data = load_data(params)
    torch.manual_seed(0)
    student = build_student(params, data, entry)
    teacher_state = torch.load(entry.file("model.pt"))
    s = student.state_dict()
    assert torch.equal(s["body.0.0.weight"], teacher_state["body.0.0.weight"][::2])  # 1 input channel kept
    assert torch.equal(s["body.4.0.weight"], teacher_state["body.4.0.weight"][::2, ::2])
    torch.manual_seed(0)
    random_init = build_student(params.model_copy(update={"student_init": "random"}), data, entry)
    assert torch.equal(random_init.state_dict()["head.weight"], s["head.weight"])  # same RNG stream otherwise
    final = run_distill(params, LocalSession(torch.device("cpu")), ctx)
    assert 0.0 <= final["val_acc"] <= 1.0


def test_student_init_from_a_checkpoint_and_validation(tmp_path):
    path = tmp_path / "student.pt"
    reference = create_model("mlp_tiny", num_classes=10, input_shape=(1, 8, 8))
    torch.save({"state_dict": reference.state_dict()}, path)
    ctx = TrialContext(artifacts=ArtifactCache(str(tmp_path / "cache")))
    params = DistillParams(teacher=FAST_TEACHER, student="mlp_tiny", student_init=str(path), epochs=1)
    student = build_student(params, load_data(params), load_teacher(params, ctx))
    assert all(torch.equal(student.state_dict()[k], v) for k, v in reference.state_dict().items())
    with pytest.raises(ValueError, match="student_init: pretrained needs a model with pretrained weights"):
        DistillParams(student="resnet20", student_init="pretrained")
    with pytest.raises(ValueError, match="student_init must be one of .* does not exist"):
        DistillParams(student_init=str(tmp_path / "nope.pt"))
    with pytest.raises(ValueError, match="unknown model 'timm:nope'"):
        DistillParams(student_init="weight_selection", weight_selection={"source": "timm:nope"})
