"""What a DDP trial sends to Ray Train's controller actor, without importing torch there.

Train 2.60 starts a controller actor per run, and that process unpickles the run's backend config
and callbacks. Ray's ``TorchConfig`` lives in ``ray.train.torch.config``, which imports torch at
the top: about 1.8 s of a 2-core CPU's time in a process that never runs torch, on the critical
path of every DDP trial (bench/overhead.py's "Train controller actor start"). The classes here
are importable without torch: :class:`LeanTorchConfig` sets up the same process group as
``TorchConfig`` (backend nccl with GPUs, else gloo; TCP rendezvous at rank 0's address; the
torch-elastic environment variables each rank reads), from functions that import torch only on
the ranks, where they run. :class:`PromptCleanerStop` lives here for the same reason (see
:mod:`trainables.runtime.lean_train`).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import ray
from ray.train.backend import Backend, BackendConfig

log = logging.getLogger(__name__)

# Ray's own setting for how long ranks may take to tear the process group down.
SHUTDOWN_TIMEOUT_ENV = "TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S"
SHUTDOWN_TIMEOUT_S = 30

try:
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
except ImportError:  # another Ray version: lean_train falls back to the stock trainer
    PlacementGroupCleanerCallback = PromptCleanerStop = None

if PlacementGroupCleanerCallback is not None:

    class PromptCleanerStop(PlacementGroupCleanerCallback):
        """The stock cleaner callback, except that a finishing controller does not wait for the
        cleaner to stop (see trainables/runtime/lean_train.py; an aborting one still does)."""

        async def before_controller_shutdown(self):
            if self._cleaner is not None:
                self._cleaner.stop.remote()
                self._cleaner = None


class RankDevice:
    """Around the training function on each rank: the rank's CUDA device made current (what
    ``TorchConfig``'s context does), so ``torch.cuda`` calls without a device land on it."""

    def __enter__(self):
        import torch

        if torch.cuda.is_available():
            from ray.train.torch import get_device

            device = get_device()
            if device.type == "cuda":
                torch.cuda.set_device(device)

    def __exit__(self, *exc):
        return False


@dataclass
class LeanTorchConfig(BackendConfig):
    """``TorchConfig(backend=...)`` for our DDP trials, importable without torch. ``backend``
    None picks nccl when the ranks have GPUs, else gloo."""

    backend: str | None = None
    timeout_s: int = 1800

    @property
    def backend_cls(self):
        return LeanTorchBackend

    @property
    def train_func_context(self):
        return RankDevice

    @property
    def framework(self):
        from ray.train.v2._internal.util import TrainingFramework

        return TrainingFramework.TORCH

    def to_dict(self) -> dict:
        """What Train's state export records, as for ``TorchConfig``."""
        return {"backend": self.backend, "init_method": "tcp", "timeout_s": self.timeout_s}


class LeanTorchBackend(Backend):
    # Every rank on a node sees all of the node's GPUs it was given (NCCL needs its peers' devices).
    share_cuda_visible_devices: bool = True

    def on_start(self, worker_group, backend_config: LeanTorchConfig):
        from ray._common.network_utils import build_address
        from ray.train._internal.utils import get_address_and_port

        backend = backend_config.backend
        if backend is None:
            backend = "nccl" if worker_group.get_resources_per_worker().get("GPU", 0) > 0 else "gloo"
        address, port = worker_group.execute_single(0, get_address_and_port)
        worker_group.execute(_set_rank_env)
        size = len(worker_group)
        ray.get([worker_group.execute_single_async(rank, _init_process_group, backend=backend, world_rank=rank,
                                                   world_size=size, url=f"tcp://{build_address(address, port)}",
                                                   timeout_s=backend_config.timeout_s)
                 for rank in range(size)])

    def on_shutdown(self, worker_group, backend_config):
        from ray.exceptions import GetTimeoutError

        timeout = float(os.environ.get(SHUTDOWN_TIMEOUT_ENV, SHUTDOWN_TIMEOUT_S))
        try:
            ray.get(worker_group.execute_async(_shut_down, destroy=len(worker_group) > 1), timeout=timeout)
        except GetTimeoutError:
            log.warning("torch process group shutdown timed out after %s s", timeout)


def _set_rank_env() -> None:
    """On a rank, before the process group: the torch-elastic variables (RANK, LOCAL_RANK, ...)
    that torch.distributed and libraries built on it read."""
    context = ray.train.get_context()
    os.environ.update({"LOCAL_RANK": str(context.get_local_rank()),
                       "LOCAL_WORLD_SIZE": str(context.get_local_world_size()),
                       "NODE_RANK": str(context.get_node_rank()), "RANK": str(context.get_world_rank()),
                       "WORLD_SIZE": str(context.get_world_size())})


def _init_process_group(backend: str, world_rank: int, world_size: int, url: str, timeout_s: int) -> None:
    """On a rank: join the run's process group."""
    from datetime import timedelta

    import torch.distributed as dist

    if backend == "nccl":
        # A timed-out collective fails the rank instead of hanging it (Ray's TorchConfig does the same).
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    dist.init_process_group(backend=backend, init_method=url, rank=world_rank, world_size=world_size,
                            timeout=timedelta(seconds=timeout_s))


def _shut_down(destroy: bool) -> None:
    """On a rank at the end: leave the process group and free cached GPU memory."""
    import torch
    import torch.distributed as dist

    if destroy and dist.is_initialized():
        dist.destroy_process_group()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
