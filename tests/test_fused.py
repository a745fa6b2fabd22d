"""Fused distill trials (``vectorize: K``, trainables/training/fused.py): each member equals its
unfused trial, members leave the step one by one, and a fused trial resumes from its checkpoint."""
import math

import pytest
import torch

from trainables.distill.trainable import run_distill
from trainables.distill.params import DistillParams
from tests.test_epochs import Crash, CrashAfter
from trainables.runtime.session import LocalSession
from trainables.runtime.trainable import TrialContext
from trainables.runtime.vectorize import RESULTS_KEY

CPU = torch.device("cpu")
TEACHER = {"model": "mlp", "epochs": 4, "lr": 0.1}
COMPARED = ("train_loss", "val_acc", "val_loss", "test_acc", "test_loss", "lr")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


MEMBERS = [{"lr": 0.05, "loss_params": {"temperature": 4.0, "kd_weight": 0.9}},
           {"lr": 0.2, "weight_decay": 1e-3, "loss_params": {"temperature": 2.0, "kd_weight": 0.5}},
           {"lr": 0.01, "momentum": 0.5, "loss_params": {"temperature": 8.0, "kd_weight": 0.1}}]


def fused_and_alone(ctx, mode: str, student: str = "mlp_tiny", members=MEMBERS, loss="kd", **common):
    base = {**dict(teacher=TEACHER, student=student, epochs=3, batch_size=64, loss=loss), **common}
    fused = LocalSession(CPU)
    run_distill(DistillParams(**base, vectorize=len(members), probes=members, fused_forward=mode), fused, ctx)
    alone = []
    for member in members:
        session = LocalSession(CPU)
        run_distill(DistillParams(**{**base, **member}), session, ctx)
        alone.append(session.history)
    return fused.history, alone


# The losses' own values per member (their vectorised forms, trainables/losses/).
LOSS_MEMBERS = {
    "augconf": [{"lr": 0.05, "loss_params": {"threshold": 0.5, "rate": 0.3}},
                {"lr": 0.1, "loss_params": {"threshold": 0.9, "rate": 0.0, "temperature": 2.0}},
                {"lr": 0.02, "loss_params": {"threshold": 0.2, "rate": 1.0}}],
    "adaptconf": [{"lr": 0.05, "loss_params": {"threshold": 0.5}},
                  {"lr": 0.1, "loss_params": {"threshold": 0.1, "confidence": "teacher_self", "rate": 0.5}},
                  {"lr": 0.02, "loss_params": {"threshold": 2.0, "temperature": 4.0}}],
    # DKD's warm-up and AuxConf's coefficient change over the 3 epochs for some members
    "dkd": [{"lr": 0.05, "loss_params": {"warmup_epochs": 3}},
            {"lr": 0.1, "loss_params": {"warmup_epochs": 0, "beta": 2.0, "temperature": 2.0}},
            {"lr": 0.02, "loss_params": {"warmup_epochs": 2, "alpha": 0.5}}],
    "auxconf": [{"lr": 0.05, "loss_params": {"warmup_frac": 0.5}},
                {"lr": 0.1, "loss_params": {"aux_coef": 0.9, "warmup_frac": 0.0}},
                {"lr": 0.02, "loss_params": {"aux_coef": 0.2}}],
    # DAPT's feature losses: each member's own projectors (or connector), stacked in the fused step
    "align_uniform": [{"lr": 0.05, "loss_params": {"embed_dim": 16}},
                      {"lr": 0.1, "loss_params": {"embed_dim": 16, "unif_t": 0.5, "align_alpha": 1.5}},
                      {"lr": 0.02, "loss_params": {"embed_dim": 16, "embed_weight": 0.5, "temperature": 2.0}}],
    "srrl": [{"lr": 0.05}, {"lr": 0.1, "loss_params": {"feat_weight": 0.3}},
             {"lr": 0.02, "loss_params": {"srrl_weight": 2.0, "kd_weight": 0.5}}],
}


@pytest.mark.parametrize("mode,student,loss", [("loop", "mlp_tiny", "kd"), ("vmap", "mlp_tiny", "kd"),
                                               ("vmap", "cnn_small", "kd"), ("loop", "mlp_tiny", "augconf"),
                                               ("vmap", "mlp_tiny", "adaptconf"), ("vmap", "mlp_tiny", "dkd"),
                                               ("loop", "mlp_tiny", "auxconf"), ("vmap", "mlp_tiny", "align_uniform"),
                                               ("loop", "mlp_tiny", "srrl"), ("streams", "cnn_small", "kd"),
                                               ("streams", "mlp_tiny", "align_uniform")])
