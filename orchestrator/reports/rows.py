"""Sweep results as a table, the best trial, and the best-vs-control comparison."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from orchestrator.space.spec import SweepSpec, get_dotted
from orchestrator.store.secrets import is_secret_key
from trainables.runtime.runner import unpack_config
from trainables.runtime.vocabulary import Vocabulary


@dataclass
class TrialRow:
    trial_id: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    status: str
    error: str | None = None
    probe: int | None = None  # the configuration's index inside a vectorised trial
    duration_s: float | None = None
    config: dict[str, Any] = field(default_factory=dict)
    # One dict of numeric metrics per report (epoch), for learning curves.
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.trial_id if self.probe is None else f"{self.trial_id}/p{self.probe}"


@dataclass
class Comparison:
    metric: str
    best_values: list[float]
    control_values: list[float]
    verdict: str = ""

    @property
    def best_mean(self) -> float:
        return statistics.fmean(self.best_values) if self.best_values else math.nan

    @property
    def control_mean(self) -> float:
        return statistics.fmean(self.control_values) if self.control_values else math.nan


@dataclass
class SweepReport:
    rows: list[TrialRow]
    metric: str
    mode: str
    best: TrialRow | None
    comparison: Comparison | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def searched_keys(spec: SweepSpec) -> list[str]:
    """The searched parameters a report shows: credential-like ones are never shown."""
    keys = list(spec.domains)
    for point in spec.points_to_evaluate:
        keys += [k for k in point if k not in keys]
    return [k for k in keys if not is_secret_key(k)]


def trial_status(config: dict[str, Any], metrics: dict[str, Any], errored: bool, budget_key: str) -> str:
    """completed | stopped_early | diverged | error | not_run; everything that reads a status
    treats it as an open set of labels."""
    if errored:
        return "error"
    if metrics.get("diverged"):
        return "diverged"  # trainables.runtime.runner.diverged_result: excluded from the best pick
    if "epoch" not in metrics and "training_iteration" not in metrics:
        return "not_run"
    budget = config.get(budget_key)
    if isinstance(budget, int) and metrics.get("epoch", budget) < budget:
        return "stopped_early"
    return "completed"


def numeric_history(frame) -> list[dict[str, float]]:
    """Per-report numeric metrics from a Tune ``metrics_dataframe`` (None when nothing was reported)."""
    from orchestrator.store.tracking import numeric_metrics

    if frame is None or len(frame) == 0:
        return []
    return [numeric_metrics(rec) for rec in frame.to_dict("records")]


def rows_from_results(spec: SweepSpec, results) -> list[TrialRow]:
    from orchestrator.space.vectorized import expand_result, trainable_fields

    keys = searched_keys(spec)
    fields = trainable_fields(spec)
    budget = vocabulary_of(spec).budget
    rows = []
    for result in results:
        config = unpack_config(result.config or {})
        metrics = dict(result.metrics or {})
        error = str(result.error).splitlines()[0] if result.error else None
        duration = metrics.get("time_total_s")
        history = numeric_history(getattr(result, "metrics_dataframe", None))
        # A vectorised trial gives one row per configuration it trained; any other trial one row.
        for probe, cfg, m in expand_result(config, metrics, fields) or [(None, config, metrics)]:
            status = trial_status(cfg, m, error is not None, budget)
            if status == "diverged":
                m.pop(spec.metric, None)  # its -inf/+inf is a rank-last sentinel for the searcher, not a value
            rows.append(TrialRow(trial_id=m.get("trial_id") or _trial_id_from_path(result),
                                 params={k: get_dotted(cfg, k) for k in keys}, metrics=m, status=status, error=error,
                                 probe=probe, duration_s=float(duration) if isinstance(duration, (int, float)) else None,
                                 config=cfg, history=history if probe is None else []))
    return rows


def _trial_id_from_path(result) -> str:
    # A trial that never reported has no trial_id metric; its folder is trial_<id> (tuner._dirname).
    base = str(getattr(result, "path", "") or "").rstrip("/").rsplit("/", 1)[-1]
    return base.removeprefix("trial_") or "?"


def pick_best(rows: list[TrialRow], metric: str, mode: str) -> TrialRow | None:
    scored = [r for r in rows if r.status != "diverged" and isinstance(r.metrics.get(metric), (int, float))
              and math.isfinite(r.metrics[metric])]
    if not scored:
        return None
    # Ties on the search metric (common on small validation sets) go to the longer-trained trial.
    sign = 1 if mode == "max" else -1
    return max(scored, key=lambda r: (sign * r.metrics[metric], r.metrics.get("epoch", 0)))


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4):
            return f"{value:.3g}"
        return f"{value:.4f}"
    return str(value)


def format_table(rows: list[TrialRow], metric: str, extra_metrics: list[str], keys: list[str]) -> str:
    # "epoch" (the last one reported), not the budget's name: a searched ``epochs`` has its own column.
    headers = ["trial", *keys, metric, *[m for m in extra_metrics if m != metric], "epoch", "time", "status"]
    body = []
    for r in rows:
        body.append([r.label, *[fmt(r.params.get(k)) for k in keys], fmt(r.metrics.get(metric, "-")),
                     *[fmt(r.metrics.get(m, "-")) for m in extra_metrics if m != metric],
                     fmt(r.metrics.get("epoch", "-")),
                     f"{r.duration_s:.0f}s" if r.duration_s is not None else "-", r.status])
    return render_table(headers, body)


def render_table(headers: list[str], body: list[list[Any]]) -> str:
    """Left-aligned columns, a dashed rule under the headers."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *body)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *[line(b) for b in body]])


def vocabulary_of(spec: SweepSpec) -> Vocabulary:
    """The names the report uses for the sweep's trainable's results (a parsed spec names a
    registered trainable)."""
    from trainables.runtime.trainable import get_trainable

    return get_trainable(spec.trainable).vocabulary
