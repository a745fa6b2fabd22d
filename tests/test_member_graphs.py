"""``fused_forward: streams`` (trainables/training/member_graphs.py): each member's step through a
view of the trial's one optimiser, and the capture bookkeeping (static inputs and outputs, warm-up,
a capture per member and epoch, the eager last batch, members leaving), run on a CPU with a
stand-in for the CUDA graph that behaves as one does: it reruns the captured step function on the
same static inputs and hands back the same output tensors, overwritten."""
import pytest
import torch
from torch import nn

from tests.test_fused import CPU, COMPARED, MEMBERS, TEACHER
from trainables.distill.trainable import run_distill
from trainables.distill.params import DistillParams
from trainables.losses import LossInputs
from trainables.runtime.session import LocalSession
from trainables.runtime.vectorize import RESULTS_KEY
from trainables.training import member_graphs
from trainables.training.member_graphs import MemberGraphs, StaticBatch, member_optimizers

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_members_view_steps_its_own_groups_with_the_shared_state():
    """Two members' weights in one SGD (lr 0.1 and 0.5, momentum 0.9): member 1's view moves only
    member 1's weight, by hand: buf = g, w -= lr * buf; then buf = 0.9 buf + g."""
    w0, w1 = nn.Parameter(torch.tensor([1.0])), nn.Parameter(torch.tensor([2.0]))
    opt = torch.optim.SGD([{"params": [w0], "lr": 0.1, "member": 0}, {"params": [w1], "lr": 0.5, "member": 1}],
                          lr=0.1, momentum=0.9)
    views = member_optimizers(opt, 2)
    assert [len(v.param_groups) for v in views] == [1, 1]
    for _ in range(2):
        w0.grad, w1.grad = torch.tensor([1.0]), torch.tensor([2.0])
        views[1].step()
    assert w0.item() == 1.0  # untouched
    assert w1.item() == pytest.approx(2.0 - 0.5 * 2.0 - 0.5 * (0.9 * 2.0 + 2.0))
    assert opt.state[w1]["momentum_buffer"].item() == pytest.approx(3.8)  # the optimiser's own state
    # The view's groups are the optimiser's dicts: a schedule's lr reaches the view.
    opt.param_groups[1]["lr"] = 0.25
    assert views[1].param_groups[0]["lr"] == 0.25


def test_static_batch_keeps_its_tensors_and_says_when_it_reallocates():
    statics = StaticBatch()
    shared = LossInputs(student_logits=None, targets=torch.tensor([1, 2]), teacher_logits=torch.ones(2, 3))
    x, s = statics.load(torch.zeros(2, 4), shared)
    version = statics.version
    x2, s2 = statics.load(torch.ones(2, 4), LossInputs(student_logits=None, targets=torch.tensor([0, 0]),
                                                       teacher_logits=torch.zeros(2, 3)))
    assert x2 is x and s2.targets is s.targets and s2.teacher_logits is s.teacher_logits
    assert x.sum().item() == 8 and s.targets.tolist() == [0, 0] and statics.version == version
    statics.load(torch.ones(3, 4), shared)  # another shape: a new tensor, and the captures are stale
    assert statics.version > version


class StandInGraph:
    """What a member's CUDA graph does, on a CPU: a capture runs nothing but keeps the step
    function; each replay reruns the captured function (on whatever the static inputs hold) and
    writes its outputs into the tensors it returned the first time."""

    made: list["StandInGraph"] = []

    def __init__(self):
        self.fn, self.out, self.captures, self.replays = None, None, 0, 0
        StandInGraph.made.append(self)

    def replay(self, fn, rng=None):  # (no random state to swap on a CPU)
        if self.fn is None:
            self.fn, self.captures = fn, self.captures + 1
        out = {k: v.detach() for k, v in self.fn().items()}
        if self.out is None:
            self.out = {k: v.clone() for k, v in out.items()}
        else:
            for k, v in out.items():
                self.out[k].copy_(v)
        self.replays += 1
        return self.out

    def stale(self):
        self.fn = None  # the next replay captures anew (and keeps its output tensors)

    def reset(self):
        self.fn, self.out = None, None


@pytest.fixture
def stand_in_graphs(monkeypatch):
    StandInGraph.made = []
    init = MemberGraphs.__init__
    monkeypatch.setattr(MemberGraphs, "__init__", lambda self, *a, **kw: init(self, *a, **{**kw, "graph": StandInGraph}))
    return StandInGraph.made


