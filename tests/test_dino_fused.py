"""Fused dino trials (``vectorize: K``, trainables/dino/fused.py): each member equals its unfused
trial (losses, probes, teacher probes, lr), members leave the step one by one, a fused trial
resumes from its checkpoint, and what a fused dino trial cannot do is refused at parse time."""
import math

import pytest
import torch

from trainables.data import load_dataset
from trainables.dino.trainable import run_dino
from trainables.dino.params import MEMBER_FIELDS, DinoParams
from tests.test_epochs import Crash, CrashAfter
from trainables.runtime.session import LocalSession
from trainables.runtime.sync_check import SyncCheck
from trainables.runtime.trainable import TrialContext
from trainables.runtime.vectorize import RESULTS_KEY

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Random crops (two global, one local, flips): the members must see the same draws as their unfused trials.
BASE = {"dataset": "digits", "encoder": "mlp_tiny", "head": {"hidden_dims": [32], "bottleneck_dim": 16, "out_dim": 64},
        "crops": {"global_crops": 2, "global_scale": [0.5, 1.0], "local_crops": 1, "local_scale": [0.2, 0.5]},
        "epochs": 3, "warmup_epochs": 1, "batch_size": 128, "probe_every": 1, "probe_epochs": 2,
        "freeze_last_layer_epochs": 1, "teacher_momentum": 0.9}
MEMBERS = [{"lr": 5e-3, "loss_params": {"teacher_temp": 0.04}},
           {"lr": 2e-3, "weight_decay": 0.1, "teacher_momentum": 0.99, "teacher_init_seed": 3,
            "loss_params": {"teacher_temp": 0.07, "teacher_center_momentum": 0.8}},
           {"lr": 1e-2, "student_init": "interpolated", "student_init_alpha": 0.5, "student_init_seed": 2,
            "clip_grad": 0.5}]
CTX = TrialContext(checkpoint_every=0)


def fused_params(**common) -> DinoParams:
    return DinoParams.model_validate({**BASE, **common, "vectorize": 3, "probes": MEMBERS})


def alone(member: dict, **common) -> list[dict]:
    session = LocalSession(CPU)
    run_dino(DinoParams.model_validate({**BASE, **common, **member}), session, CTX)
    return session.history


def numeric(report: dict) -> dict:
    return {k: v for k, v in report.items() if isinstance(v, (int, float))}


@pytest.mark.parametrize("common", [{"teacher_mode": "ema"},
                                    {"teacher_mode": "prev_epoch", "teacher_eval": True},
                                    {"teacher_mode": "no_update", "supervised": True, "label_noise": 0.2}],
                         ids=["ema", "prev_epoch", "supervised_noise"])
def test_each_member_equals_its_unfused_trial(common):
    fused = LocalSession(CPU)
    run_dino(fused_params(**common), fused, CTX)
    expected = [alone(m, **common) for m in MEMBERS]
    assert [r["epoch"] for r in fused.history] == [1, 2, 3]
    for epoch, report in enumerate(fused.history):
        members = report[RESULTS_KEY]
        assert len(members) == 3
        for k, member in enumerate(members):
            want = numeric(expected[k][epoch])
            # every metric the unfused trial reports (losses, kNN / linear probes, teacher probes, lr)
            assert numeric(member).keys() == want.keys()
            for key, value in want.items():
                assert member[key] == pytest.approx(value, abs=1e-4), (k, epoch, key)
        # the top level is the best over the members, for schedulers that read one number
        assert report["knn_acc"] == max(m["knn_acc"] for m in members)
        assert report["train_loss"] == min(m["train_loss"] for m in members)
    # the members did differ (else equality would prove little)
    assert len({round(e[-1]["train_loss"], 6) for e in expected}) == 3


def test_unfused_crops_follow_the_data_seed_not_the_init_seeds():
    """What lets members share one draw: an unfused trial's crops come from its seed alone."""
    from trainables.dino.loop import DinoRun

    data = load_dataset("digits", seed=0)
    idx = torch.arange(16)
    crops = []
    for extra in ({}, {"teacher_init_seed": 5, "student_init": "random"}, {"seed": 1}):
        run = DinoRun(DinoParams.model_validate({**BASE, **extra}), data, LocalSession(CPU))
        crops.append(run.views(idx).globals_[0])
    assert torch.equal(crops[0], crops[1]) and not torch.equal(crops[0], crops[2])


def test_stopped_members_leave_the_step_and_keep_their_last_report(monkeypatch):
    from trainables.dino import fused as fused_dino

    stops: set[int] = set()

    class Stopper(LocalSession):
        def report(self, metrics, checkpoint=None):
            super().report(metrics, checkpoint)
            if metrics["epoch"] == 1:
                stops.add(1)  # what the scheduler posts after epoch 1

    monkeypatch.setattr(fused_dino, "stops_reader", lambda sweep: (lambda epoch=None: set(stops)))
    session = Stopper(CPU)
    run_dino(fused_params(), session, TrialContext(checkpoint_every=0, sweep_name="t"))
    last = session.history[-1][RESULTS_KEY]
    assert [m["epoch"] for m in last] == [3, 1, 3]
    assert last[1] == session.history[0][RESULTS_KEY][1]  # member 1's epoch-1 report, unchanged
    # member 2 trained on, unaffected by member 1 leaving
    want = alone(MEMBERS[2])[-1]
    for key in ("train_loss", "knn_acc", "linear_acc"):
        assert last[2][key] == pytest.approx(want[key], abs=1e-4), key


