"""Live sweep progress as plain lines (readable in a terminal and in CI logs), instead of Ray's
status tables: one line per trial event (started, completed, stopped early, failed) and, every
``interval_s`` seconds while trials run, a status line with the counts, the best so far and an ETA.

The ETA comes from the wall time of the trials finished so far: the work left (pending trials at
the mean duration, running ones at what the mean leaves of them) divided over the trials running
in parallel. Early-stopped trials are short and count as they are, because the scheduler will stop
later ones as often.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Any

from ray.tune import Callback

from trainables.core.durations import DEFAULT_INTERVAL_S, format_duration, progress_interval_s


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def estimate_eta(durations: list[float], running_elapsed: list[float], pending: int) -> float | None:
    """Seconds left, or None before any trial has finished."""
    if not durations:
        return None
    mean = sum(durations) / len(durations)
    left = pending * mean + sum(max(mean - e, 0.1 * mean) for e in running_elapsed)
    parallel = max(1, len(running_elapsed))
    return left / parallel


class ProgressPrinter(Callback):
    def __init__(self, metric: str, mode: str, total: int, budget_key: str,
                 keys: list[str] | None = None, interval_s: float | None = None):
        self.metric, self.mode, self.total, self.budget_key = metric, mode, total, budget_key
        self.keys = list(keys or [])
        self.interval_s = interval_s if interval_s is not None else progress_interval_s()
        self.started = time.time()
        self.outcomes: dict[str, int] = {}
        self.durations: list[float] = []
        self.best: tuple[float, str] | None = None
        self._last: dict[str, dict] = {}
        self._start: dict[str, float] = {}
        self._last_status = time.time()

    @property
    def done(self) -> int:
        return sum(self.outcomes.values())

    def __getstate__(self):
        state = self.__dict__.copy()
        state["started"] = state["_last_status"] = None
        state["_start"] = {}
        return state

    def __setstate__(self, state):
        # Restored with the experiment on --resume: wall-clock bookkeeping starts again.
        defaults = {"keys": [], "interval_s": DEFAULT_INTERVAL_S, "outcomes": {}, "durations": [], "_start": {}}
        self.__dict__.update({**defaults, **state})
        self.started = self._last_status = time.time()

    def _say(self, line: str) -> None:
        print(line, file=sys.stdout, flush=True)

    def _params(self, trial) -> str:
        from trainables.core.config import get_dotted
        from trainables.runtime.runner import unpack_config

        config = unpack_config(trial.config)
        parts = [f"{k.rsplit('.', 1)[-1]}={_short(get_dotted(config, k))}" for k in self.keys
                 if get_dotted(config, k) is not None]
        return ", ".join(parts)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._start[trial.trial_id] = time.time()
        params = self._params(trial)
        # Tune calls on_trial_start before it sets the trial's status to RUNNING
        # (TuneController._actor_started): count the others that run, plus this one.
        running = sum(t.status == "RUNNING" for t in trials if t is not trial) + 1
        self._say(f"  start    {trial.trial_id}{': ' + params if params else ''} (running {running})")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._last[trial.trial_id] = result

    def on_step_end(self, iteration, trials, **info):
        now = time.time()
        if self.interval_s > 0 and now - self._last_status >= self.interval_s \
                and any(t.status == "RUNNING" for t in trials):
            self._last_status = now
            self._say(self.status_line(trials, now))

    def status_line(self, trials, now: float | None = None) -> str:
        from orchestrator.reports.table import format_counts, order_counts

        now = now or time.time()
        running = [t for t in trials if t.status == "RUNNING"]
        finished = self.done
        pending = max(0, self.total - finished - len(running))
        counts = order_counts(self.outcomes)
        elapsed = [now - self._start.get(t.trial_id, now) for t in running]
        eta = estimate_eta(self.durations, elapsed, pending)
        best = f"{self.best[0]:.4f} ({self.best[1]})" if self.best else "-"
        from orchestrator.run.watchdog import waiting_note

        note = waiting_note()
        return (f"  status   {len(running)} running, {finished}/{self.total} finished"
                f"{' (' + format_counts(counts) + ')' if counts else ''}, {pending} pending"
                f" | best {self.metric} {best} | elapsed {format_duration(now - self.started)}"
                f" | eta {format_duration(eta) if eta is not None else 'after the first trial'}"
                + (f" | {note}" if note else ""))

    def _finish(self, trials, trial, outcome: str) -> None:
        now = time.time()
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        last = self._last.get(trial.trial_id) or trial.last_result or {}
        started = self._start.pop(trial.trial_id, None)
        duration = now - started if started is not None else last.get("time_total_s")
        if isinstance(duration, (int, float)):
            self.durations.append(float(duration))
        value = last.get(self.metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            better = self.best is None or (value > self.best[0] if self.mode == "max" else value < self.best[0])
            if better:
                self.best = (float(value), trial.trial_id)
        shown = f"{value:.4f}" if isinstance(value, (int, float)) else "-"
        best = f"{self.best[0]:.4f} ({self.best[1]})" if self.best else "-"
        label = outcome.replace("_", " ")
        took = f" in {format_duration(duration)}" if isinstance(duration, (int, float)) else ""
        self._say(f"  [{self.done:>3}/{self.total}] {trial.trial_id} {label} at epoch {last.get('epoch', '-')}{took}: "
                  f"{self.metric} {shown} | best {best}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        from orchestrator.reports.rows import trial_status
        from trainables.runtime.runner import unpack_config

        last = self._last.get(trial.trial_id) or trial.last_result or {}
        outcome = trial_status(unpack_config(trial.config), last, False, self.budget_key)
        if outcome == "diverged":
            outcome = f"DIVERGED ({last.get('divergence', 'loss not finite')})"
        self._finish(trials, trial, outcome)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trials, trial, "error")

    def on_experiment_end(self, trials, **info):
        from orchestrator.reports.table import format_counts, order_counts

        if self.done:
            best = f"{self.best[0]:.4f} ({self.best[1]})" if self.best else "-"
            self._say(f"  finished {self.done} trials ({format_counts(order_counts(self.outcomes))}) in "
                      f"{format_duration(time.time() - self.started)} | best {self.metric} {best}")
