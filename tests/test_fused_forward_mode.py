"""Which forward a fused trial runs (trainables/training/fused.py::forward_mode): ``auto`` follows
the GPU measurements recorded in bench/results/sweep_gpu.jsonl."""
import pytest
import torch

from trainables.training.fused import VMAP_MAX_BATCH, forward_mode

CUDA, CPU = torch.device("cuda"), torch.device("cpu")  # device objects need no GPU


def test_auto_is_vmap_on_cuda_at_small_batches_and_loop_at_large_ones_and_on_the_cpu():
    assert forward_mode("auto", CUDA, 64) == "vmap"
    assert forward_mode("auto", CUDA, VMAP_MAX_BATCH) == "vmap"
    assert forward_mode("auto", CUDA, VMAP_MAX_BATCH + 1) == "loop"
    assert forward_mode("auto", CUDA, 512) == "loop"
    assert forward_mode("auto", CPU, 8) == "loop"


def test_an_explicit_forward_is_kept_and_an_unknown_one_refused():
    assert forward_mode("vmap", CPU, 512) == "vmap"
    assert forward_mode("loop", CUDA, 8) == "loop"
    assert forward_mode("streams", CUDA, 64) == forward_mode("streams", CPU, 64) == "streams"  # never picked by auto
    with pytest.raises(ValueError, match="accepted: auto, vmap, loop, streams"):
        forward_mode("grouped", CUDA, 64)
