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

from trainables.core.plotting import (best_index, clip_to_limits, set_title, figure, is_numeric, legend_below, mark_best,
                                      positions, robust_limits, short_name, status_scatter, style_x)
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
    keys = data.hyperparameter_keys() or data.present_keys()
    if not keys:
        return None
    fig, axes = figure(2, len(keys), "")
    statuses = [str(s) for s in frame["status"]]
    best = best_index(frame, data.metric, data.mode)
    seen: dict[str, Any] = {}
    w2s = frame["w2s_acc"].to_numpy(dtype=float)
    pgr = frame["pgr"].to_numpy(dtype=float)
    # PGR divides by (strong - weak): a near-tie makes it -3 or +5; the axis is set by the bulk of the
    # trials and always shows the 0 (weak) and 1 (strong) lines; the rest sit on the edge, counted.
    keep = np.concatenate([[0.0, 1.0], pgr[[best]] if best is not None else []])
    pgr_limits = robust_limits(pgr, keep=keep, k=4.0)
    # the weak teacher's and the strong ceiling's lines stay on the accuracy axis
    refs = [float(np.nanmean(frame[c].to_numpy(dtype=float))) for c in ("weak_acc", "strong_acc")]
    w2s_limits = robust_limits(w2s, keep=np.concatenate([refs, w2s[[best]] if best is not None else []]))
    outside = 0
    for col, key in enumerate(keys):
        x, labels = positions(list(frame[data.column(key)]), categorical=key in data.choice_keys)
        log = key in data.log_keys and labels is None
        top, bottom = axes[0, col], axes[1, col]
        _reference_band(top, frame["strong_acc"].to_numpy(dtype=float), "tab:green", "strong ceiling", seen)
        _reference_band(top, frame["weak_acc"].to_numpy(dtype=float), "tab:red", "weak teacher", seen)
        status_scatter(top, x, _inside(w2s, w2s_limits), statuses, seen)
        mark_best(top, x, w2s, best, seen)
        outside_top = clip_to_limits(top, x, w2s, w2s_limits, seen)
        top.set_ylabel("w2s_acc")
        style_x(top, key, labels, log, x)
        bottom.axhline(1.0, color="tab:green", ls="--", lw=1.4, zorder=0)
        bottom.axhline(0.0, color="tab:red", ls="--", lw=1.4, zorder=0)
        status_scatter(bottom, x, _inside(pgr, pgr_limits), statuses, seen)
        mark_best(bottom, x, pgr, best, seen)
        outside = max(outside, outside_top + clip_to_limits(bottom, x, pgr, pgr_limits, seen))
        bottom.set_ylabel("PGR (0 = weak, 1 = strong)")
        style_x(bottom, key, labels, log, x)
    title = f"weak-to-strong: accuracy and PGR against the searched parameters ({len(frame)} trials)"
    if outside:
        title += f"; {outside} value(s) off the axis (drawn on its edge)"
    set_title(fig, title)
    legend_below(fig, seen)
    return fig


def _inside(values: np.ndarray, limits) -> np.ndarray:
    """The values within ``limits`` (others NaN: clip_to_limits draws them on the edge)."""
    if limits is None:
        return values
    return np.where((values >= limits[0]) & (values <= limits[1]), values, np.nan)


def w2s_map(data: ReportData):
    """Mean PGR over the seeds of each cell of the first two numeric searched hyperparameters (for
    example superalignment rate and threshold): one point per cell, so labels do not overlap; the
    colour scale spans -1 to 2 (a near-tie of weak and strong makes PGR explode; beyond the scale
    the colour bar's arrows say so)."""
    frame = data.frame
    if not has_w2s(frame):
        return None
    numeric = [k for k in data.hyperparameter_keys() if is_numeric(list(frame[data.column(k)]))]
    if len(numeric) < 2:
        return None
    kx, ky = numeric[:2]
    x = frame[data.column(kx)].to_numpy(dtype=float)
    y = frame[data.column(ky)].to_numpy(dtype=float)
    pgr = frame["pgr"].to_numpy(dtype=float)
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(pgr)
    cells: dict[tuple[float, float], list[float]] = {}
    for xi, yi, pi in zip(x[ok], y[ok], pgr[ok]):
        cells.setdefault((float(xi), float(yi)), []).append(float(pi))
    if not cells:
        return None
    cx, cy, cmean, cn = (np.asarray(v) for v in zip(*[(a, b, np.mean(p), len(p)) for (a, b), p in cells.items()]))
    categorical = {k: k in data.choice_keys for k in (kx, ky)}
    px, xlabels = positions(list(cx), categorical=categorical[kx]) if categorical[kx] else (cx, None)
    py, ylabels = positions(list(cy), categorical=categorical[ky]) if categorical[ky] else (cy, None)
    if xlabels is not None:
        px = np.round(px)  # cells sit on their category, no jitter: one point per cell
    if ylabels is not None:
        py = np.round(py)
    seeds = int(cn.max())
    fig, axes = figure(1, 1, f"mean PGR over {short_name(kx)} and {short_name(ky)}"
                             + (f" (up to {seeds} seeds per cell)" if seeds > 1 else ""))
    ax = axes[0, 0]
    points = ax.scatter(px, py, c=np.clip(cmean, -1, 2), cmap="RdYlGn", vmin=-1, vmax=2, s=160,
                        edgecolors="black", linewidths=0.5)
    fig.colorbar(points, ax=ax, label="mean PGR (0 = weak, 1 = strong)", extend="both")
    if len(cells) <= 30:  # the value inside its marker, where it stays legible
        for xi, yi, m in zip(px, py, cmean):
            ax.annotate(f"{m:.2f}", (xi, yi), ha="center", va="center", fontsize=6)
    for name, setter, values, labels, ticks in ((kx, ax.set_xscale, cx, xlabels, ax.set_xticks),
                                                (ky, ax.set_yscale, cy, ylabels, ax.set_yticks)):
        if labels is not None:
            ticks(range(len(labels)), labels)
        elif name in data.log_keys and np.nanmin(values) > 0:
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
