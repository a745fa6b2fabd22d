"""The dino trainable's mechanism, without Ray: the random teacher stays put while the student's
features move, EMA and prev_epoch teachers follow the student as their formulas say, the centre
moves with its momentum, crops, the kNN probe on a hand-built example, and parameter checks.
Whether the student beats the random teacher is a finding (docs), not asserted here."""
import copy
import math

import numpy as np
import pytest
import torch

from trainables.data import load_dataset
from trainables.dino.crops import forward_crops, multicrop, random_resized_crops
from trainables.dino.loop import copy_student, ema_momentum, ema_update, train_dino
from trainables.dino.model import NormalizedLinear, init_student_teacher
from trainables.dino.params import DinoParams
from trainables.dino.probes import knn_accuracy
from trainables.losses import create_loss
from trainables.runtime.session import LocalSession

TINY = {"encoder": "mlp_tiny", "head": {"hidden_dims": [32], "bottleneck_dim": 16, "out_dim": 64},
        "crops": {"global_crops": 1, "global_scale": [1.0, 1.0], "hflip": False},
        "loss_params": {"teacher_temp": 0.1, "student_temp": 0.1, "pairing": "same"},
        "epochs": 2, "warmup_epochs": 0, "batch_size": 128, "lr": 5e-3, "probe_every": 1,
        "probe_epochs": 2, "freeze_last_layer_epochs": 0, "student_init": "random", "student_init_seed": 1}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


class RecordingSession(LocalSession):
    """Keeps a copy of every checkpoint (a state dict holds the live tensors), not just the last."""

    def __init__(self):
        super().__init__(torch.device("cpu"))
        self.states = []

    def report(self, metrics, checkpoint=None):
        super().report(metrics, checkpoint)
        self.states.append(copy.deepcopy(checkpoint))


def run(digits, **overrides):
    p = DinoParams.model_validate({**TINY, **overrides})
    session = RecordingSession()
    train_dino(p, digits, session, checkpoint_every=1)
    return p, session


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def param_state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_random_teacher_stays_put_while_the_student_learns(digits, one_torch_thread):
    p, session = run(digits, teacher_mode="no_update")
    student0, teacher0 = init_student_teacher(p, digits)
    final = session.states[-1]
    teacher_params = {k: final["teacher"][k] for k in param_state(teacher0)}
    assert same_state(teacher_params, param_state(teacher0))
    # The student's encoder features on real images moved away from where they started.
    student1, _ = init_student_teacher(p, digits)
    student1.load_state_dict(final["student"])
    x = digits.val_x[:64]
    before, after = student0.encoder.eval()(x), student1.encoder.eval()(x)
    assert (before - after).abs().max() > 1e-3
    history = session.history
    assert [h["epoch"] for h in history] == [1, 2]
    for h in history:
        assert 0.0 <= h["knn_acc"] <= 1.0 and 0.0 <= h["linear_acc"] <= 1.0 and math.isfinite(h["train_loss"])
        assert 0.0 <= h["teacher_knn_acc"] <= 1.0 and 0.0 <= h["teacher_linear_acc"] <= 1.0


def test_student_copy_of_teacher_starts_identical(digits):
    p = DinoParams.model_validate({**TINY, "student_init": "teacher"})
    student, teacher = init_student_teacher(p, digits)
    assert same_state(student.state_dict(), teacher.state_dict())
    assert not any(q.requires_grad for q in teacher.parameters())
    for seed in (3, None):  # None: the teacher's stream continues, never the teacher's draws again
        other, t = init_student_teacher(DinoParams.model_validate({**TINY, "student_init_seed": seed,
                                                                  "teacher_init_seed": 2, "seed": 2}), digits)
        assert not same_state(param_state(other), param_state(t))


def test_ema_update_is_the_formula():
    torch.manual_seed(0)
    teacher, student = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    t0, s0 = param_state(teacher), param_state(student)
    ema_update(teacher, student, 0.9)
    for name, value in teacher.named_parameters():
        expected = 0.9 * t0[name].numpy() + 0.1 * s0[name].numpy()
        np.testing.assert_allclose(value.detach().numpy(), expected, rtol=1e-6, atol=1e-7)


def test_ema_momentum_schedule_is_a_cosine_from_base_to_final():
    p = DinoParams.model_validate({**TINY, "teacher_momentum": 0.99, "teacher_momentum_final": 1.0})
    assert ema_momentum(p, 0, 101) == pytest.approx(0.99)
    assert ema_momentum(p, 50, 101) == pytest.approx(0.995)
    assert ema_momentum(p, 100, 101) == pytest.approx(1.0)


