"""``cuda_graphs`` (trainables/training/classifier_loop.py): a single trial's whole step captured as
a CUDA graph once per epoch and replayed, through the machinery a fused trial's members use with
``fused_forward: streams`` (trainables/training/member_graphs.py), this trial its one member.

On a CPU the capture bookkeeping runs with the stand-in graph of tests/test_member_graphs.py,
which reruns the captured step function on the static inputs and hands back the same output
tensors, overwritten, as a replayed graph does."""
import pytest
import torch

from tests.test_fused import CPU, TEACHER
from tests.test_member_graphs import StandInGraph, stand_in_graphs  # noqa: F401  (a fixture)
from trainables.distill.params import DistillParams
from trainables.distill.trainable import run_distill
from trainables.losses import loss_names
from trainables.runtime.session import LocalSession
from trainables.training import classifier_loop, member_graphs
from trainables.training.classifier_loop import OptimConfig, graph_blockers, uses_graphs
from trainables.training.member_graphs import CaptureError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CUDA = torch.device("cuda")  # a device object only: the rule needs no GPU
REPORTED = ("train_loss", "train_ce", "val_acc", "val_loss", "test_acc", "test_loss", "lr", "best_val_acc")


def optim(**kw) -> OptimConfig:
    return OptimConfig(epochs=1, batch_size=8, lr=0.1, **kw)


@pytest.mark.parametrize("kw, distributed, device, expected", [
    ({}, False, CUDA, True),                          # auto on CUDA
    ({}, False, CPU, False),                          # auto on a CPU: nothing to capture
    ({"compile": "reduce-overhead"}, False, CUDA, False),
    ({"accum_steps": 2}, False, CUDA, False),
    ({"bootstrap_beta": 0.5}, False, CUDA, False),
    ({}, True, CUDA, False),                          # DDP workers
    ({"cuda_graphs": False}, False, CUDA, False),
    ({"cuda_graphs": True}, False, CPU, True),        # true on a CPU: the step's eager path, in turn
])
def test_which_trials_replay_their_steps_as_graphs(kw, distributed, device, expected):
    assert uses_graphs(optim(**kw), device, distributed) is expected


def test_true_names_what_blocks_a_capture_and_a_bad_value_is_refused():
    with pytest.raises(ValueError, match=r"cuda_graphs: true cannot take accum_steps: a captured step is one whole "
                                         r"update, not 4 micro-batches summed; use 1"):
        uses_graphs(optim(cuda_graphs=True, accum_steps=4), CUDA, False)
    with pytest.raises(ValueError, match=r"cuda_graphs: 'yes'; accepted: auto, true, false"):
        uses_graphs(optim(cuda_graphs="yes"), CUDA, False)
    # every blocker is named, in order
    assert [k for k, _ in graph_blockers(compile=True, accum_steps=2, bootstrap_beta=0.1, distributed=True)] == \
        ["compile", "accum_steps", "bootstrap_beta", "workers"]


@pytest.mark.parametrize("over, message", [
    ({"compile": True}, "compile: cuda_graphs: true captures each step whole; compile True compiles the step itself"),
    ({"accum_steps": 2}, "accum_steps: cuda_graphs: true captures each step whole"),
    ({"bootstrap_beta": 0.3, "loss": "ce"}, "bootstrap_beta: cuda_graphs: true captures each step whole"),
    ({"workers": 2}, "workers: cuda_graphs: true captures each step whole; DDP workers average their gradients"),
    ({"vectorize": 2, "probes": [{"lr": 0.1}, {"lr": 0.2}]}, "cuda_graphs: true is a single trial's"),
])
def test_the_distill_key_refuses_true_where_a_step_cannot_be_captured(over, message):
    with pytest.raises(ValueError, match=message):
        DistillParams(teacher=TEACHER, student="mlp_tiny", cuda_graphs=True, **over)
    DistillParams(teacher=TEACHER, student="mlp_tiny", **over)  # auto: the step stays eager there instead


def trial(ctx, **kw) -> list[dict]:
    session = LocalSession(CPU)
    run_distill(DistillParams(teacher=TEACHER, student="mlp_tiny", epochs=3, batch_size=64, **kw), session, ctx)
    return session.history


