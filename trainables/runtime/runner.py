"""The Ray Tune function trainable that every trial runs.

* ``workers == 1``: the training loop runs right here in the Tune trial process. Cheapest (no
  worker-group start-up), and checkpoints are native Tune checkpoints, so PBT can use them.
* ``workers > 1``: this function is a thin *driver* that starts a Ray Train V2 ``TorchTrainer``
  (DDP; gloo on CPU, nccl on GPU) running the same loop on every rank, and forwards rank 0's
  reports to Tune through ``TuneReportCallback``. The Train run is named after the Tune trial id,
  so a retried or restored trial resumes the Train run from its own last checkpoint. Starting a
  worker group is most of a short DDP trial's cost; :mod:`trainables.runtime.lean_train` trims
  what Ray Train starts for it (README.md, "DDP trial overhead").

Two reliability rules live here, for every trainable alike:

* A loss that becomes NaN/inf (:class:`~trainables.runtime.session.TrialDiverged`) ends the trial with a
  last report carrying ``diverged=1`` and the worst possible value of the sweep metric, on every
  rank, and the trial returns normally: Tune does not retry it, the sweep goes on, ASHA and Optuna
  rank it last, and the driver labels it ``diverged``.
* A restored trial that the finished-trials ledger (:mod:`trainables.runtime.ledger`) already knows replays
  its recorded final result instead of training again.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from trainables.core.config import resolve_env_refs
from trainables.runtime import phases
from trainables.runtime.ledger import finished_result, ledger_dir
from trainables.runtime.session import DIVERGED, TrialDiverged
from trainables.runtime.trainable import TrialContext, get_trainable

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
    metric: str | None = None  # the sweep metric: scores checkpoints, and a diverged trial reports its worst value
    mode: str = "max"


def diverged_result(exc: TrialDiverged, metric: str | None, mode: str) -> dict[str, Any]:
    """The last report of a diverged trial. The sweep metric is its worst possible value (-inf for
    mode max, +inf for min), not NaN: Tune requires the metric on every result, Optuna refuses NaN
    (the trial would stay RUNNING in its study) but ranks an infinite value last, as ASHA does."""
    out: dict[str, Any] = {DIVERGED: 1.0, "epoch": int(exc.epoch or 0), "divergence": str(exc)}
    if metric and metric != "epoch":
        out[metric] = float("-inf") if mode == "max" else float("inf")
    return out


def checkpoint_retention(execution: ExecutionConfig) -> dict[str, Any]:
    """Keep the best ``checkpoint_keep`` checkpoints by the sweep metric (Tune and Train both also
    keep the latest one, which resuming needs)."""
    if not execution.metric or execution.metric == "epoch":
        return {"num_to_keep": execution.checkpoint_keep}
    return {"num_to_keep": execution.checkpoint_keep, "checkpoint_score_attribute": execution.metric,
            "checkpoint_score_order": execution.mode}


def unpack_config(config: dict[str, Any]) -> dict[str, Any]:
    if CASE_KEY in config:
        return dict(config[CASE_KEY]["config"])
    return dict(config)


def run_trial_in_process(trainable: str, config: dict[str, Any], session, ctx: TrialContext,
                         metric: str | None = None, mode: str = "max"):
    defn = get_trainable(trainable)
    # ${env:NAME} values (credentials) are read here, in the trial's process, and nowhere else
    params = defn.params_model.model_validate(resolve_env_refs(unpack_config(config)))
    try:
        return defn.train_loop(params, session, ctx)
    except TrialDiverged as exc:
        # Every rank gets here at the same epoch (check_finite agrees across ranks); report is a
        # barrier, and rank 0's report is the one Tune sees.
        result = diverged_result(exc, metric, mode)
        session.report(result)
        return result


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


# The Train run's ``train_loop_config`` key holding the pickled loop config (see :func:`_train_worker`).
LOOP_PAYLOAD_KEY = "w2s_loop_payload"


def _train_worker(train_loop_config: dict[str, Any]) -> None:
    import pickle

    loop_config = pickle.loads(train_loop_config[LOOP_PAYLOAD_KEY])
    run_name = rank = None
    if phases.enabled():
        import ray.train

        train_ctx = ray.train.get_context()
        run_name, rank = train_ctx.get_experiment_name(), train_ctx.get_world_rank()
        phases.mark(run_name, "worker_process_created", rank, t=phases.process_start_time())
        phases.mark(run_name, "worker_fn_start", rank)
    from trainables.runtime.session import TrainSession

    _quiet_train_worker()
    _set_threads(loop_config["cpus_per_worker"])
    session = TrainSession()
    if run_name:
        phases.mark(run_name, "worker_session_ready", rank)
    run_trial_in_process(loop_config["trainable"], loop_config["config"], session, loop_config["ctx"],
                         loop_config.get("metric"), loop_config.get("mode", "max"))
    if run_name:
        phases.mark(run_name, "worker_loop_done", rank)


def _replay_if_finished(ctx: TrialContext) -> bool:
    """Report the recorded final result of a trial the ledger knows; True if it did."""
    from ray import tune

    if not ctx.storage_path or not ctx.sweep_name:
        return False
    result = finished_result(ledger_dir(ctx.storage_path, ctx.sweep_name), tune.get_context().get_trial_id())
    if result is None:
        return False
    tune.report(result)
    return True


def tune_entry(config: dict[str, Any], trainable_name: str, ctx: TrialContext, execution: ExecutionConfig) -> None:
    from trainables.runtime.session import TuneSession

    if _replay_if_finished(ctx):
        return
    workers = int(unpack_config(config).get("workers", 1))
    if workers == 1:
        _set_threads(execution.cpus_per_worker)
        run_trial_in_process(trainable_name, config, TuneSession(), ctx, execution.metric, execution.mode)
        return

    from ray import tune

    run_name = f"train-{tune.get_context().get_trial_id()}"
    phases.mark(run_name, "trial_start")
    import ray.train
    from ray import cloudpickle
    from trainables.runtime.lean_train import backend_config, trainer_class
    from ray.tune.integration.ray_train import TuneReportCallback

    use_gpu = execution.gpus_per_worker > 0
    per_worker = {"CPU": execution.cpus_per_worker}
    if use_gpu:
        per_worker["GPU"] = execution.gpus_per_worker
    # Pickled here, unpickled only on the ranks: Train ships train_loop_config inside its run context
    # to the controller actor too, and unpickling our TrialContext there would import trainables
    # and the orchestrator's feature store in a process on every DDP trial's critical path.
    payload = cloudpickle.dumps({"trainable": trainable_name, "config": config, "ctx": ctx,
                                 "cpus_per_worker": execution.cpus_per_worker, "metric": execution.metric,
                                 "mode": execution.mode})
    trainer = trainer_class()(
        _train_worker,
        train_loop_config={LOOP_PAYLOAD_KEY: payload},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                               resources_per_worker=per_worker),
        torch_config=backend_config(use_gpu),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=execution.train_storage_path or None,
            callbacks=[TuneReportCallback()],
            checkpoint_config=ray.train.CheckpointConfig(**checkpoint_retention(execution)),
            failure_config=ray.train.FailureConfig(max_failures=execution.worker_max_failures),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )
    phases.mark(run_name, "trainer_built")
    trainer.fit()
    phases.mark(run_name, "fit_end")