def test_each_member_equals_its_unfused_trial(ctx, mode, student, loss):
    fused, alone = fused_and_alone(ctx, mode, student, members=LOSS_MEMBERS.get(loss, MEMBERS), loss=loss)
    assert len(fused) == 3
    for epoch, report in enumerate(fused):
        members = report[RESULTS_KEY]
        assert len(members) == 3
        for k, member in enumerate(members):
            expect = alone[k][epoch]
            assert member["epoch"] == expect["epoch"] == epoch + 1
            for key in COMPARED:
                assert member[key] == pytest.approx(expect[key], abs=1e-4), (mode, k, epoch, key)
        # The top level is the best over the members, for schedulers that read one number.
        assert report["val_acc"] == max(m["val_acc"] for m in members)
        assert report["val_loss"] == min(m["val_loss"] for m in members)
    # The members did differ (else the test would prove little).
    assert len({round(a[-1]["train_loss"], 6) for a in alone}) == 3


def test_batch_norm_members_under_vmap_equal_their_unfused_trials(ctx):
    """resnet8 (batch norm after every convolution) under vmap, where the members' batch norms run
    as one over K x C channels (trainables/training/member_norm.py). One epoch: grouped and plain
    convolutions round differently, and over more epochs at these learning rates the members
    drift apart by more than 1e-4 with torch's own vmap rule as with the folded one."""
    fused, alone = fused_and_alone(ctx, "vmap", "resnet8", epochs=1)
    (report,) = fused
    for k, member in enumerate(report[RESULTS_KEY]):
        for key in COMPARED:
            assert member[key] == pytest.approx(alone[k][0][key], abs=1e-4), (k, key)
    assert len({round(a[-1]["train_loss"], 6) for a in alone}) == 3


@pytest.mark.parametrize("mode", ["auto", "vmap", "streams"])
def test_stopped_members_leave_the_step_and_keep_their_last_report(ctx, mode):
    stops: set[int] = set()
    session = LocalSession(CPU)

    class Stopper(LocalSession):
        def report(self, metrics, checkpoint=None):
            super().report(metrics, checkpoint)
            if metrics["epoch"] == 1:
                stops.add(1)  # what the scheduler posts after epoch 1

    from trainables.distill import fused as fused_distill

    session = Stopper(CPU)
    p = DistillParams(teacher=TEACHER, student="mlp_tiny", epochs=3, loss="kd", vectorize=3, probes=MEMBERS,
                      fused_forward=mode)
    original = fused_distill.stops_reader
    fused_distill.stops_reader = lambda sweep: (lambda epoch=None: set(stops))
    try:
        run_distill(p, session, TrialContext(artifacts=ctx.artifacts, checkpoint_every=0, sweep_name="t"))
    finally:
        fused_distill.stops_reader = original
    last = session.history[-1][RESULTS_KEY]
    assert [m["epoch"] for m in last] == [3, 1, 3]
    assert last[1] == session.history[0][RESULTS_KEY][1]  # member 1's epoch-1 report, unchanged
    alone = LocalSession(CPU)
    run_distill(DistillParams(teacher=TEACHER, student="mlp_tiny", epochs=3, loss="kd", **MEMBERS[2]), alone, ctx)
    # Member 2 trained on, unaffected by member 1 leaving.
    assert last[2]["val_loss"] == pytest.approx(alone.history[-1]["val_loss"], abs=1e-4)


def whole_and_resumed(p: DistillParams, ctx, tmp_path) -> tuple[LocalSession, LocalSession]:
    """A 4-epoch trial run whole, and run again killed after epoch 2's report and checkpoint and
    resumed in a new session: (whole, resumed), the resumed one holding epochs 3 and 4."""
    whole = LocalSession(CPU)
    run_distill(p, whole, TrialContext(artifacts=ctx.artifacts, checkpoint_every=2))
    ckpt = str(tmp_path / "ckpt")
    with pytest.raises(Crash):  # the process dies after epoch 2's report and checkpoint
        run_distill(p, CrashAfter(ckpt, reports=2), TrialContext(artifacts=ctx.artifacts, checkpoint_every=2))
    resumed = LocalSession(CPU, checkpoint_dir=ckpt)
    run_distill(p, resumed, TrialContext(artifacts=ctx.artifacts, checkpoint_every=2))
    assert [r["epoch"] for r in resumed.history] == [3, 4]
    return whole, resumed


