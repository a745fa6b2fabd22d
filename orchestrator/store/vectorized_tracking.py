"""MLflow for vectorised trials (``params.vectorize: K``, see :mod:`orchestrator.space.vectorized`):
one child run per configuration, tagged ``w2s.trial_id`` and ``w2s.probe``, so that K
configurations look like K trials in MLflow as everywhere else."""
from __future__ import annotations

import logging
import time

from orchestrator.store.tracking import (NOT_METRICS, PARENT_TAG, STEP_METRIC, TAG_OUTCOME, TAG_PROBE, TAG_ROLE, TAG_SWEEP,
                                         TAG_TRIAL, MLflowTrialCallback, child_run_name, numeric_metrics, trial_index)
from trainables.runtime.runner import unpack_config
from trainables.runtime.vectorize import RESULTS_KEY, expand_configs, is_vectorized, single_config

log = logging.getLogger(__name__)



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
                single = single_config(config, self.fields, k)
                run = self.tracker.client.create_run(
                    self.tracker.experiment_id,
                    run_name=child_run_name(f"{trial_index(trial.trial_id)}/p{k}", single, list(self.keys)),
                    tags={PARENT_TAG: self.parent_run_id, TAG_SWEEP: self.sweep, TAG_ROLE: self.role,
                          TAG_TRIAL: trial.trial_id, TAG_PROBE: str(k)})
                run_id = run.info.run_id
                self.log_config(run_id, single, probe_index=k)
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
            values = {k: v for k, v in self.split_static(run_id, numeric_metrics(metrics)).items()
                      if k not in NOT_METRICS}
            values[STEP_METRIC] = float(result.get("time_total_s", 0.0))
            self._buffer(run_id, values, int(metrics["epoch"]))
        self._last[trial.trial_id] = result

    def _close_configs(self, trial, status: str, error: bool) -> None:
        config = unpack_config(trial.config)
        configs = expand_configs(config, self.fields)
        last = (self._last.get(trial.trial_id) or trial.last_result or {}).get(RESULTS_KEY) or []
        for k, run_id in enumerate(self._runs_for_configs(trial)):
            self._flush(run_id)
            done = last[k].get("epoch") if k < len(last) else None
            # the budget is per configuration (w2s probes' epochs) or the trial's (fused distill members)
            budget = configs[k].get(self.budget_key, config.get(self.budget_key))
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