def test_replayed_members_equal_their_unfused_trials(ctx, stand_in_graphs):
    """Three epochs of 3 members: warm-up steps eager, then one capture per member and epoch, each
    replayed on the static batch; the last partial batch eager. Every member's reports equal its
    own trial's: a replay that read a stale input, or statistics read after the next replay
    overwrote them, would not."""
    base = dict(teacher=TEACHER, student="mlp_tiny", epochs=3, batch_size=64, loss="kd")
    fused = LocalSession(CPU)
    run_distill(DistillParams(**base, vectorize=3, probes=MEMBERS, fused_forward="streams"), fused, ctx)
    for k, member in enumerate(MEMBERS):
        alone = LocalSession(CPU)
        run_distill(DistillParams(**{**base, **member}), alone, ctx)
        for epoch, report in enumerate(fused.history):
            for key in COMPARED:
                assert report[RESULTS_KEY][k][key] == pytest.approx(alone.history[epoch][key], abs=1e-4), (k, epoch, key)
    # One graph per member, captured again every epoch; replayed every full batch after the
    # first epoch's warm-up.
    assert len(stand_in_graphs) == 3 and [g.captures for g in stand_in_graphs] == [3, 3, 3]
    replays = {g.replays for g in stand_in_graphs}
    assert len(replays) == 1 and replays.pop() > 3 * member_graphs.WARMUP


def test_a_member_that_leaves_is_no_longer_replayed(ctx, stand_in_graphs):
    from trainables.distill import fused as fused_distill

    original = fused_distill.stops_reader
    fused_distill.stops_reader = lambda sweep: (lambda epoch=None: {1} if epoch == 1 else set())
    try:
        from trainables.runtime.trainable import TrialContext

        session = LocalSession(CPU)
        run_distill(DistillParams(teacher=TEACHER, student="mlp_tiny", epochs=3, loss="kd", vectorize=3,
                                  probes=MEMBERS, fused_forward="streams"), session,
                    TrialContext(artifacts=ctx.artifacts, checkpoint_every=0, sweep_name="t"))
    finally:
        fused_distill.stops_reader = original
    assert [m["epoch"] for m in session.history[-1][RESULTS_KEY]] == [3, 1, 3]
    # Member 1 was captured in epoch 1 only, and its graph freed when it left.
    assert [g.captures for g in stand_in_graphs] == [3, 1, 3] and stand_in_graphs[1].fn is None


@pytest.mark.parametrize("over, message", [({"workers": 2}, "workers: 2 DDP workers"),
                                           ({"compile": True}, "compile: fused_forward streams")])
def test_streams_refuses_what_a_captured_member_step_cannot_take(over, message):
    with pytest.raises(ValueError, match=message):
        DistillParams(teacher=TEACHER, student="mlp_tiny", vectorize=2, probes=MEMBERS[:2], fused_forward="streams",
                      **over)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_on_a_gpu_replayed_members_equal_their_eager_steps():
    """On CUDA: two resnet8x4 members' steps replayed as graphs on their streams equal the same
    steps taken eagerly (fp32 weights, bf16 autocast), over a few full batches, and the replays
    did train (the weights moved from the warm-up steps' values)."""
    from trainables.models import create_model

    device = torch.device("cuda")
    torch.manual_seed(0)
    x = [torch.randn(64, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last) for _ in range(5)]
    y = torch.randint(0, 100, (5, 64), device=device)

    def run(graphs: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        from trainables.losses import create_loss

        torch.manual_seed(1)
        models = [create_model("resnet8x4", num_classes=100, input_shape=(3, 32, 32)).to(device).to(memory_format=torch.channels_last)
                  for _ in range(2)]
        losses = [create_loss("ce", {}, num_classes=100).to(device) for _ in range(2)]
        groups = [{"params": list(m.parameters()), "lr": 0.1 * (k + 1), "member": k} for k, m in enumerate(models)]
        opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9, fused=True)
        steps = MemberGraphs(models, losses, opt, device, 64, warmup=2 if graphs else 10)
        weights = []
        for i in range(5):
            steps.step(0, x[i], LossInputs(student_logits=None, targets=y[i]), [0, 1])
            if i == 1:
                weights.append([p.detach().float().clone() for m in models for p in m.parameters()])
        torch.cuda.synchronize()
        if graphs:
            assert [g.captures for g in steps.graphs.values()] == [1, 1]
        return weights[0], [p.detach().float().clone() for m in models for p in m.parameters()]

    (warm, replayed), (_, eager) = run(True), run(False)
    for a, b in zip(replayed, eager):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=1e-2)  # bf16 kernels; a stale replay is far off
    assert any(not torch.equal(a, b) for a, b in zip(warm, replayed))