# compiled: the step recompiles in the resumed process (three compiles on the CPU); vmap: the
# checkpoint holds members whose parameters are rows of shared stacks
@pytest.mark.parametrize("compiled,mode", [(False, "auto"), (False, "vmap"), (False, "streams"),
                                           pytest.param(True, "auto", marks=pytest.mark.slow)])
def test_a_fused_trial_resumes_from_its_checkpoint(ctx, tmp_path, compiled, mode):
    p = DistillParams(teacher=TEACHER, student="mlp_tiny", epochs=4, loss="kd", vectorize=3, probes=MEMBERS,
                      compile=compiled, fused_forward=mode)
    whole, resumed = whole_and_resumed(p, ctx, tmp_path)
    for k in range(3):
        for key in COMPARED:
            assert resumed.history[-1][RESULTS_KEY][k][key] == pytest.approx(whole.history[-1][RESULTS_KEY][k][key],
                                                                             abs=1e-5), (k, key)


def test_a_member_whose_loss_diverges_leaves_and_the_others_go_on(ctx, monkeypatch):
    from trainables.distill import fused as fused_distill

    built = []
    original = fused_distill.student_and_loss

    def nan_for_member_1(p, data, entry, teacher_context):
        student, loss_fn = original(p, data, entry, teacher_context)
        if len(built) == 1:  # member 1's loss is non-finite from its first step (on either loss path)
            loss_fn.params = loss_fn.params.model_copy(update={"kd_weight": float("nan")})
        built.append(p)
        return student, loss_fn

    monkeypatch.setattr(fused_distill, "student_and_loss", nan_for_member_1)
    session = LocalSession(CPU)
    run_distill(DistillParams(teacher=TEACHER, student="mlp_tiny", epochs=3, loss="kd", vectorize=3,
                              probes=MEMBERS), session, ctx)
    assert [r[RESULTS_KEY][1].get("diverged") for r in session.history] == [1.0, 1.0, 1.0]
    last = session.history[-1][RESULTS_KEY]
    assert last[1]["epoch"] == 1 and last[1]["val_acc"] == -math.inf
    assert [last[k]["epoch"] for k in (0, 2)] == [3, 3]
    alone = LocalSession(CPU)
    run_distill(DistillParams(teacher=TEACHER, student="mlp_tiny", epochs=3, loss="kd", **MEMBERS[2]), alone, ctx)
    assert last[2]["val_loss"] == pytest.approx(alone.history[-1]["val_loss"], abs=1e-4)


