"""Sweep results as a table, the best trial, and the best-vs-control comparison."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from orchestrator.spec import SweepSpec, get_dotted
from trainables.runner import unpack_config


@dataclass
class TrialRow:
    trial_id: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    status: str
    error: str | None = None
    probe: int | None = None  # the configuration's index inside a vectorised trial

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
    keys = list(spec.domains)
    for point in spec.points_to_evaluate:
        keys += [k for k in point if k not in keys]
    return keys


def rows_from_results(spec: SweepSpec, results) -> list[TrialRow]:
    from orchestrator.vectorized import expand_result, trainable_fields

    keys = searched_keys(spec)
    fields = trainable_fields(spec)
    rows = []
    for result in results:
        config = unpack_config(result.config or {})
        metrics = dict(result.metrics or {})
        error = str(result.error).splitlines()[0] if result.error else None
        # A vectorised trial gives one row per configuration it trained; any other trial one row.
        for probe, cfg, m in expand_result(config, metrics, fields) or [(None, config, metrics)]:
            budget = cfg.get("epochs")
            if error is not None:
                status = "error"
            elif m.get("diverged"):
                status = "diverged"  # trainables.runner.diverged_result: excluded from the best pick
                m.pop(spec.metric, None)  # its -inf/+inf is a rank-last sentinel for the searcher, not a value
            elif isinstance(budget, int) and m.get("epoch", budget) < budget:
                status = "stopped_early"
            else:
                status = "completed"
            rows.append(TrialRow(trial_id=m.get("trial_id", "?"), params={k: get_dotted(cfg, k) for k in keys},
                                 metrics=m, status=status, error=error, probe=probe))
    return rows


def pick_best(rows: list[TrialRow], metric: str, mode: str) -> TrialRow | None:
    scored = [r for r in rows if r.status != "diverged" and isinstance(r.metrics.get(metric), (int, float))
              and math.isfinite(r.metrics[metric])]
    if not scored:
        return None
    # Ties on the search metric (common on small validation sets) go to the longer-trained trial.
    sign = 1 if mode == "max" else -1
    return max(scored, key=lambda r: (sign * r.metrics[metric], r.metrics.get("epoch", 0)))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4):
            return f"{value:.3g}"
        return f"{value:.4f}"
    return str(value)


def format_table(rows: list[TrialRow], metric: str, extra_metrics: list[str], keys: list[str]) -> str:
    headers = ["trial", *keys, metric, *[m for m in extra_metrics if m != metric], "epochs", "status"]
    body = []
    for r in rows:
        body.append([r.label, *[_fmt(r.params.get(k)) for k in keys], _fmt(r.metrics.get(metric, "-")),
                     *[_fmt(r.metrics.get(m, "-")) for m in extra_metrics if m != metric],
                     _fmt(r.metrics.get("epoch", "-")), r.status])
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *body)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *[line(b) for b in body]])


def compare(metric: str, best_values: list[float], control_values: list[float], label: str) -> Comparison:
    comp = Comparison(metric, best_values, control_values)
    if not best_values or not control_values:
        comp.verdict = "no comparison: reference runs did not finish"
        return comp
    diff = comp.best_mean - comp.control_mean
    n_b, n_c = len(best_values), len(control_values)
    sd_b = statistics.stdev(best_values) if n_b > 1 else 0.0
    sd_c = statistics.stdev(control_values) if n_c > 1 else 0.0
    se = math.sqrt(sd_b**2 / n_b + sd_c**2 / n_c)
    direction = "beat" if diff > 0 else ("tied" if diff == 0 else "did NOT beat")
    noise = ("a clear margin (more than 2 standard errors)" if se > 0 and abs(diff) > 2 * se
             else "within seed noise" if se > 0 else "single seed, so noise is unknown")
    comp.verdict = (f"the best config {direction} {label}: {metric} {comp.best_mean:.4f} ± {sd_b:.4f} vs "
                    f"{comp.control_mean:.4f} ± {sd_c:.4f} over {n_b} seeds ({diff:+.4f}, {noise})")
    return comp
