"""Vectorised trials (``params.vectorize: K``) in the orchestrator.

A trainable that names per-configuration parameters (``TrainableDef.vectorized_keys``, e.g. the
probe lr, weight decay, epochs and loss options of ``w2s_probe``) can train many configurations in
one trial as one batched computation. With ``vectorize: K``:

* **Search space.** Searched per-configuration keys leave the trial level: each trial gets K
  independent samples of the sampled ones (``probes``, a list Tune resolves) and the values of the
  ``grid`` ones (``probe_grid``), and trains K x prod(grid sizes) configurations. Trial-level keys
  are searched as usual. (With no sampled per-configuration key, K identical samples would be
  pointless, so a trial trains each grid combination once.)
* **Results.** The trial reports one metrics dict per configuration under ``probes``; the table,
  ``results.csv``, the best config and MLflow (one child run per configuration, tag ``w2s.probe``)
  get one row each, so Tune's K results look like K trials everywhere a user reads them.
* **Scheduling.** Schedulers and stoppers need one number per trial: a vectorised trial's
  top-level metrics are the best over its configurations (max; min for losses), so ASHA keeps a
  trial while any of its configurations is promising.

Random search only: Optuna proposes one configuration per trial.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any

from orchestrator.errors import SpecIssue
from orchestrator.spec import SweepSpec, set_dotted
from orchestrator.tracking import PARENT_TAG, TAG_OUTCOME, TAG_ROLE, TAG_SWEEP, TAG_TRIAL, MLflowTrialCallback, \
    flatten, numeric_metrics
from trainables.runner import unpack_config
from trainables.vectorize import GRID_KEY, PROBES_KEY, RESULTS_KEY, VECTORIZE_KEY, expand_configs, is_vectorized, \
    single_config

TAG_PROBE = "w2s.probe"
log = logging.getLogger(__name__)


def trainable_fields(spec: SweepSpec) -> tuple[str, ...]:
    from trainables.registry import get_trainable

    return tuple(get_trainable(spec.trainable).vectorized_keys)


def vectorize_k(spec: SweepSpec) -> int | None:
    k = spec.params.get(VECTORIZE_KEY)
    return int(k) if isinstance(k, int) and not isinstance(k, bool) else None


def per_config_keys(spec: SweepSpec) -> list[str]:
    """Searched keys that vary per configuration inside a trial (empty unless vectorised)."""
    if vectorize_k(spec) is None:
        return []
    fields = set(trainable_fields(spec))
    return [key for key in spec.domains if key.split(".")[0] in fields]


def check_spec(spec: SweepSpec) -> list[SpecIssue]:
    """Problems with ``vectorize`` in an otherwise parsed spec; sets ``spec.vectorized_keys``."""
    issues = []
    if VECTORIZE_KEY in spec.domains:
        issues.append(SpecIssue(f"search.{VECTORIZE_KEY}", "the number of configurations per trial is fixed; "
                                "set it under params"))
    spec.vectorized_keys = per_config_keys(spec)
    if vectorize_k(spec) is None:
        return issues
    if spec.search_alg.type == "optuna":
        issues.append(SpecIssue("search_alg.type", "vectorised trials (params.vectorize) sample their "
                                "configurations with random search; Optuna proposes one per trial", "optuna"))
    for i, point in enumerate(spec.points_to_evaluate):
        for key in point:
            if key in spec.vectorized_keys:
                issues.append(SpecIssue(f"points_to_evaluate[{i}].{key}", "varies per configuration inside a "
                                        "vectorised trial; fix it under params or drop params.vectorize"))
    return issues


def configs_per_trial(spec: SweepSpec) -> int:
    k = vectorize_k(spec)
    if k is None:
        return 1
    grid = [spec.domains[key] for key in spec.vectorized_keys if spec.domains[key].kind == "grid"]
    sampled = len(grid) < len(spec.vectorized_keys)
    return (k if sampled else 1) * math.prod(d.grid_size for d in grid)


def probe_space(spec: SweepSpec) -> dict[str, Any]:
    """The ``probes`` / ``probe_grid`` part of the Tune param space (empty unless vectorised)."""
    k = vectorize_k(spec)
    if k is None or not spec.vectorized_keys:
        return {}
    grid = {key: list(spec.domains[key].args) for key in spec.vectorized_keys if spec.domains[key].kind == "grid"}
    sampled = [key for key in spec.vectorized_keys if key not in grid]
    slots = []
    for _ in range(k if sampled else 1):
        slot: dict[str, Any] = {}
        for key in sampled:
            set_dotted(slot, key, spec.domains[key].to_tune())  # a fresh domain: sampled independently
        slots.append(slot)
    return {PROBES_KEY: slots, **({GRID_KEY: grid} if grid else {})}


def plan_lines(spec: SweepSpec) -> list[str]:
    if vectorize_k(spec) is None:
        return []
    n = configs_per_trial(spec)
    keys = ", ".join(spec.vectorized_keys) or "none searched"
    return [f"vectorised: each trial trains {n} configurations as one batched computation "
            f"({n * spec.expected_trials()} in all; per-configuration keys: {keys})"]


# ---------------------------------------------------------------------------------------------
# Results: one row per configuration
# ---------------------------------------------------------------------------------------------


def expand_result(config: dict[str, Any], metrics: dict[str, Any], fields: tuple[str, ...]) -> \
        list[tuple[int, dict[str, Any], dict[str, Any]]]:
    """(index, stand-alone config, metrics) per configuration of a vectorised trial's result;
    empty for other results."""
    per_config = metrics.get(RESULTS_KEY)
    if not fields or not is_vectorized(config) or not isinstance(per_config, list):
        return []
    shared = {k: v for k, v in metrics.items() if k not in (RESULTS_KEY,) and k in ("trial_id", "time_total_s")}
    return [(k, single_config(config, fields, k), {**m, **shared}) for k, m in enumerate(per_config)]


def row_config(spec: SweepSpec, config: dict[str, Any], probe: int | None) -> dict[str, Any]:
    """The stand-alone config of a result row: the trial's, or one configuration of a vectorised trial."""
    if probe is None:
        return config
    return single_config(config, trainable_fields(spec), probe)


