"""From a validated spec to a ``ray.tune.Tuner``: param space, search algorithm, scheduler,
stoppers, per-trial resources and the trainable."""
from __future__ import annotations

import copy
from typing import Any

from orchestrator.run.resources import ResourcePlan, trial_resources
from orchestrator.space.spec import SweepSpec
from orchestrator.store.layout import train_runs_dir, trial_dir_name
from trainables.core.config import get_dotted, set_dotted
from trainables.runtime.runner import ExecutionConfig, checkpoint_retention, tune_entry, unpack_config
from trainables.runtime.trainable import TrialContext, get_trainable
from trainables.runtime.vectorize import VECTORIZE_KEY


def param_space(spec: SweepSpec) -> dict[str, Any]:
    from ray import tune

    from orchestrator.space.vectorized import probe_space

    space = spec.fixed_config()
    for key, domain in spec.domains.items():
        if key not in spec.vectorized_keys:
            set_dotted(space, key, domain.to_tune())
    space.update(probe_space(spec))  # per-configuration domains of vectorised trials
    # A fixed value that points_to_evaluate overrides (such as workers) must be a domain, or Tune
    # warns that the point disagrees with the constant.
    for point in spec.points_to_evaluate:
        for key in point:
            if key not in spec.domains:
                current = get_dotted(space, key)
                if not hasattr(current, "sample"):
                    set_dotted(space, key, tune.choice([current]))
    return space


def nested_points(spec: SweepSpec) -> list[dict[str, Any]]:
    from orchestrator.space.vectorized import point_probes

    points = []
    for i, point in enumerate(spec.points_to_evaluate):
        nested: dict[str, Any] = {}
        for key, value in point.items():
            if key not in spec.vectorized_keys:
                set_dotted(nested, key, value)
        nested.update(point_probes(spec, point, i))
        points.append(nested)
    return points


def search_algorithm(spec: SweepSpec, max_concurrent: int | None = None):
    points = nested_points(spec) or None
    if spec.search_alg.type == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        if points:
            points = [_searched_values(p, spec) for p in points]
        return OptunaSearch(points_to_evaluate=points, seed=spec.search_alg.seed)
    from ray.tune.search import BasicVariantGenerator

    # TuneConfig.max_concurrent_trials is ignored for this generator; it takes its own limit.
    return BasicVariantGenerator(points_to_evaluate=points, random_state=spec.search_alg.seed,
                                 max_concurrent=max_concurrent or 0)


def _searched_values(point: dict[str, Any], spec: SweepSpec) -> dict[str, Any]:
    """The searched keys' values of a nested point: Optuna's points name searched parameters only."""
    out: dict[str, Any] = {}
    for key in spec.domains:
        value = get_dotted(point, key)
        if value is not None:
            set_dotted(out, key, value)
    return out


