"""``compile`` for the distill student (trainables/training/classifier_loop.py::compiled_forward):
the accepted modes, and a compiled trial trains the same student as an eager one: on the CPU
with torch.compile's default mode, and on a GPU with ``reduce-overhead`` (CUDA graphs), including
the last partial batch, whose shape is recorded as a second graph."""
import pytest
import torch
from torch import nn

from trainables.distill.trainable import run_distill
from trainables.distill.params import DistillParams
from trainables.runtime.session import LocalSession
from trainables.training.classifier_loop import COMPILE_MODES, compiled_forward

COMPARED = ("train_loss", "val_acc", "val_loss", "test_acc", "test_loss")


def test_eager_is_the_model_itself_and_an_unknown_mode_is_refused():
    model = nn.Linear(3, 2)
    assert compiled_forward(model, False, torch.device("cpu")) == (model, False)
    with pytest.raises(ValueError, match="compile: 'fast' is not a compile mode"):
        compiled_forward(model, "fast", torch.device("cpu"))
    # CUDA graphs exist only on a GPU: on the CPU reduce-overhead compiles as the default mode.
    assert compiled_forward(model, "reduce-overhead", torch.device("cpu"))[1] is False


@pytest.mark.parametrize("value,kept", [(True, True), (False, False), ("reduce-overhead", "reduce-overhead")])
def test_params_accept_booleans_and_mode_names(value, kept):
    assert DistillParams(compile=value).compile == kept
    assert set(COMPILE_MODES) == {"default", "reduce-overhead", "max-autotune-no-cudagraphs"}


def trial(ctx, device, compile_mode, **extra):
    # 250 images at batch 64: three full batches and a partial one of 58 every epoch.
    data = {"channels": 3, "image_size": 8, "num_classes": 5, "train_size": 250}
    base = {"dataset": "synthetic", "dataset_kwargs": data,
            "teacher": {"model": "cnn_small", "epochs": 1, "lr": 0.05}, "student": "cnn_small", "epochs": 2,
            "batch_size": 64, "lr": 0.05, "loss": "kd", "compile": compile_mode}
    params = DistillParams(**{**base, **extra})  # extra may override base's keys (epochs, loss)
    session = LocalSession(device)
    run_distill(params, session, ctx)
    return session.history


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_a_compiled_trial_trains_the_same_student_as_eager_on_the_cpu(ctx):
    torch._dynamo.reset()
    eager = trial(ctx, torch.device("cpu"), False)
    compiled = trial(ctx, torch.device("cpu"), True)
    assert len(eager) == len(compiled) == 2
    for a, b in zip(eager, compiled):
        for key in COMPARED:
            # Inductor fuses and reorders float32 arithmetic: equal up to rounding.
            assert b[key] == pytest.approx(a[key], abs=2e-3), key


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_reduce_overhead_replays_cuda_graphs_and_trains_the_same_student_as_eager_on_a_gpu(ctx):
    torch._dynamo.reset()
    device = torch.device("cuda")
    assert compiled_forward(nn.Linear(3, 2).to(device), "reduce-overhead", device)[1] is True
    eager = trial(ctx, device, False)
    graphed = trial(ctx, device, "reduce-overhead")
    assert len(eager) == len(graphed) == 2
    for a, b in zip(eager, graphed):
        # bf16 autocast on the GPU, where compiled kernels round differently from eager ones.
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.05)
        assert b["val_acc"] == pytest.approx(a["val_acc"], abs=0.1)


# ---------------------------------------------------------------- the loss, compiled with the student

SCHEDULED = {"dkd": {"warmup_epochs": 4}, "adaptconf": {"rate": 0.5}, "augconf": {"rate": 0.5},
             "auxconf": {"warmup_frac": 0.6}}


def counting_compile(monkeypatch):
    """torch.compile with dynamo's frame counter as the backend (no inductor: what is counted is
    what dynamo traces, which the backend does not change); returns {compiled object: counter}."""
    from torch._dynamo.testing import CompileCounter

    real, counters = torch.compile, {}

    def compile_counted(fn, mode=None, dynamic=None, **_):
        counters[fn] = CompileCounter()
        return real(fn, backend=counters[fn], dynamic=dynamic)

    monkeypatch.setattr(torch, "compile", compile_counted)
    return counters


@pytest.mark.parametrize("loss", sorted(SCHEDULED))
def test_a_compiled_trials_loss_is_traced_once_per_batch_shape_while_its_schedule_moves(ctx, monkeypatch, loss):
    """With ``compile`` a single trial's loss runs compiled too. Its schedule (DKD's warm-up, the
    superalignment ramps, AuxConf's coefficient) comes in as tensors: four epochs of moving
    weights trace the loss once per batch shape (the full batch and the last partial one), not
    once per epoch, and train as the eager trial does, epoch values included."""
    from trainables.losses import DistillLoss

    torch._dynamo.reset()
    eager = trial(ctx, torch.device("cpu"), False, epochs=4, loss=loss, loss_params=SCHEDULED[loss])
    counters = counting_compile(monkeypatch)
    compiled = trial(ctx, torch.device("cpu"), True, epochs=4, loss=loss, loss_params=SCHEDULED[loss])
    (loss_counter,) = [c for fn, c in counters.items() if isinstance(fn, DistillLoss)]
    assert loss_counter.frame_count == 2, loss_counter.frame_count
    schedule = {"dkd": "train_dkd_warmup", "adaptconf": "train_alpha", "augconf": "train_alpha",
                "auxconf": "train_aux_coef"}[loss]
    assert len({round(h[schedule], 6) for h in eager}) > 1  # the schedule moved
    for a, b in zip(eager, compiled, strict=True):
        for key in ("train_loss", schedule):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize("loss", sorted(SCHEDULED))
