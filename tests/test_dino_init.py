"""dino student initialisation (``interpolated``, ``neighborhood``, the variance-preserving
correction), the ``n_samples`` stratified training subset and ``teacher_bn_mode: from_student``
(issue 15), against dinopl's definitions; without Ray."""
import copy
import math

import numpy as np
import pytest
import torch

from trainables.data import load_dataset
from trainables.data.base import stratified_subset
from trainables.dino.init import init_student_teacher, mix_into
from trainables.dino.loop import DinoRun, copy_student, ema_bn_stats
from trainables.dino.params import DinoParams
from trainables.runtime.session import LocalSession

TINY = {"encoder": "mlp_tiny", "head": {"hidden_dims": [32], "bottleneck_dim": 16, "out_dim": 64},
        "crops": {"global_crops": 1, "global_scale": [1.0, 1.0], "hflip": False},
        "loss_params": {"teacher_temp": 0.1, "student_temp": 0.1, "pairing": "same"},
        "epochs": 2, "warmup_epochs": 0, "batch_size": 128, "lr": 5e-3, "probe_every": 1,
        "probe_epochs": 2, "freeze_last_layer_epochs": 0}
# weight tensors of 16k-65k entries, so a sample variance is within ~1% of its expectation
WIDE = {**TINY, "encoder": "mlp", "encoder_kwargs": {"hidden": [256, 256]},
        "head": {"hidden_dims": [256], "bottleneck_dim": 64, "out_dim": 1024}}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def params(**overrides) -> DinoParams:
    return DinoParams.model_validate({**TINY, **overrides})


def states(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def reference(digits, base=TINY, **overrides):
    """(teacher init, fresh random student init) that the mixing modes start from."""
    student, teacher = init_student_teacher(DinoParams.model_validate({**base, **overrides, "student_init": "random"}),
                                            digits)
    return states(teacher), states(student)


# ------------------------------------------------------------------------------------ student init

@pytest.mark.parametrize("seed", [None, 7])
def test_interpolated_alpha_0_is_the_teacher_and_alpha_1_the_random_init(digits, seed):
    teacher0, random0 = reference(digits, student_init_seed=seed)
    for alpha, expected in [(0.0, teacher0), (1.0, random0)]:
        for vp in (False, True):
            student, teacher = init_student_teacher(params(student_init="interpolated", student_init_alpha=alpha,
                                                           student_init_var_preserving=vp,
                                                           student_init_seed=seed), digits)
            got = states(student)
            assert all(torch.equal(got[k], expected[k]) for k in expected), (alpha, vp)
            assert all(torch.equal(v, teacher0[k]) for k, v in states(teacher).items())  # the teacher is untouched


def test_interpolated_is_the_convex_combination(digits):
    teacher0, random0 = reference(digits)
    student, _ = init_student_teacher(params(student_init="interpolated", student_init_alpha=0.3), digits)
    for k, v in states(student).items():
        torch.testing.assert_close(v, 0.7 * teacher0[k] + 0.3 * random0[k])


def test_neighborhood_is_the_teacher_plus_eps_random_and_its_distance_scales_with_eps(digits):
    teacher0, random0 = reference(digits)
    distances = []
    for eps in (0.0, 0.1, 0.2, 0.4):
        student, _ = init_student_teacher(params(student_init="neighborhood", student_init_eps=eps), digits)
        got = states(student)
        for k in got:
            torch.testing.assert_close(got[k], teacher0[k] + eps * random0[k])
        distances.append(math.sqrt(sum(float((got[k] - teacher0[k]).pow(2).sum()) for k in got)))
    assert distances[0] == 0.0
    norm = math.sqrt(sum(float(v.pow(2).sum()) for v in random0.values()))
    for eps, d in zip((0.1, 0.2, 0.4), distances[1:]):
        assert d == pytest.approx(eps * norm, rel=1e-4)  # ‖θ_s − θ_t‖ = ε‖θ_r‖: linear in ε


def weight_variances(state: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v.var()) for k, v in state.items() if v.ndim >= 2}


