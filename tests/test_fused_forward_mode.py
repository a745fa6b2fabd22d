"""Which forward a fused trial runs (trainables/training/fused.py::forward_mode): ``auto`` follows
the GPU measurements recorded in bench/results/sweep_gpu.jsonl (streams 10.2x sequential trials at
batch 64 and 1.87x at 512 on an H200; vmap 3.24x at 64; loop 1.02x)."""
import pytest
import torch

from trainables.training.fused import VMAP_MAX_BATCH, forward_mode

CUDA, CPU = torch.device("cuda"), torch.device("cpu")  # device objects need no GPU


def test_auto_is_streams_on_cuda_at_every_batch_and_loop_on_the_cpu():
    for batch in (8, 64, VMAP_MAX_BATCH, 512):
        assert forward_mode("auto", CUDA, batch) == "streams"
        assert forward_mode("auto", CPU, batch) == "loop"


@pytest.mark.parametrize("why", [{"distributed": True}, {"compiled": True}, {"distributed": True, "compiled": True}])
def test_auto_is_vmap_then_loop_on_cuda_where_streams_cannot_run(why):
    """DDP workers (the gradient average would sit inside each member's graph) or compile (which
    captures the step itself): vmap at small batches, loop above VMAP_MAX_BATCH; loop on a CPU."""
    assert forward_mode("auto", CUDA, 64, **why) == "vmap"
    assert forward_mode("auto", CUDA, VMAP_MAX_BATCH, **why) == "vmap"
    assert forward_mode("auto", CUDA, VMAP_MAX_BATCH + 1, **why) == "loop"
    assert forward_mode("auto", CPU, 8, **why) == "loop"


def test_an_explicit_forward_is_kept_and_an_unknown_one_refused():
    assert forward_mode("vmap", CPU, 512) == "vmap"
    assert forward_mode("loop", CUDA, 8) == "loop"
    assert forward_mode("streams", CUDA, 64) == forward_mode("streams", CPU, 64) == "streams"
    assert forward_mode("vmap", CUDA, 64, distributed=True) == "vmap"
    with pytest.raises(ValueError, match="accepted: auto, vmap, loop, streams"):
        forward_mode("grouped", CUDA, 64)


@pytest.mark.usefixtures("one_torch_thread")
def test_a_fused_trial_tells_auto_whether_it_has_workers_and_compile(ctx, monkeypatch):
    from tests.test_fused import MEMBERS, TEACHER
    from trainables.distill.params import DistillParams
    from trainables.distill.trainable import run_distill
    from trainables.runtime.session import LocalSession
    from trainables.training import fused

    asked = []
    real = fused.forward_mode
    monkeypatch.setattr(fused, "forward_mode", lambda *a, **kw: asked.append((a[0], a[2], kw)) or real(*a, **kw))
    run_distill(DistillParams(teacher=TEACHER, student="mlp_tiny", epochs=1, batch_size=64, loss="kd", vectorize=2,
                              probes=MEMBERS[:2]), LocalSession(CPU), ctx)
    assert asked == [("auto", 64, {"distributed": False, "compiled": False})]