def test_a_single_loss_reads_its_schedule_from_the_columns_when_given(loss):
    """``member_columns`` of one loss (what a compiled single trial passes) give the same loss as
    the epoch itself, at every epoch of the schedule."""
    from trainables.losses import LossInputs, create_loss

    g = torch.Generator().manual_seed(0)
    fn = create_loss(loss, SCHEDULED[loss], num_classes=5)
    z, t, y = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g), torch.randint(0, 5, (6,), generator=g)
    for epoch in range(5):
        shared = dict(student_logits=z, targets=y, teacher_logits=t, epoch=epoch, num_epochs=5, progress=epoch / 5)
        columns = type(fn).epoch_columns([fn], epoch, 5, torch.device("cpu"))
        by_epoch, by_columns = fn(LossInputs(**shared)), fn(LossInputs(**shared, member_columns=columns))
        assert by_columns.keys() == by_epoch.keys()
        for key in by_epoch:
            torch.testing.assert_close(by_columns[key], by_epoch[key], rtol=1e-6, atol=1e-7, msg=key)


@pytest.mark.slow  # four inductor compiles of CRD (about a minute on 2 shared cores)
@pytest.mark.parametrize("fused", [False, True], ids=["single", "fused members"])
@pytest.mark.parametrize("dense", [True, False], ids=["dense scores", "gathered rows"])
def test_compiled_crd_trains_as_eager_though_its_banks_move_in_place(dense, fused):
    """CRD's step reads its memory banks and then overwrites them in place. Compiled, its backward
    must still see the banks as the scores read them: in torch 2.14 inductor's partitioner
    recomputed the dense path's copy of the banks in backward, after the update, and the student's
    gradient came out wrong with no error (pytorch/pytorch#197039). Three steps of a loss compiled
    with inductor against the eager one, the negatives fixed: gradients, banks and normalisers."""
    import copy

    from trainables.losses import LossInputs, create_loss
    from trainables.training.fused import loss_member_stack

    gen = torch.Generator().manual_seed(0)
    k, n, b, c, d, negs = (2 if fused else 1), 40, 8, 4, 6, 5
    labels = torch.arange(n) % c
    losses = []
    for seed in range(k):
        torch.manual_seed(seed)
        loss = create_loss("crd", {"nce_k": negs, "embed_dim": 4, "nce_m": 0.3 + 0.4 * seed}, num_classes=c,
                           student_dim=d, teacher_dim=d, num_samples=n, train_labels=labels)
        loss.dense_scores = lambda batch: dense
        losses.append(loss)
    steps = [(torch.randperm(n, generator=gen)[:b], torch.randn(k, b, d, generator=gen),
              torch.randn(b, d, generator=gen), torch.randn(k, b, c, generator=gen)) for _ in range(3)]

    def run(compiled: bool):
        own = [copy.deepcopy(loss) for loss in losses]
        stack = loss_member_stack(own) if fused else None
        negatives = {}

        def fixed(labels_, count):  # each step's negatives, the same in both runs
            return negatives["now"]

        own[0].sample_negatives = fixed

        def step(inputs):
            if fused:
                rows = type(own[0]).forward_members(own, inputs, (stack.params, stack.buffers))
                return torch.stack([s["loss"] for s in rows]).sum()
            return own[0](inputs)["loss"]

        fn = torch.compile(step, dynamic=False) if compiled else step
        grads = []
        for idx, f_s, f_t, z in steps:
            negatives["now"] = (idx.repeat(k)[:, None] * 7 + torch.arange(1, negs + 1)) % n
            f_s = (f_s if fused else f_s[0]).clone().requires_grad_()
            inputs = LossInputs(student_logits=z if fused else z[0], targets=labels[idx], teacher_logits=z[0],
                                student_features=f_s, teacher_features=f_t, indices=idx)
            fn(inputs).backward()
            grads.append(f_s.grad)
        return grads, [(loss.memory.clone(), loss.z.clone()) for loss in own]

    torch._dynamo.reset()
    (eager_grads, eager_state), (compiled_grads, compiled_state) = run(False), run(True)
    for i, (e, g) in enumerate(zip(eager_grads, compiled_grads)):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6, msg=f"step {i}")
    for (em, ez), (cm, cz) in zip(eager_state, compiled_state):
        torch.testing.assert_close(cm, em, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(cz, ez, rtol=1e-5, atol=0)
