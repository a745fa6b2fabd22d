"""Ray Train's ``TorchTrainer`` for the sweep's DDP trials, minus two per-trial costs of Ray Train
2.60's stock callbacks that a sweep of many short DDP trials pays on every trial (measured by
bench/overhead.py; README.md, "DDP trial overhead"):

* the Ray Data plumbing when the run has no Ray datasets (ours never do: each rank loads its own
  data). The stock ``DatasetsCallback`` starts a ``DatasetManager`` actor for every worker group
  even with no datasets: one more Python process importing Ray Data while the ranks start.
  Without that callback the ranks' train context has no dataset shard provider, which only
  ``ray.train.get_dataset_shard`` reads (never called here).
* the wait for the placement-group cleaner to stop when the controller finishes. The stock
  callback blocks until the cleaner's monitor thread wakes up (it polls once a second), after the
  worker group, and with it the placement group, is already gone. Here the controller asks the
  cleaner to stop and goes on; the cleaner still exits at its next wake-up and, should it see
  the controller dead by then, only removes a placement group that still exists. The cleaner
  itself stays: with Tune + Train V2 it is what removes a killed trial's placement group.

and one more: the controller actor importing torch (:mod:`trainables.runtime.lean_backend`,
whose backend config and cleaner callback are importable without it; they live there because
the controller unpickles them, while this module imports ``ray.train.torch``).

This module imports Ray Train internals: only the DDP path imports it, and when the hooks it
relies on are missing (another Ray version) or ``W2S_STOCK_TRAIN=1`` (bench/overhead.py's
baseline), :func:`trainer_class` returns the stock ``TorchTrainer`` and :func:`backend_config`
Ray's ``TorchConfig``.
"""
from __future__ import annotations

import os

from ray.train.torch import TorchTrainer

from trainables.runtime.lean_backend import LeanTorchConfig, PromptCleanerStop

# "1": start DDP trials with Ray Train's stock callbacks (bench/overhead.py's baseline).
STOCK_TRAIN_ENV = "W2S_STOCK_TRAIN"

try:
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
except ImportError:  # another Ray version: the stock trainer
    DatasetsCallback = PlacementGroupCleanerCallback = None


class LeanTorchTrainer(TorchTrainer):
    def _create_default_callbacks(self):
        callbacks = []
        for cb in super()._create_default_callbacks():
            if type(cb) is DatasetsCallback and not self.datasets:
                continue
            if type(cb) is PlacementGroupCleanerCallback:
                cb = PromptCleanerStop()
            callbacks.append(cb)
        return callbacks


def _stock() -> bool:
    return (DatasetsCallback is None or not hasattr(TorchTrainer, "_create_default_callbacks")
            or os.environ.get(STOCK_TRAIN_ENV) == "1")


def trainer_class() -> type:
    return TorchTrainer if _stock() else LeanTorchTrainer


def backend_config(use_gpu: bool):
    """The process-group setup of a DDP trial: nccl with GPUs, gloo on CPUs."""
    backend = "nccl" if use_gpu else "gloo"
    if _stock():
        from ray.train.torch import TorchConfig

        return TorchConfig(backend=backend)
    return LeanTorchConfig(backend=backend)