class DrawingLoss(nn.Module):
    """A loss whose step draws from the CUDA generator (as CRD's negatives and dropout do) and
    returns what it drew."""

    needs_features = False

    def forward(self, inputs: LossInputs) -> dict[str, torch.Tensor]:
        draw = torch.rand(8, device=inputs.targets.device)
        return {"loss": nn.functional.cross_entropy(inputs.student_logits, inputs.targets), "draw": draw}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_on_a_gpu_each_members_steps_draw_from_its_own_random_state():
    """Two members on their streams over two epochs of 4 full batches and a partial one (the first
    epoch's first step an eager warm-up): in each epoch member k's steps, eager or replayed at once
    with the other member's, draw in order what a fresh generator seeded as member k's state for
    that epoch (member_rng) draws. So the members' draws are apart, and a trial seed, resumed or
    not, gives the same ones. Graphs sharing the generator's one state would draw the trial
    generator's numbers instead, and members replayed at once could read the same offset."""
    device = torch.device("cuda")
    x = torch.randn(64, 1, 8, 8, device=device)
    y = torch.randint(0, 10, (64,), device=device)
    torch.manual_seed(5)
    models = [nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).to(device) for _ in range(2)]
    opt = torch.optim.SGD([{"params": list(m.parameters()), "lr": 0.1, "member": k} for k, m in enumerate(models)],
                          lr=0.1, fused=True)
    steps = MemberGraphs(models, [DrawingLoss(), DrawingLoss()], opt, device, 64, warmup=1)
    draws = {}
    for epoch in (0, 1):
        batches = [(x, y)] * 4 + [(x[:16], y[:16])]
        draws[epoch] = [[out["draw"].clone() for out in steps.step(epoch, xb, LossInputs(student_logits=None, targets=yb),
                                                                     [0, 1])] for xb, yb in batches]
    torch.cuda.synchronize()
    assert [g.captures for g in steps.graphs.values()] == [2, 2]  # once per epoch
    for epoch, steps_drawn in draws.items():
        for k in range(2):
            own = torch.Generator(device).manual_seed(member_graphs.member_rng(device, k, epoch).initial_seed())
            for step in steps_drawn:
                torch.testing.assert_close(step[k], torch.rand(8, device=device, generator=own), atol=0, rtol=0)
    assert not torch.equal(draws[0][0][0], draws[0][0][1]) and not torch.equal(draws[0][0][0], draws[1][0][0])


def test_the_quickstart_with_streams_is_refused_where_its_ddp_point_sets_workers():
    """The quickstart's first point trains on 2 DDP workers: with ``fused_forward: streams`` the
    space is refused when it is read (exit 2, before Ray), naming that point's key."""
    from orchestrator.errors import SpecError
    from orchestrator.space.spec import parse_spec

    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "search_spaces" / "quickstart.yaml").read_text()
    with pytest.raises(SpecError) as info:
        parse_spec(text, "quickstart.yaml", overrides=["params.vectorize=4", "params.fused_forward=streams"])
    assert "points_to_evaluate[0].workers: 2 DDP workers would average gradients inside each member's CUDA graph" \
        in str(info.value)
    assert parse_spec(text, "quickstart.yaml", overrides=["params.vectorize=4", "params.fused_forward=loop"])


@pytest.mark.parametrize("loss", ["kd", "crd"])
def test_a_fused_trial_on_auto_trains_its_members_end_to_end(ctx, monkeypatch, loss):
    """A fused trial through run_distill with ``fused_forward: auto``: on CUDA that is streams
    (warm-up steps eager, then each member's graph captured each epoch and replayed, the partial
    batch eager), on a CPU the loop forward. Every member reports every epoch and learns."""
    from trainables.training import fused

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = []
    real = fused.forward_mode
    monkeypatch.setattr(fused, "forward_mode", lambda *a, **kw: chosen.append(real(*a, **kw)) or chosen[-1])
    # 250 images at batch 64: three full batches and a partial one of 58 every epoch.
    data = {"channels": 3, "image_size": 8, "num_classes": 5, "train_size": 250}
    session = LocalSession(device)
    run_distill(DistillParams(dataset="synthetic", dataset_kwargs=data,
                              teacher={"model": "cnn_small", "epochs": 2, "lr": 0.05}, student="cnn_small",
                              epochs=3, batch_size=64, loss=loss, vectorize=2,
                              probes=[{"lr": 0.05, "seed": 0}, {"lr": 0.1, "seed": 1}]), session, ctx)
    assert chosen == ["streams" if device.type == "cuda" else "loop"]
    assert len(session.history) == 3
    first, last = session.history[0][RESULTS_KEY], session.history[-1][RESULTS_KEY]
    assert [m["epoch"] for m in last] == [3, 3]
    for k in range(2):
        assert 0.0 <= last[k]["val_acc"] <= 1.0
        # the cross-entropy part and the validation loss fall (CRD's contrast term grows at first
        # while its memory banks fill with the members' embeddings)
        assert last[k]["train_ce"] < first[k]["train_ce"], (k, first[k], last[k])
        assert last[k]["val_loss"] < first[k]["val_loss"], (k, first[k], last[k])
    assert last[0]["train_loss"] != last[1]["train_loss"]  # each member trained with its own lr and seed
