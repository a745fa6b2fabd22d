"""The weak-to-strong part of a sweep's report, declared in the trainable's vocabulary:

* the PGR summary for the printed report and the MLflow parent run, aggregated as the W2S
  authors do: the median PGR over configurations, counting those whose strong ceiling did not beat
  the weak teacher (PGR undefined) separately;
* ``w2s_pgr.png``: W2S accuracy between the weak teacher's and the strong ceiling's accuracy, and
  PGR between its 0 (weak) and 1 (strong) lines, against each searched parameter;
* ``w2s_pgr_map.png``: PGR over the first two numeric searched parameters.

Hooks get plain data (:mod:`trainables.runtime.vocabulary`), never an orchestrator type.
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Sequence

import numpy as np

from trainables.core.plotting import (best_index, figure, is_numeric, legend_below, mark_best, positions, short_name,
                                      status_scatter, style_x)
from trainables.core.stats import finite, mean_interval
from trainables.runtime.vocabulary import Bar, Headline, ReportData, ResultRow

W2S_COLUMNS = ("weak_acc", "w2s_acc", "strong_acc", "pgr")
SEED_KEY = "seed"


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def pgr_summary(rows: Sequence[ResultRow], best: ResultRow | None) -> tuple[list[str], dict[str, float]]:
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


def has_w2s(frame) -> bool:
    return all(c in frame for c in W2S_COLUMNS) and np.isfinite(frame["pgr"].to_numpy(dtype=float)).any()


def _reference_band(ax, values: np.ndarray, color: str, label: str, seen: dict[str, Any]) -> None:
    values = values[np.isfinite(values)]
    if not len(values):
        return
    mean = float(values.mean())
    line = ax.axhline(mean, color=color, ls="--", lw=1.4, zorder=0)
    if values.max() > values.min():
        ax.axhspan(values.min(), values.max(), color=color, alpha=0.12, zorder=0)
    seen.setdefault(label, line)


def w2s_plot(data: ReportData):
    """Weak-to-strong: w2s accuracy with the weak teacher's and the strong ceiling's accuracy as
    reference lines (band = their range over trials), and PGR with its 0 (weak) and 1 (strong) lines,
    against each searched parameter (the seed only when nothing else is searched)."""
    frame = data.frame
    if not has_w2s(frame):
        return None
    keys = [k for k in data.present_keys() if k != SEED_KEY] or data.present_keys()
    if not keys:
        return None
    fig, axes = figure(2, len(keys), f"weak-to-strong: accuracy and PGR against the searched parameters "
                                     f"({len(frame)} trials)")
    statuses = [str(s) for s in frame["status"]]
    best = best_index(frame, data.metric, data.mode)
    seen: dict[str, Any] = {}
    w2s = frame["w2s_acc"].to_numpy(dtype=float)
    pgr = frame["pgr"].to_numpy(dtype=float)
    for col, key in enumerate(keys):
        x, labels = positions(list(frame[data.column(key)]))
        log = key in data.log_keys
        top, bottom = axes[0, col], axes[1, col]
        _reference_band(top, frame["strong_acc"].to_numpy(dtype=float), "tab:green", "strong ceiling", seen)
        _reference_band(top, frame["weak_acc"].to_numpy(dtype=float), "tab:red", "weak teacher", seen)
        status_scatter(top, x, w2s, statuses, seen)
        mark_best(top, x, w2s, best, seen)
        top.set_ylabel("w2s_acc")
        style_x(top, key, labels, log, x)
        bottom.axhline(1.0, color="tab:green", ls="--", lw=1.4, zorder=0)
        bottom.axhline(0.0, color="tab:red", ls="--", lw=1.4, zorder=0)
        status_scatter(bottom, x, pgr, statuses, seen)
        mark_best(bottom, x, pgr, best, seen)
        bottom.set_ylabel("PGR (0 = weak, 1 = strong)")
        style_x(bottom, key, labels, log, x)
    legend_below(fig, seen)
    return fig


def w2s_map(data: ReportData):
    """PGR over the first two numeric searched parameters (for example superalignment rate and
    threshold), one point per trial coloured by PGR."""
    frame = data.frame
    if not has_w2s(frame):
        return None
    numeric = [k for k in data.present_keys() if k != SEED_KEY and is_numeric(list(frame[data.column(k)]))]
    if len(numeric) < 2:
        return None
    kx, ky = numeric[:2]
    x = frame[data.column(kx)].to_numpy(dtype=float)
    y = frame[data.column(ky)].to_numpy(dtype=float)
    pgr = frame["pgr"].to_numpy(dtype=float)
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(pgr)
    fig, axes = figure(1, 1, f"PGR over {short_name(kx)} and {short_name(ky)}")
    ax = axes[0, 0]
    lim = max(1.0, float(np.nanmax(np.abs(pgr[ok])))) if ok.any() else 1.0
    points = ax.scatter(x[ok], y[ok], c=pgr[ok], cmap="RdYlGn", vmin=-lim, vmax=lim, s=70, edgecolors="black",
                        linewidths=0.5)
    fig.colorbar(points, ax=ax, label="PGR")
    cells: dict[tuple[float, float], list[float]] = {}
    for xi, yi, pi in zip(x[ok], y[ok], pgr[ok]):
        cells.setdefault((float(xi), float(yi)), []).append(float(pi))
    if len(cells) <= 40:  # mean PGR per grid cell (over seeds), where it stays legible
        for (xi, yi), values in cells.items():
            ax.annotate(f"{np.mean(values):.2f}", (xi, yi), textcoords="offset points", xytext=(0, 8),
                        ha="center", fontsize=8)
    for name, setter, values in ((kx, ax.set_xscale, x), (ky, ax.set_yscale, y)):
        if name in data.log_keys and ok.any() and np.nanmin(values[ok]) > 0:
            setter("log")
    ax.set_xlabel(kx)
    ax.set_ylabel(ky)
    ax.grid(alpha=0.3)
    return fig


PLOTS = {"w2s_pgr.png": w2s_plot, "w2s_pgr_map.png": w2s_map}


def w2s_headline(data: ReportData):
    """Weak, W2S and strong accuracy of the best configuration of each method (summary group),
    over its seeds, with the method's PGR (mean and t interval over seeds) as a note."""
    bars, notes = [], []
    for label, rows in data.groups.items():
        method = label or "best"
        for key, name in (("weak_acc", "weak"), ("w2s_acc", "W2S"), ("strong_acc", "strong")):
            values = finite(r.metrics.get(key) for r in rows)
            if values:
                bars.append(Bar(method, name, tuple(values), name))
        pgr = mean_interval(r.metrics.get("pgr") for r in rows)
        if pgr.n:
            notes.append(f"PGR {method}: {pgr.text(3)}")
    if not bars:
        return None
    return Headline(title="weak-to-strong: weak teacher, W2S student and strong ceiling per method",
                    bars=tuple(bars), notes=tuple(notes))
