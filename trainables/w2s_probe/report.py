"""The weak-to-strong summary of a sweep: PGR and its three accuracies, for the printed report
and the MLflow parent run. Aggregated as the W2S authors do: the median PGR over configurations,
counting those whose strong ceiling did not beat the weak teacher (PGR undefined) separately."""
from __future__ import annotations

import math
import statistics

from orchestrator.reports.rows import TrialRow

W2S_COLUMNS = ("weak_acc", "w2s_acc", "strong_acc", "pgr")


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def pgr_summary(rows: list[TrialRow], best: TrialRow | None) -> tuple[list[str], dict[str, float]]:
    """Report lines and parent-run metrics; nothing when no row reports a PGR."""
    values = [_number(r.metrics.get("pgr")) for r in rows]
    values = [v for v in values if v is not None]
    if not values:
        return [], {}
    valid = [v for v in values if not math.isnan(v)]
    undefined = len(values) - len(valid)
    metrics = {"w2s_configurations": float(len(values)), "w2s_pgr_undefined": float(undefined)}
    if valid:
        metrics["w2s_median_pgr"] = statistics.median(valid)
        line = f"W2S: median PGR {metrics['w2s_median_pgr']:.3f} over {len(valid)} configurations"
    else:
        line = "W2S: PGR is undefined for every configuration"
    if undefined:
        line += (f"; undefined for {undefined}, where the strong ceiling did not beat the weak teacher "
                 "(strong_acc <= weak_acc)")
    lines = [line]
    if best is not None and all(_number(best.metrics.get(k)) is not None for k in W2S_COLUMNS):
        parts = {k: float(best.metrics[k]) for k in W2S_COLUMNS}
        lines.append(f"W2S best row {best.label}: weak {parts['weak_acc']:.4f}, w2s {parts['w2s_acc']:.4f}, "
                     f"strong {parts['strong_acc']:.4f}, PGR {parts['pgr']:.3f}")
        metrics.update({f"w2s_best_{k}": v for k, v in parts.items()})
    return lines, metrics
