"""``compile`` for fused trials (trainables/training/fused.py::FusedRun.losses_fn): the members'
forward and losses run as one compiled function, rebuilt when members leave, and every member
trains as it does in the eager fused trial (on the CPU with torch.compile's default mode, which is
also what ``reduce-overhead`` compiles as there; on a GPU with CUDA graphs)."""
import pytest
import torch
import torch._dynamo.utils as dynamo_utils

from tests.test_compile_modes import trial
from tests.test_fused import MEMBERS, TEACHER
from trainables.distill import fused as fused_distill
from trainables.distill.trainable import run_distill
from trainables.distill.params import DistillParams
from trainables.runtime.session import LocalSession
from trainables.runtime.trainable import TrialContext
from trainables.runtime.vectorize import RESULTS_KEY

CPU = torch.device("cpu")
COMPARED = ("train_loss", "val_acc", "val_loss", "test_acc", "test_loss", "lr")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fused_trial(ctx, monkeypatch, compile_mode, forward: str, student: str = "mlp_tiny") -> list[dict]:
    """A fused trial of the three MEMBERS for 2 epochs; member 1 stops after epoch 1, as a scheduler
    would stop it, so epoch 2 runs a smaller active set. Batch 98 divides digits' 1,078 training
    images: one batch shape, so one compiled graph per active set."""

    class Stopper(LocalSession):
        def report(self, metrics, checkpoint=None):
            super().report(metrics, checkpoint)
            if metrics["epoch"] == 1:
                stopped.add(1)

    stopped: set[int] = set()
    monkeypatch.setattr(fused_distill, "stops_reader", lambda sweep: (lambda epoch=None: set(stopped)))
    session = Stopper(CPU)
    p = DistillParams(teacher=TEACHER, student=student, epochs=2, batch_size=98, loss="kd", vectorize=3,
                      probes=MEMBERS, fused_forward=forward, compile=compile_mode)
    run_distill(p, session, TrialContext(artifacts=ctx.artifacts, checkpoint_every=0, sweep_name="t"))
    return session.history


def assert_same_members(compiled: list[dict], eager: list[dict], abs_tol: float) -> None:
    assert len(compiled) == len(eager) == 2
    for epoch, (c, e) in enumerate(zip(compiled, eager)):
        for k, (cm, em) in enumerate(zip(c[RESULTS_KEY], e[RESULTS_KEY])):
            assert cm["epoch"] == em["epoch"], (epoch, k)
            for key in COMPARED:
                assert cm[key] == pytest.approx(em[key], abs=abs_tol), (epoch, k, key)


@pytest.mark.slow  # two compiles of the fused step (about a minute on 2 shared cores)
@pytest.mark.parametrize("compile_mode,forward", [(True, "vmap"), ("reduce-overhead", "loop")])
def test_a_compiled_fused_trial_trains_every_member_as_the_eager_one(ctx, monkeypatch, compile_mode, forward):
    eager = fused_trial(ctx, monkeypatch, False, forward)
    torch._dynamo.reset()
    dynamo_utils.counters.clear()
    compiled = fused_trial(ctx, monkeypatch, compile_mode, forward)
    # Member 1 left after epoch 1 and kept its report; 0 and 2 trained on.
    assert [m["epoch"] for m in compiled[-1][RESULTS_KEY]] == [2, 1, 2]
    # One graph for the three members, one rebuilt for the two left: the compiled step ran (no
    # fallback to eager) and did not run the stopped member in epoch 2.
    assert dynamo_utils.counters["stats"]["unique_graphs"] == 2
    assert not dynamo_utils.counters["graph_break"]
    # Inductor fuses and reorders float32 arithmetic: equal up to rounding.
    assert_same_members(compiled, eager, abs_tol=1e-4)
    assert len({round(m["train_loss"], 6) for m in eager[-1][RESULTS_KEY]}) == 3  # the members differ