@pytest.mark.parametrize("kw", [{"loss": name} for name in loss_names("classifier")] + [{"loss": "kd", "ema_decay": 0.9}],
                         ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_a_trial_replaying_its_step_equals_its_eager_trial(ctx, stand_in_graphs, kw):
    """Three epochs with warm-up steps eager, one capture an epoch replayed on the static batch, the
    last partial batch eager: every report equals the eager trial's (fp32, CPU), for every loss a
    classifier trial takes (the step hands each its inputs through the static batch, not the eager
    path's ``loss_inputs``). A replay reading a stale input, statistics read after the next replay
    overwrote them, the schedule or the EMA missing a step would not. CRD draws its negatives and
    updates its memory banks in the step."""
    replayed = trial(ctx, cuda_graphs=True, **kw)
    assert len(stand_in_graphs) == 1
    graph = stand_in_graphs[0]
    assert graph.captures == 3 and graph.replays > member_graphs.WARMUP
    eager = trial(ctx, cuda_graphs=False, **kw)
    assert len(replayed) == len(eager) == 3
    assert replayed[0].keys() == eager[0].keys()
    keys = [k for k in eager[0] if k.startswith("train_")]  # the loss's terms, as each loss names them
    keys += [k for k in REPORTED if not k.startswith("train_")] + (["ema_val_acc", "ema_test_acc"] if "ema_decay" in kw else [])
    for epoch, (a, b) in enumerate(zip(replayed, eager)):
        for key in keys:
            assert a[key] == pytest.approx(b[key], abs=1e-5), (epoch, key)
    assert isinstance(replayed[-1]["lr"], float)  # the lr lives on the device as a tensor while replayed


def test_a_failed_capture_under_auto_goes_on_eagerly(ctx, monkeypatch):
    """auto where a capture fails (a step that synchronises with the host): a warning, the graph
    released, and the trial trains on eagerly to the same reports as an eager trial."""
    class Refusing(StandInGraph):
        def replay(self, fn, rng=None):
            raise CaptureError("a training step cannot be captured as a CUDA graph (operation not permitted "
                               "when stream is capturing); set cuda_graphs: false")

    init = member_graphs.MemberGraphs.__init__
    monkeypatch.setattr(member_graphs.MemberGraphs, "__init__",
                        lambda self, *a, **kw: init(self, *a, **{**kw, "graph": Refusing}))
    real = classifier_loop.uses_graphs
    # auto as on CUDA, here on the CPU
    monkeypatch.setattr(classifier_loop, "uses_graphs", lambda optim, device, distributed: True)
    with pytest.warns(UserWarning, match=r"cuda_graphs auto: training eagerly from epoch 1 on: .*set cuda_graphs: "
                                         r"false"):
        fell_back = trial(ctx, loss="kd")
    monkeypatch.setattr(classifier_loop, "uses_graphs", real)
    eager = trial(ctx, loss="kd", cuda_graphs=False)
    for a, b in zip(fell_back, eager):
        for key in REPORTED:
            assert a[key] == pytest.approx(b[key], abs=1e-5), key


def test_true_raises_a_failed_capture(ctx, monkeypatch):
    class Refusing(StandInGraph):
        def replay(self, fn, rng=None):
            raise CaptureError("cannot be captured; set cuda_graphs: false")

    init = member_graphs.MemberGraphs.__init__
    monkeypatch.setattr(member_graphs.MemberGraphs, "__init__",
                        lambda self, *a, **kw: init(self, *a, **{**kw, "graph": Refusing}))
    with pytest.raises(CaptureError, match="set cuda_graphs: false"):
        trial(ctx, loss="kd", cuda_graphs=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("loss", ["kd", "crd", "align_uniform"])
def test_on_a_gpu_a_trial_on_auto_replays_its_step_and_learns(ctx, monkeypatch, loss):
    """A distill trial through run_distill with the default ``cuda_graphs: auto`` on CUDA: warm-up
    steps eager, one capture an epoch, replays, the partial batch eager; it reports every epoch and
    learns."""
    made = []
    real = member_graphs.MemberGraph

    def counted(*a, **kw):
        made.append(real(*a, **kw))
        return made[-1]

    monkeypatch.setattr(member_graphs, "MemberGraph", counted)
    data = {"channels": 3, "image_size": 8, "num_classes": 5, "train_size": 250}  # 3 full batches of 64 and 58
    session = LocalSession(CUDA)
    run_distill(DistillParams(dataset="synthetic", dataset_kwargs=data,
                              teacher={"model": "cnn_small", "epochs": 2, "lr": 0.05}, student="cnn_small",
                              epochs=4, batch_size=64, loss=loss), session, ctx)
    # The student's graph is the last made (the teacher, trained first for the first loss, replays its
    # steps too); epoch 0 is warm-up only (3 full batches), then one capture an epoch.
    assert made and made[-1].captures == 3
    first, last = session.history[0], session.history[-1]
    assert last["epoch"] == 4 and 0.0 <= last["val_acc"] <= 1.0
    assert last["train_ce"] < first["train_ce"] and last["val_loss"] < first["val_loss"], (first, last)


@pytest.mark.parametrize("lr_tensor", [False, True])
def test_a_trial_replaying_its_step_resumes_from_its_checkpoint(ctx, tmp_path, monkeypatch, stand_in_graphs,
                                                                lr_tensor):
    """Killed after epoch 2's checkpoint and resumed, the trial's last report equals the whole
    run's: the restored optimiser's groups replace the ones the graph stepped, so the graph is
    captured anew over them. ``lr_tensor``: the groups' lr held as a tensor, as on CUDA (the
    checkpoint then saves and restores the tensor)."""
    from tests.test_fused import whole_and_resumed

    if lr_tensor:
        views = member_graphs.MemberGraphs.views

        def with_lr_tensor(self):
            member_graphs.lr_on_device(self.optimizer, self.device)
            return views(self)

        monkeypatch.setattr(member_graphs.MemberGraphs, "views", with_lr_tensor)
    p = DistillParams(teacher=TEACHER, student="mlp_tiny", epochs=4, batch_size=64, loss="kd", cuda_graphs=True)
    whole, resumed = whole_and_resumed(p, ctx, tmp_path)
    for key in REPORTED:
        assert resumed.history[-1][key] == pytest.approx(whole.history[-1][key], abs=1e-5), key