@pytest.mark.parametrize("mode,key,value", [("interpolated", "student_init_alpha", a) for a in (0.25, 0.5, 0.8)]
                         + [("neighborhood", "student_init_eps", e) for e in (0.5, 1.0, 3.0)])
def test_variance_preserving_keeps_each_layers_weight_variance_of_the_random_init(digits, mode, key, value):
    _, random0 = reference(digits, base=WIDE)
    target = weight_variances(random0)
    assert min(v.numel() for k, v in random0.items() if k in target) >= 16384
    corrected, _ = init_student_teacher(DinoParams.model_validate(
        {**WIDE, "student_init": mode, key: value, "student_init_var_preserving": True}), digits)
    plain, _ = init_student_teacher(DinoParams.model_validate({**WIDE, "student_init": mode, key: value}), digits)
    got, uncorrected = weight_variances(states(corrected)), weight_variances(states(plain))
    for k in target:
        assert got[k] == pytest.approx(target[k], rel=0.05), k
    # and the correction is what does it: without it the variance is off by the squared scale
    scale2 = (1 - value) ** 2 + value ** 2 if mode == "interpolated" else 1 + value ** 2
    for k in target:
        assert uncorrected[k] == pytest.approx(scale2 * target[k], rel=0.05), k


def test_mix_into_refuses_other_modes_and_other_architectures():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    with pytest.raises(ValueError, match="student_init"):
        mix_into(a, b, "teacher")
    with pytest.raises(ValueError, match="different parameters"):
        mix_into(a, torch.nn.Sequential(torch.nn.Linear(3, 2)), "interpolated", alpha=0.5)


def test_teacher_and_random_modes_are_unchanged(digits):
    from trainables.dino import model
    for mode in ("teacher", "random"):
        p = params(student_init=mode)
        s1, t1 = init_student_teacher(p, digits)
        s2, t2 = model.init_student_teacher(p, digits)
        assert all(torch.equal(v, states(s2)[k]) for k, v in states(s1).items())
        assert all(torch.equal(v, states(t2)[k]) for k, v in states(t1).items())


# ------------------------------------------------------------------------------------------ n_samples

def test_stratified_subset_is_seeded_balanced_and_sized():
    labels = np.repeat(np.arange(4), [50, 50, 50, 5])  # class 3 has fewer than its share
    a = stratified_subset(labels, 103, seed=3)
    assert len(a) == 103 and len(set(a)) == 103
    assert np.array_equal(a, stratified_subset(labels, 103, seed=3))
    assert not np.array_equal(a, stratified_subset(labels, 103, seed=4))
    counts = np.bincount(labels[a], minlength=4)
    assert counts[3] == 5 and sorted(counts[:3]) == [32, 33, 33] and counts[0] == 33  # remainder to low classes
    even = np.bincount(labels[stratified_subset(labels, 20, seed=0)], minlength=4)
    assert even.tolist() == [5, 5, 5, 5]
    assert np.array_equal(np.sort(stratified_subset(labels, len(labels), seed=1)), np.arange(len(labels)))
    for bad in (0, len(labels) + 1):
        with pytest.raises(ValueError, match="n_samples"):
            stratified_subset(labels, bad, seed=0)


def test_n_samples_trains_on_the_subset_and_probes_on_the_whole_split(digits, one_torch_thread):
    p = params(n_samples=200, batch_size=50, epochs=1)
    run = DinoRun(p, digits, LocalSession(torch.device("cpu")))
    assert run.n_train == 200 and run.total_steps == 4
    idx = run.train_idx.numpy()
    assert np.array_equal(idx, stratified_subset(digits.train_y.numpy(), 200, p.split_seed))
    counts = np.bincount(digits.train_y[idx].numpy(), minlength=digits.num_classes)
    assert counts.max() - counts.min() <= 1
    seen = []
    original = run.step
    run.step = lambda epoch, batch: (seen.append(batch.clone()), original(epoch, batch))[1]
    run.train_epoch(0)
    assert np.array_equal(np.sort(torch.cat(seen).numpy()), idx)


def test_n_samples_larger_than_the_training_split_is_an_error_naming_it(digits):
    p = params(n_samples=len(digits.train_y) + 1)
    with pytest.raises(ValueError, match=r"n_samples \(\d+\) exceeds the training split of digits"):
        DinoRun(p, digits, LocalSession(torch.device("cpu")))


