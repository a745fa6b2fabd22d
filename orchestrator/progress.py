"""One terse line per finished trial, instead of Ray's status tables."""
from __future__ import annotations

import math
import time

from ray.tune import Callback


class ProgressPrinter(Callback):
    def __init__(self, metric: str, mode: str, total: int, budget_key: str = "epochs"):
        self.metric, self.mode, self.total, self.budget_key = metric, mode, total, budget_key
        self.started = time.time()
        self.done = 0
        self.best: tuple[float, str] | None = None
        self._last: dict[str, dict] = {}

    def __getstate__(self):
        state = self.__dict__.copy()
        state["started"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.started = time.time()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._last[trial.trial_id] = result

    def _finish(self, trials, trial, outcome: str) -> None:
        self.done += 1
        last = self._last.get(trial.trial_id) or trial.last_result or {}
        value = last.get(self.metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            better = self.best is None or (value > self.best[0] if self.mode == "max" else value < self.best[0])
            if better:
                self.best = (float(value), trial.trial_id)
        running = sum(t.status == "RUNNING" for t in trials)
        elapsed = time.time() - self.started
        shown = f"{value:.4f}" if isinstance(value, (int, float)) else "-"
        best = f"{self.best[0]:.4f} ({self.best[1]})" if self.best else "-"
        eta = ""
        if 0 < self.done < self.total:
            eta = f" | eta ~{elapsed / self.done * (self.total - self.done):.0f}s"
        epoch = last.get("epoch", "-")
        print(f"  [{self.done:>3}/{self.total}] {trial.trial_id} {outcome} at epoch {epoch}: {self.metric} {shown}"
              f" | best {best} | running {running} | {elapsed:.0f}s{eta}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        from trainables.runner import unpack_config

        budget = unpack_config(trial.config).get(self.budget_key)
        last = self._last.get(trial.trial_id) or {}
        epoch = last.get("epoch")
        outcome = "stopped early" if isinstance(budget, int) and isinstance(epoch, int) and epoch < budget else "completed"
        if last.get("diverged"):
            outcome = f"DIVERGED ({last.get('divergence', 'loss not finite')})"
        self._finish(trials, trial, outcome)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trials, trial, "FAILED")
