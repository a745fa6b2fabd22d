"""What a DDP trial hands Ray Train (trainables/runtime/lean_train.py, lean_backend.py): the
backend config and callbacks the Train controller unpickles import no torch (1.8 s of the
controller's start on every DDP trial), and the stock classes come back with W2S_STOCK_TRAIN=1.
A real 2-rank DDP trial through them: tests/test_e2e_sweep.py::test_a_two_worker_ddp_trial_ran."""
import os
import subprocess
import sys

from ray import cloudpickle

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_controllers_share_of_a_ddp_trial_unpickles_without_torch():
    from trainables.runtime.lean_backend import LeanTorchConfig, PromptCleanerStop

    payload = cloudpickle.dumps([LeanTorchConfig(backend="gloo"), PromptCleanerStop()])
    code = ("import sys, pickle; objs = pickle.loads(sys.stdin.buffer.read()); "
            "assert objs[0].backend == 'gloo' and objs[0].backend_cls.__name__ == 'LeanTorchBackend'; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    out = subprocess.run([sys.executable, "-c", code], input=payload, capture_output=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": REPO}, timeout=120)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert out.stdout.decode().strip() == "[]"


def test_the_lean_config_sets_up_what_torchconfig_does(monkeypatch):
    from ray.train.torch import TorchConfig

    from trainables.runtime import lean_train
    from trainables.runtime.lean_backend import LeanTorchConfig

    monkeypatch.delenv(lean_train.STOCK_TRAIN_ENV, raising=False)
    lean = lean_train.backend_config(use_gpu=False)
    assert type(lean) is LeanTorchConfig and lean.backend == "gloo"
    assert lean_train.backend_config(use_gpu=True).backend == "nccl"
    stock = TorchConfig(backend="gloo")
    assert lean.framework == stock.framework and lean.timeout_s == stock.timeout_s
    assert lean.to_dict() == {**stock.to_dict(), "init_method": "tcp"}
    assert lean.backend_cls.share_cuda_visible_devices == stock.backend_cls.share_cuda_visible_devices
    assert lean_train.trainer_class() is lean_train.LeanTorchTrainer
    # the baseline bench/overhead.py compares against: Ray's own classes
    monkeypatch.setenv(lean_train.STOCK_TRAIN_ENV, "1")
    assert type(lean_train.backend_config(use_gpu=False)) is TorchConfig
    assert lean_train.trainer_class() is lean_train.TorchTrainer


def test_the_rank_env_and_process_group_functions_run_on_a_rank(monkeypatch):
    """The functions the ranks run, in this process as rank 0 of 1 (gloo, a free local port)."""
    import socket

    import torch.distributed as dist

    from trainables.runtime import lean_backend

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    lean_backend._init_process_group("gloo", world_rank=0, world_size=1, url=f"tcp://127.0.0.1:{port}",
                                     timeout_s=60)
    try:
        assert dist.is_initialized() and dist.get_world_size() == 1 and dist.get_rank() == 0
    finally:
        lean_backend._shut_down(destroy=True)
    assert not dist.is_initialized()