@pytest.mark.slow  # two compiles of a CNN's vmapped step
def test_compiled_vmap_step_keeps_batch_norm_statistics_and_leaves_a_dropped_member_alone():
    """The vmap forward's batch-norm statistics are one stacked tensor updated in place inside
    the compiled graph; each member's own buffers must see the update, as in eager. A member that
    leaves must not be trained by the graph compiled while it was active."""
    from trainables.data import load_dataset
    from trainables.losses import create_loss
    from trainables.models import create_model
    from trainables.training.classifier_loop import CachedTeacher, OptimConfig
    from trainables.training.fused import FusedRun, Member

    data = load_dataset("digits", seed=0)
    teacher = CachedTeacher(torch.randn(len(data.train_y), data.num_classes, generator=torch.Generator().manual_seed(0)))

    def state(member: Member) -> list[torch.Tensor]:
        return [t.detach().clone() for t in (*member.model.parameters(), *member.model.buffers())]

    def steps(compile_mode) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        torch.manual_seed(0)
        members = [Member(create_model("cnn_small", num_classes=data.num_classes, input_shape=data.input_shape),
                          create_loss("kd", {"temperature": t}, num_classes=data.num_classes),
                          OptimConfig(epochs=2, batch_size=32, lr=lr, compile=compile_mode))
                   for lr, t in ((0.05, 4.0), (0.2, 2.0), (0.01, 8.0))]
        run = FusedRun(members, data, LocalSession(CPU), 0, teacher, None, {}, mode="vmap")
        run.students.train()
        for i in range(4):
            if i == 2:
                run.students.drop({1})
                left = state(members[1])
            idx = torch.arange(32 * i, 32 * (i + 1))
            run.step(0, idx, run.prepare(idx))
        assert all(torch.equal(a, b) for a, b in zip(left, state(members[1])))  # member 1 stayed as it left
        return [t for m in members for t in state(m)], left

    eager, _ = steps(False)
    torch._dynamo.reset()
    dynamo_utils.counters.clear()
    compiled, _ = steps(True)
    assert dynamo_utils.counters["stats"]["unique_graphs"] == 2  # three members, then two
    assert len(eager) == len(compiled) > 0
    for a, b in zip(eager, compiled):  # parameters, running means and variances, batch counters
        assert torch.allclose(a.float(), b.float(), atol=1e-4), (a.shape, (a.float() - b.float()).abs().max())


def test_an_unknown_compile_mode_is_refused_before_a_fused_trial_trains():
    with pytest.raises(ValueError, match="not a compile mode"):
        DistillParams(student="mlp_tiny", compile="fast", vectorize=2, probes=[{"lr": 0.1}, {"lr": 0.2}])
    # Every mode a single trial takes is accepted for a fused trial too.
    for mode in (True, "default", "reduce-overhead", "max-autotune-no-cudagraphs"):
        assert DistillParams(student="mlp_tiny", compile=mode, vectorize=2, probes=[{"lr": 0.1}, {"lr": 0.2}]).compile == mode


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_a_reduce_overhead_fused_trial_replays_cuda_graphs_and_trains_as_eager_on_a_gpu(ctx):
    torch._dynamo.reset()
    device = torch.device("cuda")
    members = {"vectorize": 3, "probes": [{"lr": 0.05, "seed": 0}, {"lr": 0.1, "seed": 1}, {"lr": 0.02, "seed": 2}],
               "fused_forward": "vmap"}
    eager = trial(ctx, device, False, **members)
    dynamo_utils.counters.clear()
    graphed = trial(ctx, device, "reduce-overhead", **members)
    # Parameters and the stacked batch-norm statistics are static inputs: nothing made inductor
    # skip the CUDA graphs.
    assert dynamo_utils.counters["inductor"]["cudagraph_skips"] == 0
    assert len(eager) == len(graphed) == 2
    for e, g in zip(eager, graphed):
        for em, gm in zip(e[RESULTS_KEY], g[RESULTS_KEY]):
            # bf16 autocast on the GPU, where compiled kernels round differently from eager ones.
            assert gm["train_loss"] == pytest.approx(em["train_loss"], rel=0.05)
            assert gm["val_acc"] == pytest.approx(em["val_acc"], abs=0.1)