def test_a_fused_trial_resumes_from_its_checkpoint(tmp_path):
    p = fused_params(epochs=4)
    whole = LocalSession(CPU)
    run_dino(p, whole, TrialContext(checkpoint_every=2))

    ckpt = str(tmp_path / "ckpt")
    with pytest.raises(Crash):  # the process dies after epoch 2's report and checkpoint
        run_dino(p, CrashAfter(ckpt, reports=2), TrialContext(checkpoint_every=2))
    resumed = LocalSession(CPU, checkpoint_dir=ckpt)
    run_dino(p, resumed, TrialContext(checkpoint_every=2))
    assert [r["epoch"] for r in resumed.history] == [3, 4]
    # the same crops after the restart as without it (the data stream's state is in the checkpoint)
    for k in range(3):
        got, want = resumed.history[-1][RESULTS_KEY][k], whole.history[-1][RESULTS_KEY][k]
        for key, value in numeric(want).items():
            assert got[key] == pytest.approx(value, abs=1e-5), (k, key)


def test_a_member_whose_loss_diverges_leaves_and_the_others_go_on(monkeypatch):
    from trainables.dino import fused as fused_dino

    built = []

    class NanForMember1(fused_dino.DinoRun):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if len(built) == 1:  # member 1's student outputs NaN from its first step
                with torch.no_grad():
                    next(self.student.head.parameters()).fill_(float("nan"))
            built.append(self)

    monkeypatch.setattr(fused_dino, "DinoRun", NanForMember1)
    session = LocalSession(CPU)
    run_dino(fused_params(), session, CTX)
    assert [r[RESULTS_KEY][1].get("diverged") for r in session.history] == [1.0, 1.0, 1.0]
    last = session.history[-1][RESULTS_KEY]
    assert last[1]["epoch"] == 1 and last[1]["knn_acc"] == -math.inf
    assert [last[k]["epoch"] for k in (0, 2)] == [3, 3]
    assert last[2]["train_loss"] == pytest.approx(alone(MEMBERS[2])[-1]["train_loss"], abs=1e-4)


def test_a_fused_step_makes_no_host_sync():
    from trainables.dino.fused import FusedDino

    data = load_dataset("digits", seed=0)
    # SGD: torch's CPU Adam reads its step count on the host, which its CUDA (fused) version does not
    run = FusedDino(fused_params(optimizer="sgd"), data, LocalSession(CPU))
    group = next(run.first.update_groups(0))
    views = [run.first.views(idx) for idx in group]
    before = [next(r.student.parameters()).detach().clone() for r in run.runs]
    with SyncCheck() as check:
        stats = [r.step(1, group, views) for r in run.runs]
    assert check.syncs == [], check.report()
    assert all(torch.isfinite(s["loss"]) for s in stats)
    assert all(not torch.equal(b, next(r.student.parameters())) for b, r in zip(before, run.runs))


@pytest.mark.parametrize("bad,fragment", [
    ({"probes": [{"n_samples": 200}, {}]}, "probes: n_samples cannot differ between the members"),
    ({"probe_grid": {"batch_size": [32, 64]}}, "probes: batch_size cannot differ between the members"),
    ({"workers": 2}, "workers: a fused dino trial trains on one worker"),
    ({"keep_loss_max": True}, "keep_loss_max: checkpoint entries are one trial's"),
    ({"probes": [{"lr": 20.0}, {}]},
     "member 0 ({'teacher_momentum': 0.9, 'lr': 20.0}): lr: input should be less than or equal to 10"),
])
def test_what_a_fused_trial_cannot_do_is_refused_naming_the_key(bad, fragment):
    with pytest.raises(ValueError) as exc:
        DinoParams.model_validate({**BASE, "vectorize": 2, **bad})
    assert fragment in str(exc.value)


def test_member_keys_leave_the_data_and_shapes_alone():
    shared = {"dataset", "dataset_kwargs", "n_samples", "batch_size", "encoder", "encoder_kwargs", "head", "crops",
              "epochs", "samples_per_epoch", "split_seed"}
    assert not shared & set(MEMBER_FIELDS)
    members = fused_params().member_params()
    assert [m.lr for m in members] == [5e-3, 2e-3, 1e-2]
    assert [m.teacher_init_seed for m in members] == [0, 3, 0]
    assert not any(m.is_fused for m in members)


def test_members_that_cannot_fit_the_device_are_refused_before_ray_starts(monkeypatch):
    import trainables.dino.prepare as prepare

    head = {"hidden_dims": [64], "bottleneck_dim": 16, "out_dim": 128}
    p = DinoParams(dataset="digits", encoder="cnn", head=head, batch_size=32, vectorize=4,
                   probes=[{"lr": 1e-3 * (k + 1)} for k in range(4)])
    assert prepare.check_dino_inputs(p) == []  # 4 small members fit this machine
    per = prepare.member_bytes(p, prepare._data("digits", "{}", 0))
    student_params = sum(q.numel() * 4 for q in prepare.build_dino_model_for_estimate(p).parameters())
    # at least: the student's weights, gradients and two Adam states, the teacher's weights, and
    # the 128-d head output of each of the two global crops of the batch (fp32)
    assert per >= 5 * student_params + 2 * 32 * 128 * 4
    monkeypatch.setattr(prepare, "device_memory_bytes", lambda: (int(per * 3.5), "a small test device"))
    (issue,) = prepare.check_dino_inputs(p)
    assert issue[0] == "vectorize"
    assert issue[1].startswith("4 members need about") and "at most 3 fit: lower vectorize or batch_size" in issue[1]
