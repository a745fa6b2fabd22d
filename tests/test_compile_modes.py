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
    params = DistillParams(dataset="synthetic", dataset_kwargs={"channels": 3, "image_size": 8, "num_classes": 5,
                                                                "train_size": 250},
                           teacher={"model": "cnn_small", "epochs": 1, "lr": 0.05}, student="cnn_small",
                           epochs=2, batch_size=64, lr=0.05, loss="kd", compile=compile_mode, **extra)
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
