"""The Ray Tune function trainable that every trial runs.

* ``workers == 1``: the training loop runs right here in the Tune trial process. Cheapest (no
  worker-group start-up), and checkpoints are native Tune checkpoints, so PBT can use them.
* ``workers > 1``: this function is a thin *driver* that starts a Ray Train V2 ``TorchTrainer``
  (DDP; gloo on CPU, nccl on GPU) running the same loop on every rank, and forwards rank 0's
  reports to Tune through ``TuneReportCallback``. The Train run is named after the Tune trial id,
  so a retried or restored trial resumes the Train run from its own last checkpoint.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from trainables.registry import TrialContext, get_trainable

# Reserved config key used by reference runs (best-config re-runs and no-teacher controls): the
# real trial config is nested under it, with a role label. Stripped before validation.
CASE_KEY = "_w2s_case"


@dataclass
class ExecutionConfig:
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    train_storage_path: str = ""
    checkpoint_keep: int = 2
    worker_max_failures: int = 0


def unpack_config(config: dict[str, Any]) -> dict[str, Any]:
    if CASE_KEY in config:
        return dict(config[CASE_KEY]["config"])
    return dict(config)


def run_trial_in_process(trainable: str, config: dict[str, Any], session, ctx: TrialContext):
    defn = get_trainable(trainable)
    params = defn.params_model.model_validate(unpack_config(config))
    return defn.train_loop(params, session, ctx)


def _set_threads(cpus: float) -> None:
    import torch

    threads = max(1, int(cpus))
    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def _quiet_train_worker() -> None:
    # Train V2 logs every report at INFO under a logger named by file path, which LoggingConfig
    # does not reach; one line per epoch per rank drowns the sweep's own output.
    import logging

    try:
        from ray.train.v2._internal.execution import context as train_context

        logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    except ImportError:
        pass


def _train_worker(loop_config: dict[str, Any]) -> None:
    from trainables.session import TrainSession

    _quiet_train_worker()
    _set_threads(loop_config["cpus_per_worker"])
    run_trial_in_process(loop_config["trainable"], loop_config["config"], TrainSession(), loop_config["ctx"])


def tune_entry(config: dict[str, Any], trainable_name: str, ctx: TrialContext, execution: ExecutionConfig) -> None:
    from trainables.session import TuneSession

    workers = int(unpack_config(config).get("workers", 1))
    if workers == 1:
        _set_threads(execution.cpus_per_worker)
        run_trial_in_process(trainable_name, config, TuneSession(), ctx)
        return

    import ray.train
    from ray import tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    use_gpu = execution.gpus_per_worker > 0
    per_worker = {"CPU": execution.cpus_per_worker}
    if use_gpu:
        per_worker["GPU"] = execution.gpus_per_worker
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"trainable": trainable_name, "config": config, "ctx": ctx,
                           "cpus_per_worker": execution.cpus_per_worker},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                               resources_per_worker=per_worker),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=f"train-{tune.get_context().get_trial_id()}",
            storage_path=execution.train_storage_path or None,
            callbacks=[TuneReportCallback()],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=execution.checkpoint_keep),
            failure_config=ray.train.FailureConfig(max_failures=execution.worker_max_failures),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )
    trainer.fit()