def test_ema_teacher_moves_with_momentum_in_training(digits, one_torch_thread):
    # Momentum 0 (constant): the teacher is the student after every step.
    _, session = run(digits, teacher_mode="ema", teacher_momentum=0.0, teacher_momentum_final=0.0)
    final = session.states[-1]
    for name, value in final["teacher"].items():
        if "running" not in name and "num_batches" not in name:
            assert torch.equal(value, final["student"][name]), name
    # Momentum 1: it never moves.
    p, session = run(digits, teacher_mode="ema", teacher_momentum=1.0, teacher_momentum_final=1.0)
    _, teacher0 = init_student_teacher(p, digits)
    assert same_state({k: session.states[-1]["teacher"][k] for k in param_state(teacher0)}, param_state(teacher0))


def test_prev_epoch_teacher_is_the_student_of_the_previous_update(digits, one_torch_thread):
    p, session = run(digits, teacher_mode="prev_epoch", teacher_update_every=2, epochs=3)
    _, teacher0 = init_student_teacher(p, digits)
    s1, s2, s3 = session.states
    assert same_state({k: s1["teacher"][k] for k in param_state(teacher0)}, param_state(teacher0))
    assert same_state(s2["teacher"], s2["student"])
    assert same_state(s3["teacher"], s2["student"]) and not same_state(s3["teacher"], s3["student"])


def test_centre_moves_with_its_momentum():
    loss = create_loss("dino", {"teacher_center_momentum": 0.8, "pairing": "same"}, out_dim=5)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(1, 6, 5, generator=gen) for _ in range(2)]
    c = np.zeros((1, 5))
    for t in batches:
        loss([torch.randn(6, 5, generator=gen)], t)
        c = 0.8 * c + 0.2 * t.numpy().mean(axis=(0, 1))
        np.testing.assert_allclose(loss.teacher_center.numpy(), c, rtol=1e-5, atol=1e-6)
    assert torch.equal(loss.student_center, torch.zeros(1, 5))  # student momentum NaN: no centring


def test_knn_probe_on_a_hand_built_example():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.05]])
    labels = torch.tensor([0, 0, 1, 1, 2])
    # Cosine similarity ignores scale: (5, 0.2) points along class 0, (0.2, 3) along class 1.
    query = torch.tensor([[5.0, 0.2], [0.2, 3.0], [-2.0, 0.0]])
    assert knn_accuracy(train, labels, query, torch.tensor([0, 1, 2]), k=1, num_classes=3) == 1.0
    # k=3, majority vote: the third query's nearest is the class-2 point, the next two (cosine 0
    # and -0.11) are class 1, so the vote says 1.
    assert knn_accuracy(train, labels, query, torch.tensor([0, 1, 1]), k=3, num_classes=3, temperature=None) == 1.0
    assert knn_accuracy(train, labels, query, torch.tensor([0, 1, 2]), k=3, num_classes=3,
                        temperature=None) == pytest.approx(2 / 3)
    assert knn_accuracy(train, labels, query, torch.tensor([1, 0, 0]), k=1, num_classes=3) == pytest.approx(0.0)


def test_knn_weighted_vote_favours_closer_neighbours():
    # Two far class-1 points against one near class-0 point: majority says 1, a sharp weighting 0.
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.05, 1.0]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.3]])
    assert knn_accuracy(train, labels, query, torch.tensor([1]), k=3, num_classes=2, temperature=None) == 1.0
    assert knn_accuracy(train, labels, query, torch.tensor([0]), k=3, num_classes=2, temperature=0.01) == 1.0


def test_crops_at_full_scale_are_the_image_and_flips_mirror():
    x = torch.randn(3, 1, 8, 8)
    np.testing.assert_allclose(random_resized_crops(x, 8, (1.0, 1.0), hflip=False).numpy(), x.numpy(), atol=1e-5)
    flipped = random_resized_crops(x.repeat(64, 1, 1, 1), 8, (1.0, 1.0), hflip=True)
    for out, img in zip(flipped, x.repeat(64, 1, 1, 1)):
        assert torch.allclose(out, img, atol=1e-5) or torch.allclose(out, img.flip(-1), atol=1e-5)
    small = random_resized_crops(x, 4, (0.1, 0.4), hflip=True)
    assert small.shape == (3, 1, 4, 4)


def test_normalised_last_layer_has_unit_rows():
    layer = NormalizedLinear(4, 3)
    with torch.no_grad():
        layer.weight.mul_(7.0)
    out = layer(torch.eye(4))  # column j of the normalised weight
    np.testing.assert_allclose(out.T.norm(dim=1).detach().numpy(), np.ones(3), rtol=1e-6)


def test_copy_student_makes_equal_states():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    copy_student(a, b)
    assert same_state(a.state_dict(), b.state_dict())