def scheduler(spec: SweepSpec, sweep: str | None = None):
    """``sweep``: the sweep's name (its run folder), which names the fused trials' mailbox."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s = spec.scheduler
    if s.type == "asha":
        # "epoch" rather than training_iteration: it survives a restored Train-in-Tune trial,
        # whose Tune iteration counter restarts at 1.
        options = dict(time_attr="epoch", max_t=s.max_t, grace_period=s.grace_period,
                       reduction_factor=s.reduction_factor, brackets=s.brackets)
        defn = get_trainable(spec.trainable)
        if defn.stops_members and spec.params.get(VECTORIZE_KEY):
            from orchestrator.run.member_scheduler import MemberASHA

            # Fused trials: every member is judged at the rungs on its own.
            return MemberASHA(fields=tuple(defn.vectorized_keys), sweep=sweep or spec.name, **options)
        return ASHAScheduler(**options)
    return FIFOScheduler()


class TargetStopper:
    """Stop a trial once its metric reaches ``target`` (from above for mode=min)."""

    def __init__(self, metric: str, mode: str, target: float):
        self.metric, self.mode, self.target = metric, mode, target

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        value = result.get(self.metric)
        if value is None:
            return False
        return value >= self.target if self.mode == "max" else value <= self.target


def stopper(spec: SweepSpec):
    from ray.tune.stopper import CombinedStopper, FunctionStopper, MaximumIterationStopper

    parts = []
    if spec.stop.max_iterations:
        parts.append(MaximumIterationStopper(spec.stop.max_iterations))
    if spec.stop.target is not None:
        parts.append(FunctionStopper(TargetStopper(spec.metric, spec.mode, spec.stop.target)))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else CombinedStopper(*parts)


class TrialResources:
    """Per-trial resources from the trial's own ``workers`` (callable, so a searched worker count
    gets the right placement group)."""

    def __init__(self, spec: SweepSpec, driver_slots: float):
        self.spec = spec
        self.driver_slots = driver_slots

    def __call__(self, config: dict[str, Any]):
        from ray.tune import PlacementGroupFactory

        workers = int(unpack_config(config).get("workers", 1))
        return PlacementGroupFactory([trial_resources(self.spec, workers, self.driver_slots)])


def execution_config(spec: SweepSpec, train_storage_path: str) -> ExecutionConfig:
    return ExecutionConfig(cpus_per_worker=spec.resources.cpus_per_worker,
                           gpus_per_worker=spec.resources.gpus_per_worker,
                           train_storage_path=train_storage_path, checkpoint_keep=spec.checkpoint.keep,
                           worker_max_failures=spec.failure.max_failures, metric=spec.metric, mode=spec.mode)


def trainable(spec: SweepSpec, ctx: TrialContext, execution: ExecutionConfig, driver_slots: float):
    from ray import tune

    fn = tune.with_parameters(tune_entry, trainable_name=spec.trainable, ctx=ctx, execution=execution)
    return tune.with_resources(fn, TrialResources(spec, driver_slots))


def _dirname(trial) -> str:
    return trial_dir_name(trial.trial_id)


def build_tuner(spec: SweepSpec, *, name: str, storage_path: str, ctx: TrialContext, plan: ResourcePlan,
                callbacks: list, space: dict[str, Any] | None = None, reference: bool = False):
    from ray import tune

    from ray.tune.search import BasicVariantGenerator

    execution = execution_config(spec, train_runs_dir(storage_path, name))
    limit = plan.max_concurrent_trials
    search_alg = (BasicVariantGenerator(max_concurrent=limit or 0) if reference
                  else search_algorithm(spec, limit))
    tune_config = tune.TuneConfig(
        metric=spec.metric, mode=spec.mode,
        num_samples=1 if reference else spec.num_samples,
        search_alg=search_alg,
        scheduler=None if reference else scheduler(spec, ctx.sweep_name or name),
        max_concurrent_trials=None if isinstance(search_alg, BasicVariantGenerator) else limit,
        time_budget_s=None if reference else spec.time_budget_s,
        trial_dirname_creator=_dirname,
        reuse_actors=True,
    )
    run_config = tune.RunConfig(
        name=name, storage_path=storage_path, callbacks=callbacks,
        stop=None if reference else stopper(spec),
        failure_config=tune.FailureConfig(max_failures=spec.failure.max_failures),
        checkpoint_config=tune.CheckpointConfig(**checkpoint_retention(execution)),
        verbose=0,
    )
    return tune.Tuner(trainable(spec, ctx, execution, plan.cluster.driver_slots),
                      param_space=copy.deepcopy(space) if space is not None else param_space(spec),
                      tune_config=tune_config, run_config=run_config)


def restore_tuner(spec: SweepSpec, *, path: str, storage_path: str, name: str, ctx: TrialContext,
                  plan: ResourcePlan):
    from ray import tune

    execution = execution_config(spec, train_runs_dir(storage_path, name))
    return tune.Tuner.restore(path, trainable(spec, ctx, execution, plan.cluster.driver_slots),
                              resume_unfinished=True, resume_errored=True)
