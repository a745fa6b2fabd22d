"""ASHA over the members of fused trials (``params.vectorize`` with a trainable whose trials can
drop members: ``TrainableDef.stops_members``).

Ray's ``AsyncHyperBandScheduler`` judges a trial by one number. Here every member of a fused
trial is judged on its own, by the same brackets and rungs as every other member and trial: at a
rung, a member below the cutoff stops. The scheduler registers each fused trial in the sweep's
mailbox (:mod:`trainables.runtime.member_stops`) and posts its decision on every result there;
the trial waits for the decision on the epoch it reported, drops the stopped members before its
next epoch and goes on with the rest. The trial itself stops when no member is left. Trials that are not fused are
scheduled exactly as by Ray's ASHA.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from trainables.runtime.member_stops import post_decision, register_trial
from trainables.runtime.runner import unpack_config
from trainables.runtime.session import DIVERGED
from trainables.runtime.vectorize import RESULTS_KEY, expand_configs, is_vectorized


def member_key(trial_id: str, k: int) -> str:
    return f"{trial_id}#m{k}"


class MemberASHA(AsyncHyperBandScheduler):
    def __init__(self, *, fields: tuple[str, ...], sweep: str, **kwargs: Any):
        super().__init__(**kwargs)
        self._fields = tuple(fields)
        self._sweep = sweep
        self._members: dict[str, int] = {}  # fused trial id -> number of members
        self._stopped: dict[str, set[int]] = {}

    def _fused(self, trial) -> bool:
        return trial.trial_id in self._members

    def on_trial_add(self, tune_controller, trial):
        super().on_trial_add(tune_controller, trial)
        config = unpack_config(trial.config)
        if is_vectorized(config):
            n = len(expand_configs(config, self._fields))
            self._members[trial.trial_id] = n
            register_trial(self._sweep, trial.trial_id)
            bracket = self._trial_info[trial.trial_id]
            for k in range(n):
                self._trial_info.setdefault(member_key(trial.trial_id, k), bracket)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        members = result.get(RESULTS_KEY)
        if not self._fused(trial) or not isinstance(members, list):
            return super().on_trial_result(tune_controller, trial, result)
        stopped = self._stopped.setdefault(trial.trial_id, set())
        now = result.get(self._time_attr)
        newly = []
        for k, metrics in enumerate(members):
            if k in stopped or metrics.get(self._time_attr) != now or self._metric not in metrics:
                continue  # stopped before, or left the step in an earlier epoch (diverged)
            t = metrics[self._time_attr]
            if metrics.get(DIVERGED) or (t >= self._max_t and self._stop_last_trials):
                action = TrialScheduler.STOP
            else:
                bracket = self._trial_info[member_key(trial.trial_id, k)]
                action = bracket.on_result(SimpleNamespace(trial_id=member_key(trial.trial_id, k)), t,
                                           self._metric_op * metrics[self._metric])
            if action == TrialScheduler.STOP:
                stopped.add(k)
                newly.append(k)
                self._num_stopped += 1
        # Posted on every result, with or without new stops: the trial waits for it (and after a
        # resumed sweep it reads a fresh mailbox, which this refills).
        if now is not None:
            post_decision(self._sweep, trial.trial_id, now, sorted(stopped))
        return TrialScheduler.STOP if len(stopped) >= len(members) else TrialScheduler.CONTINUE

    def _forget(self, trial_id: str) -> None:
        for k in range(self._members.pop(trial_id, 0)):
            self._trial_info.pop(member_key(trial_id, k), None)
        self._trial_info.pop(trial_id, None)

    def on_trial_complete(self, tune_controller, trial, result: dict):
        if not self._fused(trial):
            return super().on_trial_complete(tune_controller, trial, result)
        stopped = self._stopped.get(trial.trial_id, set())
        for k, metrics in enumerate((result or {}).get(RESULTS_KEY) or []):
            key = member_key(trial.trial_id, k)
            if k in stopped or key not in self._trial_info or self._metric not in metrics:
                continue
            if self._time_attr in metrics and not metrics.get(DIVERGED):
                self._trial_info[key].on_result(SimpleNamespace(trial_id=key), metrics[self._time_attr],
                                                self._metric_op * metrics[self._metric])
        self._forget(trial.trial_id)

    def on_trial_remove(self, tune_controller, trial):
        if not self._fused(trial):
            return super().on_trial_remove(tune_controller, trial)
        self._forget(trial.trial_id)