# ---------------------------------------------------------------------------------- teacher_bn_mode

def bn_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.Linear(6, 3),
                            torch.nn.BatchNorm1d(3))
    m.train()
    m(torch.randn(32, 4) * (seed + 1) + seed)  # running statistics of its own
    return m


def running_stats(m) -> list[torch.Tensor]:
    return [t.clone() for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm1d)
            for t in (mod.running_mean, mod.running_var)]


def test_from_student_copies_and_ema_follows_the_students_running_stats():
    teacher, student = bn_model(0), bn_model(1)
    t0, s0 = running_stats(teacher), running_stats(student)
    ema_bn_stats(teacher, student, 0.9)
    for got, t, s in zip(running_stats(teacher), t0, s0):
        torch.testing.assert_close(got, 0.9 * t + 0.1 * s)
    copy_student(teacher, student, bn_stats=True)
    assert all(torch.equal(a, b) for a, b in zip(running_stats(teacher), s0))
    assert all(torch.equal(a, b) for a, b in zip(teacher.parameters(), student.parameters()))


def test_from_data_copy_keeps_the_teachers_own_running_stats():
    teacher, student = bn_model(0), bn_model(1)
    t0 = running_stats(teacher)
    copy_student(teacher, student, bn_stats=False)
    assert all(torch.equal(a, b) for a, b in zip(teacher.parameters(), student.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(running_stats(teacher), t0))


@pytest.mark.parametrize("teacher_mode", ["ema", "prev_epoch"])
def test_from_student_teacher_ends_with_the_students_running_stats(digits, one_torch_thread, teacher_mode):
    """Momentum 0 / a copy every epoch: the teacher's BN statistics are the student's after training;
    with ``from_data`` (teacher in eval mode) they stay at their initial values."""
    base = {"head": {**TINY["head"], "batch_norm": True}, "teacher_mode": teacher_mode, "teacher_eval": True,
            "teacher_momentum": 0.0, "teacher_momentum_final": 0.0, "epochs": 1}
    ends = {}
    for mode in ("from_student", "from_data"):
        p = params(**base, teacher_bn_mode=mode)
        run = DinoRun(p, digits, LocalSession(torch.device("cpu")))
        run.train_epoch(0)
        ends[mode] = (running_stats(run.teacher), running_stats(run.student))
    teacher, student = ends["from_student"]
    assert all(torch.equal(a, b) for a, b in zip(teacher, student))
    teacher, student = ends["from_data"]
    assert not any(torch.equal(a, b) for a, b in zip(teacher, student))
    assert all(torch.equal(t, torch.zeros_like(t) if i % 2 == 0 else torch.ones_like(t))  # mean 0, var 1
               for i, t in enumerate(teacher))


# ----------------------------------------------------------------------------------------- validation

@pytest.mark.parametrize("bad,fragment", [
    ({"student_init": "halfway"}, "student_init"),
    ({"student_init_alpha": 1.5}, "student_init_alpha"),
    ({"student_init_alpha": -0.1}, "student_init_alpha"),
    ({"student_init_eps": -1.0}, "student_init_eps"),
    ({"student_init_var_preserving": "maybe"}, "student_init_var_preserving"),
    ({"teacher_bn_mode": "from_teacher"}, "teacher_bn_mode"),
    ({"teacher_bn_mode": "from_student"}, "teacher_eval"),
    ({"n_samples": 0}, "n_samples"),
    ({"n_samples": 64, "batch_size": 128}, "n_samples"),
])
def test_bad_values_are_errors_naming_the_key(bad, fragment):
    with pytest.raises(ValueError) as err:
        params(**bad)
    assert fragment in str(err.value)


def test_new_keys_accept_good_values():
    p = params(student_init="neighborhood", student_init_eps=0.5, student_init_var_preserving=True,
               teacher_bn_mode="from_student", teacher_eval=True, n_samples=500)
    assert (p.student_init_eps, p.teacher_bn_mode, p.n_samples) == (0.5, "from_student", 500)
    assert copy.deepcopy(params()).n_samples is None