@pytest.mark.slow  # two spawned ranks
def test_under_ddp_each_member_equals_its_unfused_ddp_trial(tmp_path):
    import socket

    import torch.multiprocessing as mp
    from ddp_fused_worker import run_rank

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(run_rank, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    saved = torch.load(tmp_path / "histories.pt", weights_only=False)
    for epoch, report in enumerate(saved["fused"]):
        for k, member in enumerate(report[RESULTS_KEY]):
            expect = saved["alone"][k][epoch]
            for key in ("train_loss", "val_acc", "val_loss", "test_acc", "test_loss", "lr"):
                assert member[key] == pytest.approx(expect[key], abs=1e-4), (k, epoch, key)


@pytest.mark.parametrize("mode", ["loop", "loop member by member", "vmap", "streams", "streams graphs"])
def test_a_fused_step_makes_no_host_sync(mode, monkeypatch):
    import trainables.training.fused as fused_module
    from trainables.training.member_graphs import MemberGraphs

    if mode == "loop member by member":
        monkeypatch.setattr(fused_module, "ALL_AT_ONCE_BYTES", 0)
        mode = "loop"
    if mode == "streams graphs":  # the capture path (static inputs, replays), with a CPU stand-in graph
        from tests.test_member_graphs import StandInGraph

        init = MemberGraphs.__init__
        monkeypatch.setattr(MemberGraphs, "__init__",
                            lambda self, *a, **kw: init(self, *a, **{**kw, "graph": StandInGraph, "warmup": 0}))
        mode = "streams"
    from trainables.data import load_dataset
    from trainables.losses import create_loss
    from trainables.models import create_model
    from trainables.runtime.sync_check import SyncCheck
    from trainables.training.classifier_loop import CachedTeacher, OptimConfig
    from trainables.training.fused import FusedRun, Member

    data = load_dataset("digits", seed=0)
    members = []
    for lr, temperature in ((0.05, 4.0), (0.2, 2.0), (0.01, 8.0)):
        model = create_model("cnn_small", num_classes=data.num_classes, input_shape=data.input_shape)
        members.append(Member(model, create_loss("kd", {"temperature": temperature}, num_classes=data.num_classes),
                              OptimConfig(epochs=2, batch_size=32, lr=lr)))
    teacher = CachedTeacher(torch.randn(len(data.train_y), data.num_classes))
    run = FusedRun(members, data, LocalSession(CPU), 0, teacher, None, {}, mode=mode)
    idx = torch.arange(32)
    prepared = run.prepare(idx)
    # A first step fills what is cached once per member set (the loss columns' host-to-device copy;
    # alone, this test would otherwise see it, and in the suite an earlier test filled it).
    run.step(0, idx, prepared)
    before = [p.detach().clone() for m in members for p in m.model.parameters()]
    with SyncCheck() as check:
        stats = run.step(0, idx, prepared)
    assert check.syncs == [], check.report()
    assert len(stats) == 3 and all(torch.isfinite(s["loss"]) for s in stats)
    after = [p for m in members for p in m.model.parameters()]
    assert all(not torch.equal(a, b) for a, b in zip(before, after) if a.dim() > 1)  # every member stepped


def test_the_loop_forward_runs_member_by_member_when_activations_are_large(ctx, monkeypatch):
    """Above ALL_AT_ONCE_BYTES of activations (or with a loss that has no vectorised form) the
    eager loop forward runs each member's forward, loss and backward in turn: members still equal
    their unfused trials. Below it, all forwards, one vectorised loss, one backward."""
    import trainables.training.fused as fused_module
    from trainables.losses import create_loss
    from trainables.models import create_model
    from trainables.training.classifier_loop import OptimConfig
    from trainables.training.fused import FusedRun, Member, forward_bytes

    # the decision, on digits-shaped inputs (1 x 8 x 8)
    from trainables.distill.loop import load_data

    data = load_data(DistillParams(teacher=TEACHER, student="mlp_tiny"), ctx)
    model = create_model("cnn_small", num_classes=10, input_shape=(1, 8, 8))
    per_member = forward_bytes(model, (1, 8, 8), 64)
    assert per_member > 0 and next(model.parameters()).device.type == "cpu"  # measured on meta copies

    def decides(loss: str, threshold: int, mode: str = "loop") -> bool:
        monkeypatch.setattr(fused_module, "ALL_AT_ONCE_BYTES", threshold)
        members = [Member(create_model("cnn_small", num_classes=10, input_shape=(1, 8, 8)),
                          create_loss(loss, {}, num_classes=10), OptimConfig(epochs=1, batch_size=64, lr=0.1))
                   for _ in range(3)]
        run = FusedRun(members, data, LocalSession(CPU), 0, None, None, {}, mode=mode)
        return run.one_at_a_time(torch.zeros(64, 1, 8, 8))

    assert not decides("kd", 3 * per_member)
    assert decides("kd", 3 * per_member - 1)
    with monkeypatch.context() as m:  # no vectorised form: nothing to gain from holding every member
        m.setattr(type(create_loss("kd", {}, num_classes=10)), "vectorised_members", False)
        assert decides("kd", 10**12)
    assert not decides("kd", 0, mode="vmap")
    # the member-by-member step trains every member as its own trial
    monkeypatch.setattr(fused_module, "ALL_AT_ONCE_BYTES", 0)
    fused, alone = fused_and_alone(ctx, "loop")
    for k, member in enumerate(fused[-1][RESULTS_KEY]):
        for key in COMPARED:
            assert member[key] == pytest.approx(alone[k][-1][key], abs=1e-4), (k, key)


def test_members_that_cannot_fit_the_device_are_refused_before_ray_starts(monkeypatch):
    import trainables.distill.prepare as prepare
    from trainables.models import create_model
    from trainables.training.fused import member_bytes

    p = DistillParams(student="cnn_small", batch_size=64, vectorize=8, probes=[{"lr": 0.1}] * 8)
    assert prepare.check_distill_inputs(p) == []  # 8 small members fit this machine
    per = member_bytes(create_model("cnn_small", num_classes=10, input_shape=(1, 8, 8)), (1, 8, 8), 64)
    # the estimate: at least the weights with their gradient and momentum, and the batch's activations
    params = sum(q.numel() * 4 for q in create_model("cnn_small", num_classes=10, input_shape=(1, 8, 8)).parameters())
    assert per >= 3 * params + 64 * 16 * 8 * 8 * 4  # ... the first conv's 16 channels at 8x8, fp32
    monkeypatch.setattr(prepare, "device_memory_bytes", lambda: (int(per * 5.5), "a small test device"))
    (issue,) = prepare.check_distill_inputs(p)
    assert issue[0] == "vectorize"
    assert issue[1].startswith("8 members need about") and "at most 4 fit: lower vectorize or batch_size" in issue[1]


def test_the_vmap_forward_steps_the_members_stacked_parameters_in_place():
    """Under vmap a member's parameters are rows of one stacked leaf per parameter name: the
    forward reads the stacks, each member's gradient is its row of the stack's gradient (no copy
    per member), and the member's own optimiser group updates its row; a member that leaves gets
    tensors of its own and the others are restacked."""
    from trainables.losses import create_loss
    from trainables.models import create_model
    from trainables.training.classifier_loop import CachedTeacher, OptimConfig
    from trainables.training.fused import FusedRun, Member
    from trainables.data import load_dataset

    data = load_dataset("digits", seed=0)
    members = []
    for lr in (0.05, 0.2, 0.01):
        torch.manual_seed(int(lr * 100))
        model = create_model("cnn_small", num_classes=data.num_classes, input_shape=data.input_shape)
        members.append(Member(model, create_loss("kd", {"temperature": 4.0}, num_classes=data.num_classes),
                              OptimConfig(epochs=2, batch_size=32, lr=lr, momentum=0.0, weight_decay=0.0)))
    teacher = CachedTeacher(torch.randn(len(data.train_y), data.num_classes))
    run = FusedRun(members, data, LocalSession(CPU), 0, teacher, None, {}, mode="vmap")
    name = "head.weight" if "head.weight" in run.students.stack.params else next(iter(run.students.stack.params))
    stack = run.students.stack.params[name]
    rows = [m.model.get_parameter(name) for m in members]
    assert all(r.untyped_storage().data_ptr() == stack.untyped_storage().data_ptr() for r in rows)
    before = [r.detach().clone() for r in rows]
    idx = torch.arange(32)
    run.step(0, idx, run.prepare(idx))
    grads = [r.grad for r in rows]
    assert stack.grad is None  # handed to the members
    assert len({g.untyped_storage().data_ptr() for g in grads}) == 1  # rows of one gradient
    for k, m in enumerate(members):
        # plain SGD: the row moved by lr times the member's own gradient, and the stack saw it
        assert torch.allclose(rows[k].detach(), before[k] - m.optim.lr * grads[k], atol=1e-6)
        assert torch.equal(stack[k].detach(), rows[k].detach())
    run.drop({1})
    assert rows[1].untyped_storage().data_ptr() != run.students.stack.params[name].untyped_storage().data_ptr()
    assert torch.equal(run.students.stack.params[name][1].detach(), rows[2].detach())
    kept = rows[1].detach().clone()
    run.step(0, idx, run.prepare(idx))
    assert torch.equal(rows[1].detach(), kept)  # the member that left no longer moves


def test_a_model_that_cannot_run_under_vmap_names_the_loop_forward():
    from torch import nn

    from trainables.training.fused import FusedStudents

    class ReadsAValue(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x, return_features=False):
            scale = float(self.lin.weight.abs().max().item())  # a host read of a batched weight: vmap refuses it
            return self.lin(x / scale)

    students = FusedStudents([ReadsAValue(), ReadsAValue()], "vmap")
    with pytest.raises(RuntimeError, match="ReadsAValue cannot run under torch.func.vmap .*set fused_forward: loop"):
        students(torch.randn(5, 4))
    assert len(FusedStudents([ReadsAValue(), ReadsAValue()], "loop")(torch.randn(5, 4))) == 2


@pytest.mark.parametrize("loss", ["kd", "crd", "align_uniform", "srrl"])
def test_a_vmap_fused_step_runs_as_many_operations_for_any_number_of_members(loss):
    """A launch-bound GPU step pays per kernel: the vmap step's forward and backward (resnet8: batch
    norm after every convolution; KD, and DAPT's feature losses with their members' projectors,
    connectors and banks stacked) run the same operations for K = 2 and K = 5 members, and not many
    more than one unfused trial's step (bench/fused_ops.py counts the GPU sizes)."""
    from trainables.data import load_dataset
    from trainables.losses import create_loss
    from trainables.models import create_model
    from trainables.runtime.op_count import OpCount, uncounted
    from trainables.training.classifier_loop import CachedTeacher, ClassifierRun, OptimConfig
    from trainables.training.fused import FusedRun, Member
    from trainables.training.views import PlainViews

    data = load_dataset("digits", seed=0)
    teacher = CachedTeacher(torch.randn(len(data.train_y), data.num_classes), torch.randn(len(data.train_y), 12))

    def member(k):
        torch.manual_seed(k)
        model = create_model("resnet8", num_classes=data.num_classes, input_shape=data.input_shape)
        loss_params = {"temperature": 2.0 + k, **({"nce_k": 64} if loss == "crd" else {})}
        return Member(model, create_loss(loss, loss_params, num_classes=data.num_classes, student_dim=model.num_features,
                                         teacher_dim=12, num_samples=len(data.train_y), train_labels=data.train_y,
                                         teacher_head=torch.nn.Linear(12, data.num_classes)),
                      OptimConfig(epochs=1, batch_size=16, lr=0.01 * (k + 1)))

    idx = [torch.arange(16), torch.arange(16, 32)]
    m = member(0)
    single = ClassifierRun(m.model, data, m.loss_fn, m.optim, LocalSession(CPU), 0, teacher, PlainViews(), {})
    single.step(0, [idx[0]])
    single.optimizer.step = uncounted(single.optimizer.step)  # one fused kernel per group on CUDA
    with OpCount() as one:
        single.step(0, [idx[1]])
    fused_ops = {}
    for k in (2, 5):
        run = FusedRun([member(j) for j in range(k)], data, LocalSession(CPU), 0, teacher, None, {}, mode="vmap")
        run.step(0, idx[0], run.prepare(idx[0]))
        run.optimizer.step = uncounted(run.optimizer.step)
        with OpCount() as ops:
            run.step(0, idx[1], run.prepare(idx[1]))
        fused_ops[k] = ops.total
    assert fused_ops[2] == fused_ops[5], fused_ops
    assert fused_ops[5] <= 1.5 * one.total, (fused_ops, one.total)


def test_a_fused_crd_trial_trains_each_members_own_banks_and_members_can_leave(ctx):
    """CRD's members in one fused trial: their banks and normalisers stacked, each member's moved
    by its own embeddings (its banks differ from the others' and from where they started), and a
    member that leaves keeps its banks while the others go on."""
    from trainables.distill.loop import load_data, student_and_loss
    from trainables.training.classifier_loop import CachedTeacher, OptimConfig
    from trainables.training.fused import FusedRun, Member

    p = DistillParams(teacher=TEACHER, student="mlp_tiny", loss="crd", loss_params={"nce_k": 32, "embed_dim": 8})
    data = load_data(p, ctx)
    teacher = CachedTeacher(torch.randn(len(data.train_y), data.num_classes), torch.randn(len(data.train_y), 12))
    members = []
    for seed, nce_m in enumerate((0.5, 0.9, 0.1)):
        q = p.model_copy(update={"seed": seed, "loss_params": {**p.loss_params, "nce_m": nce_m}})
        student, loss = student_and_loss(q, data, None, {"teacher_dim": 12})
        members.append(Member(student, loss, OptimConfig(epochs=2, batch_size=64, lr=0.05)))
    start = [m.loss_fn.memory.clone() for m in members]
    run = FusedRun(members, data, LocalSession(CPU), 0, teacher, None, {}, mode="vmap")
    assert run.loss_stack is not None and run.loss_stack.buffers["memory"].shape[:2] == (3, 2)
    run.train_epoch(0)
    moved = [m.loss_fn.memory.clone() for m in members]
    for k in range(3):
        assert not torch.equal(moved[k], start[k])
        assert torch.isfinite(members[k].loss_fn.z).all()
    assert not torch.allclose(moved[0], moved[1])
    run.drop({1})
    run.train_epoch(1)
    assert torch.equal(members[1].loss_fn.memory, moved[1])  # the member that left is frozen
    assert not torch.equal(members[0].loss_fn.memory, moved[0]) and not torch.equal(members[2].loss_fn.memory, moved[2])


def test_fused_members_must_share_what_shapes_their_loss_modules():
    probes = [{"loss_params": {"embed_dim": 16}}, {"loss_params": {"embed_dim": 32}}]
    with pytest.raises(ValueError, match=r"loss_params.embed_dim: the members of a fused trial share it \(it sets the "
                                         r"shape of align_uniform's own parameters\); got 16, 32"):
        DistillParams(loss="align_uniform", vectorize=2, probes=probes)
    same = [{"lr": 0.1, "loss_params": {"embed_dim": 16}}, {"lr": 0.2, "loss_params": {"embed_dim": 16}}]
    assert DistillParams(loss="align_uniform", vectorize=2, probes=same).is_fused


def test_crd_state_bytes_by_hand():
    """Two fp32 banks of n x D, plus a step's temporaries: dense (CIFAR: the banks' copy and the
    (2, B, n) scores with their gradient) or gathered (ImageNet at batch 64: the contrast rows)."""
    from trainables.losses import validate_loss_params
    from trainables.losses.crd import CRD

    params = validate_loss_params("crd", {})  # D 128, K 4096
    assert CRD.state_bytes(params, 50_000, 64) == 4 * (2 * 50_000 * 128 + 2 * 50_000 * 128 + 4 * 64 * 50_000)
    assert CRD.state_bytes(params, 1_281_167, 64) == 4 * (2 * 1_281_167 * 128 + 4 * 64 * 4097 * 128)


def test_the_parse_time_memory_check_counts_each_members_loss_state(monkeypatch):
    import trainables.distill.prepare as prepare
    from trainables.losses import validate_loss_params
    from trainables.losses.crd import CRD
    from trainables.models import create_model
    from trainables.training.fused import member_bytes

    student = member_bytes(create_model("cnn_small", num_classes=10, input_shape=(1, 8, 8)), (1, 8, 8), 64)
    n_train = prepare._shape_of("digits", "{}", 0)[2]
    banks = CRD.state_bytes(validate_loss_params("crd", {}), n_train, 64)
    assert banks > 0
    budget = int(8 * (student + banks / 2) / 0.9)  # room for 8 students, not for 8 students with their banks
    monkeypatch.setattr(prepare, "device_memory_bytes", lambda: (budget, "a small device"))
    kd = DistillParams(student="cnn_small", batch_size=64, vectorize=8, probes=[{"lr": 0.1}] * 8)
    assert prepare.check_distill_inputs(kd) == []
    (issue,) = prepare.check_distill_inputs(kd.model_copy(update={"loss": "crd"}))
    fits = int(0.9 * budget // (student + banks))
    assert 0 < fits < 8
    assert issue[0] == "vectorize" and f"at most {fits} fit" in issue[1] and "loss state" in issue[1]


FUSED_DAPT_SPACE = """
name: t
trainable: distill
params: {{dataset: digits, student: mlp_tiny, epochs: 2, vectorize: 3{loss}}}
search:
{search}
"""


@pytest.mark.parametrize("loss, search, bad", [
    (", loss: crd", "  loss_params.embed_dim: {choice: [64, 128]}", "search.loss_params.embed_dim"),
    (", loss: srrl", "  loss_params.connector: {choice: [mlp, mlp2]}", "search.loss_params.connector"),
    # a searched loss brings each candidate's keys
    ("", "  loss: {grid: [kd, crd]}\n  loss_params.nce_k: {choice: [64, 128]}", "search.loss_params.nce_k"),
    (", loss: crd", "  loss_params.nce_m: {uniform: [0.3, 0.9]}\n  lr: {loguniform: [0.01, 0.1]}", None),
])
def test_a_vectorised_sweep_cannot_search_what_shapes_the_members_loss_modules(loss, search, bad):
    """Refused when the space is read (exit 2, before Ray): the values are sampled per member, and
    a fused trial stacks its members' loss modules, so what sets their shapes is one per trial."""
    from orchestrator.errors import SpecError
    from orchestrator.space.spec import parse_spec

    text = FUSED_DAPT_SPACE.format(loss=loss, search=search)
    if bad is None:
        assert parse_spec(text, "space.yaml").vectorized_keys
        return
    with pytest.raises(SpecError) as info:
        parse_spec(text, "space.yaml")
    assert f"{bad}: the configurations of one vectorised trial share it (it sets the shape of " in str(info.value)
    assert "drop params.vectorize to search it across trials" in str(info.value)