@pytest.mark.slow  # one compile of the fused step, three epochs eager and compiled
def test_a_schedule_that_changes_every_epoch_compiles_once(ctx):
    """AugConf's alpha ramps every epoch (rate 1: alpha = theta * e / E). The fused step passes
    this epoch's alphas to the compiled function as a tensor (``epoch_columns``), so the graph
    does not depend on the epoch: one graph for the whole trial, members as in eager."""
    from tests.test_fused import LOSS_MEMBERS

    members = [{**m, "loss_params": {**m["loss_params"], "rate": 1.0}} for m in LOSS_MEMBERS["augconf"]]

    def run(compile_mode):
        session = LocalSession(CPU)
        run_distill(DistillParams(teacher=TEACHER, student="mlp_tiny", epochs=3, batch_size=98, loss="augconf",
                                  vectorize=3, probes=members, fused_forward="loop", compile=compile_mode),
                    session, ctx)
        return session.history

    eager = run(False)
    torch._dynamo.reset()
    dynamo_utils.counters.clear()
    compiled = run(True)
    assert dynamo_utils.counters["stats"]["unique_graphs"] == 1
    assert not dynamo_utils.counters["graph_break"]
    for c, e in zip(compiled, eager, strict=True):
        for cm, em in zip(c[RESULTS_KEY], e[RESULTS_KEY], strict=True):
            for key in COMPARED + ("train_alpha",):
                assert cm[key] == pytest.approx(em[key], abs=1e-4), key
    # alpha did change with the epoch: theta * e / 3 for e = 0, 1, 2 (member 0's theta 0.5)
    assert [r[RESULTS_KEY][0]["train_alpha"] for r in eager] == pytest.approx([0.0, 0.5 / 3, 1.0 / 3])


@pytest.mark.slow  # two compiles of mlp_tiny's fused step (about 25 s on 2 cores)
def test_the_last_member_of_a_compiled_trial_compiles_once_for_every_epoch_left():
    """Down to one member, the fused step still computes the loss in its vectorised form, whose
    epoch-dependent values (AugConf's alpha) enter as tensors: the member's own forward would read
    the epoch, and dynamo would recompile the step for every epoch."""
    from trainables.data import load_dataset
    from trainables.losses import create_loss
    from trainables.models import create_model
    from trainables.training.classifier_loop import CachedTeacher, OptimConfig
    from trainables.training.fused import FusedRun, Member

    data = load_dataset("digits", seed=0)
    teacher = CachedTeacher(torch.randn(len(data.train_y), data.num_classes, generator=torch.Generator().manual_seed(0)))
    members = [Member(create_model("mlp_tiny", num_classes=data.num_classes, input_shape=data.input_shape),
                      create_loss("augconf", {"rate": rate}, num_classes=data.num_classes),
                      OptimConfig(epochs=6, batch_size=32, lr=0.05, compile=True)) for rate in (1.0, 0.6)]
    torch._dynamo.reset()
    dynamo_utils.counters.clear()
    run = FusedRun(members, data, LocalSession(CPU), 0, teacher, None, {}, mode="vmap")
    run.students.train()
    idx = torch.arange(32)
    run.step(0, idx, run.prepare(idx))
    run.drop({1})
    alphas = [run.step(epoch, idx, run.prepare(idx))[0]["alpha"].item() for epoch in range(1, 6)]
    assert dynamo_utils.counters["stats"]["unique_graphs"] == 2  # two members, then one, whatever the epoch
    assert len(set(alphas)) == 5  # the epoch did reach the loss: alpha moved every epoch