# ---------------------------------------------------------------------------------------------
# MLflow: one child run per configuration
# ---------------------------------------------------------------------------------------------


class VectorizedMLflowCallback(MLflowTrialCallback):
    """The sweep's MLflow callback: vectorised trials get one child run per configuration (tags
    ``w2s.trial_id`` and ``w2s.probe``; on resume they are found again by those tags); other
    trials are handled by :class:`MLflowTrialCallback` unchanged."""

    # A sweep of many configurations with a metric point per epoch each would make thousands of
    # one-run MLflow calls; points are buffered per run and written in batches of this many.
    FLUSH_POINTS = 1000

    def __init__(self, *args, fields: tuple[str, ...] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields = tuple(fields)
        self._probe_runs: dict[str, list[str]] = {}
        self._pending: dict[str, list] = {}

    def __getstate__(self):  # Tune pickles callbacks into its experiment state: a good moment to write
        try:
            self._flush_all()
        except Exception as exc:  # noqa: BLE001 - unwritten points stay buffered in the pickled state
            log.warning("MLflow write deferred: %s", exc)
        return super().__getstate__()

    def _buffer(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        points = self._pending.setdefault(run_id, [])
        points += [Metric(k[:250], float(v), now, step) for k, v in metrics.items()]
        if len(points) >= self.FLUSH_POINTS:
            self._flush(run_id)

    def _flush(self, run_id: str) -> None:
        points = self._pending.pop(run_id, [])
        for start in range(0, len(points), self.FLUSH_POINTS):
            self.tracker.client.log_batch(run_id, metrics=points[start:start + self.FLUSH_POINTS])

    def _flush_all(self) -> None:
        for run_id in list(self._pending):
            self._flush(run_id)

    def _is_vectorized(self, trial) -> bool:
        return bool(self.fields) and is_vectorized(unpack_config(trial.config))

    def _runs_for_configs(self, trial) -> list[str]:
        runs = self._probe_runs.get(trial.trial_id)
        if runs is not None:
            return runs
        config = unpack_config(trial.config)
        n = len(expand_configs(config, self.fields))
        existing = {r.data.tags.get(TAG_PROBE): r.info.run_id
                    for r in self.tracker.find_runs(**{TAG_SWEEP: self.sweep, TAG_TRIAL: trial.trial_id})}
        runs = []
        for k in range(n):
            run_id = existing.get(str(k))
            if run_id:
                self.tracker.client.update_run(run_id, status="RUNNING")
            else:
                run = self.tracker.client.create_run(
                    self.tracker.experiment_id, run_name=f"{self.sweep}/{trial.trial_id}/p{k}",
                    tags={PARENT_TAG: self.parent_run_id, TAG_SWEEP: self.sweep, TAG_ROLE: self.role,
                          TAG_TRIAL: trial.trial_id, TAG_PROBE: str(k)})
                run_id = run.info.run_id
                self.tracker.log_params(run_id, {**flatten(single_config(config, self.fields, k)), "probe_index": k})
            runs.append(run_id)
        self._probe_runs[trial.trial_id] = runs
        return runs

    def on_trial_start(self, iteration, trials, trial, **info):
        if self._is_vectorized(trial):
            self._runs_for_configs(trial)
        else:
            super().on_trial_start(iteration, trials, trial, **info)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if not self._is_vectorized(trial):
            return super().on_trial_result(iteration, trials, trial, result, **info)
        epoch = result.get("epoch")
        for run_id, metrics in zip(self._runs_for_configs(trial), result.get(RESULTS_KEY) or []):
            if metrics.get("epoch") != epoch:
                continue  # this configuration finished in an earlier epoch
            values = numeric_metrics(metrics)
            values["trial_time_s"] = float(result.get("time_total_s", 0.0))
            self._buffer(run_id, values, int(metrics["epoch"]))
        self._last[trial.trial_id] = result

    def _close_configs(self, trial, status: str, error: bool) -> None:
        config = unpack_config(trial.config)
        configs = expand_configs(config, self.fields)
        last = (self._last.get(trial.trial_id) or trial.last_result or {}).get(RESULTS_KEY) or []
        for k, run_id in enumerate(self._runs_for_configs(trial)):
            self._flush(run_id)
            done = last[k].get("epoch") if k < len(last) else None
            budget = configs[k].get(self.budget_key)
            outcome = "error" if error else ("stopped_early" if isinstance(budget, int) and isinstance(done, int)
                                             and done < budget else "completed")
            self.tracker.client.set_tag(run_id, TAG_OUTCOME, outcome)
            self.tracker.finish(run_id, status)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if self._is_vectorized(trial):
            self._close_configs(trial, "FINISHED", error=False)
        else:
            super().on_trial_complete(iteration, trials, trial, **info)

    def on_trial_error(self, iteration, trials, trial, **info):
        if self._is_vectorized(trial):
            self._close_configs(trial, "FAILED", error=True)
        else:
            super().on_trial_error(iteration, trials, trial, **info)