@pytest.mark.parametrize("bad,fragment", [
    ({"loss_params": {"teacher_temp": -1}}, "loss_params.teacher_temp"),
    ({"teacher_mode": "sometimes"}, "teacher_mode"),
    ({"warmup_epochs": 5, "epochs": 5}, "warmup_epochs"),
    ({"crops": {"global_scale": [0.5, 0.2]}}, "crop scale"),
    ({"teacher_momentum": 0.999, "teacher_momentum_final": 0.99}, "teacher_momentum_final"),
])
def test_bad_params_are_named(bad, fragment):
    with pytest.raises(ValueError) as err:
        DinoParams.model_validate({**TINY, **bad})
    assert fragment in str(err.value)


def test_supervised_mode_trains_against_labels(digits, one_torch_thread):
    _, session = run(digits, supervised=True, label_noise=0.2, logit_noise=0.1, label_logit=5.0, epochs=1)
    h = session.history[-1]
    assert math.isfinite(h["train_loss"]) and 0.0 <= h["knn_acc"] <= 1.0


def test_crops_of_two_sizes_go_through_one_call(digits):
    p = DinoParams.model_validate({**TINY, "encoder": "cnn_small",
                                   "crops": {"global_crops": 2, "local_crops": 3, "local_size": 4}})
    student, _ = init_student_teacher(p, digits)
    student.eval()
    globals_, locals_ = multicrop(digits.train_x[:5], p.crops)
    assert [c.shape[-1] for c in globals_ + locals_] == [8, 8, 4, 4, 4]
    outs = forward_crops(student, globals_ + locals_)
    assert len(outs) == 5 and all(o.shape == (5, 64) for o in outs)
    for crop, out in zip(globals_ + locals_, outs):
        torch.testing.assert_close(out, student(crop), rtol=1e-4, atol=1e-5)


class StopAfter(LocalSession):
    """Saves checkpoints to disk and dies after ``epochs`` reports, as a preempted trial would."""

    def __init__(self, directory, epochs):
        super().__init__(torch.device("cpu"), checkpoint_dir=directory)
        self.stop_after = epochs

    def report(self, metrics, checkpoint=None):
        super().report(metrics, checkpoint)
        if len(self.history) == self.stop_after:
            raise KeyboardInterrupt


def test_resume_from_a_checkpoint_ends_where_an_uninterrupted_run_does(digits, tmp_path, one_torch_thread):
    p = DinoParams.model_validate({**TINY, "epochs": 3, "teacher_mode": "ema"})
    whole = RecordingSession()
    train_dino(p, digits, whole, checkpoint_every=1)
    with pytest.raises(KeyboardInterrupt):
        train_dino(p, digits, StopAfter(str(tmp_path), 2), checkpoint_every=1)
    resumed = RecordingSession()
    resumed.checkpoint_dir = str(tmp_path)
    train_dino(p, digits, resumed, checkpoint_every=1)
    assert [h["epoch"] for h in resumed.history] == [3]
    final, expected = resumed.states[-1], whole.states[-1]
    for part in ("student", "teacher", "loss_fn"):
        for key, value in expected[part].items():
            torch.testing.assert_close(final[part][key], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("encoder,kwargs", [("cnn_small", {}), ("resnet8", {}), ("vgg8", {}),
                                            ("vit_tiny", {"patch_size": 4, "depth": 2})])
def test_registry_encoders_feed_the_head_with_every_parameter_used(encoder, kwargs):
    p = DinoParams.model_validate({**TINY, "encoder": encoder, "encoder_kwargs": kwargs})

    class Shape:  # a 3x32x32 dataset's description
        num_classes, input_shape, mean, std = 10, (3, 32, 32), (0.5,) * 3, (0.25,) * 3

    student, _ = init_student_teacher(p, Shape)
    x = torch.randn(2, 3, 32, 32)
    assert student.encoder(x).shape == (2, student.encoder.num_features)  # features, not class logits
    forward_crops(student, [x, x])[0].sum().backward()
    assert [n for n, q in student.named_parameters() if q.grad is None] == []  # what DDP needs


@pytest.mark.slow  # two spawned gloo ranks: ~15 s of CPU, mostly importing torch
def test_from_student_teachers_stay_identical_across_ddp_ranks(tmp_path):
    """Each rank's student updates its BN statistics from its own shard; the teachers that follow
    them must still agree (their mean over ranks), or each rank would distil a different teacher."""
    import torch.multiprocessing as mp

    from ddp_dino_worker import run_rank
    from tests.test_losses_distill_loop import _free_port

    mp.spawn(run_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0 and r0.keys() == r1.keys()
    for key in r0:
        torch.testing.assert_close(r0[key], r1[key], rtol=0, atol=0, msg=key)
    # the statistics moved from the initial (0, 1): the check is not vacuous
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in r0.items() if k.endswith("running_mean"))
