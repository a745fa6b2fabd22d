"""Sweep plots as PNG: the metric against each searched parameter, learning curves of the top
trials, and the figures the trainable declares (``Vocabulary.plots``; for example the weak-to-strong
plots of ``w2s_probe``).

Every function takes the results frame of :mod:`orchestrator.reports.table` (or the trial rows)
and returns a figure, or None when it has nothing to show. The building blocks shared with the
families' figures are in :mod:`trainables.core.plotting`.
"""
from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

from orchestrator.reports.rows import TrialRow
from orchestrator.reports.table import PARAM_PREFIX, param_column
from trainables.core.plotting import (best_index, clip_to_limits, set_title, figure, legend_below, mark_best, mark_epochs,
                                      positions, robust_limits, short_name, status_scatter, style_x)
from trainables.runtime.vocabulary import NOT_HYPERPARAMETERS, ReportData, Vocabulary

LOG_KINDS = ("loguniform", "qloguniform")


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _grid_shape(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = min(max_cols, max(1, n))
    return math.ceil(n / cols), cols


def _hide_unused(axes, used: int) -> None:
    for ax in axes.flat[used:]:
        ax.set_visible(False)


def metric_vs_params(frame, metric: str, mode: str, keys: list[str], log_keys: set[str],
                     choice_keys: set[str] = frozenset()):
    """One panel per searched hyperparameter (not the seed, not the worker count): each trial's final
    metric, coloured by status, best starred. Choice parameters are categories, jittered; the y-axis
    is set by the bulk of the trials, and a diverged trial far outside it is drawn on the edge and
    counted in the title; a stopped-early trial carries the epoch it stopped at."""
    keys = [k for k in keys if param_column(k) in frame and short_name(k) not in NOT_HYPERPARAMETERS]
    if metric not in frame or not keys or not np.isfinite(frame[metric].to_numpy(dtype=float)).any():
        return None
    rows, cols = _grid_shape(len(keys))
    y = frame[metric].to_numpy(dtype=float)
    statuses = [str(s) for s in frame["status"]]
    best = best_index(frame, metric, mode)
    # The axis comes from the trials that finished normally; the best one always stays inside.
    normal = np.asarray([s not in ("diverged", "error") for s in statuses])
    limits = robust_limits(np.where(normal, y, np.nan), keep=y[[best]] if best is not None else None)
    epochs = frame["epoch"].to_numpy(dtype=float) if "epoch" in frame else None
    seen: dict[str, Any] = {}
    missing = int((~np.isfinite(y)).sum())
    outside = 0
    fig, axes = figure(rows, cols, "")
    for ax, key in zip(axes.flat, keys):
        x, labels = positions(list(frame[param_column(key)]), categorical=key in choice_keys)
        inside = y if limits is None else np.where((y >= limits[0]) & (y <= limits[1]), y, np.nan)
        status_scatter(ax, x, inside, statuses, seen)
        mark_best(ax, x, y, best, seen)
        mark_epochs(ax, x, inside, statuses, epochs)
        outside = clip_to_limits(ax, x, y, limits, seen)
        style_x(ax, key, labels, key in log_keys and labels is None, x)
        ax.set_ylabel(metric)
    _hide_unused(axes, len(keys))
    title = f"{metric} ({mode}) against each searched hyperparameter, {len(frame)} trials"
    if outside:
        title += f"; {outside} off the axis (drawn on its edge)"
    if missing:
        fig.text(0.01, 0.005, f"{missing} trial(s) without {metric} are not shown", fontsize=8, color="tab:red")
    if epochs is not None and "stopped_early" in statuses:
        title += "\n(eN: stopped early at epoch N, not a finished trial)"
    set_title(fig, title)
    legend_below(fig, seen)
    return fig


def _curve_label(row: TrialRow, keys: list[str]) -> str:
    parts = []
    for key in [k for k in keys if short_name(k) not in NOT_HYPERPARAMETERS][:3]:
        v = row.params.get(key)
        parts.append(f"{short_name(key)}={v:.3g}" if isinstance(v, float) else f"{short_name(key)}={v}")
    return f"{row.label}: " + ", ".join(parts) if parts else row.label


def learning_curves(rows: list[TrialRow], metric: str, mode: str, keys: list[str], curves: tuple[str, ...] = (),
                    loss_curves: tuple[str, ...] = (), top: int = 5):
    """The metric per epoch: the top trials in colour, the rest in grey. A metric reported only at the
    end (PGR, say) ranks the trials; the curves then show the first of the trainable's per-epoch
    ``curves`` there is. A loss panel (the first of ``loss_curves`` reported) only when asked for:
    training losses of trials with different loss settings (temperatures, weights) are not on one
    scale, so the report does not draw them side by side by default."""
    curve = _first_reported(rows, (metric, *curves))
    if curve is None:
        return None
    with_history = [r for r in rows if any(curve in h for h in r.history)]
    ranked = sorted((r for r in with_history if isinstance(r.metrics.get(metric), (int, float))
                     and math.isfinite(r.metrics[metric])),
                    key=lambda r: r.metrics[metric], reverse=(mode == "max"))
    leaders = ranked[:top]
    secondary = _first_reported(rows, loss_curves)
    panels = [curve] + ([secondary] if secondary else [])
    fig, axes = figure(1, len(panels), f"learning curves: top {len(leaders)} of {len(with_history)} trials by {metric}")
    colors = [f"C{i}" for i in range(10)]
    for ax, name in zip(axes.flat, panels):
        for r in with_history:
            if r in leaders:
                continue
            ep, val = _series(r, name)
            ax.plot(ep, val, color="0.75", lw=0.8, zorder=1)
        for i, r in enumerate(leaders):
            ep, val = _series(r, name)
            ax.plot(ep, val, color=colors[i % 10], lw=1.8, marker="o", ms=2.5, label=_curve_label(r, keys), zorder=2)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if name == secondary:
            finite = [v for r in with_history for v in _series(r, name)[1] if math.isfinite(v) and v > 0]
            if finite and max(finite) / min(finite) > 20:
                ax.set_yscale("log")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(2, len(labels)), fontsize=8)
    return fig


def _first_reported(rows: list[TrialRow], names: tuple[str, ...]) -> str | None:
    return next((m for m in names if any(m in h for r in rows for h in r.history)), None)


def _series(row: TrialRow, name: str) -> tuple[list[float], list[float]]:
    points = [(h.get("epoch", i + 1), h[name]) for i, h in enumerate(row.history) if name in h]
    return [p[0] for p in points], [p[1] for p in points]


def sweep_figures(frame, rows: list[TrialRow], metric: str, mode: str, keys: list[str],
                  log_keys: set[str], vocabulary: Vocabulary | None = None, data: ReportData | None = None,
                  loss_curves: bool = False) -> dict[str, Any]:
    """file name -> figure, for every plot this sweep has data for: the generic ones and the
    trainable's own (``vocabulary.plots``). A plot that fails is left out with a warning: a report
    must not lose a finished sweep's results over a figure."""
    import logging

    vocab = vocabulary or Vocabulary()
    builders = {
        "metric_vs_params.png": lambda: metric_vs_params(frame, metric, mode, keys, log_keys,
                                                         data.choice_keys if data else frozenset()),
        "learning_curves.png": lambda: learning_curves(rows, metric, mode, keys, vocab.curves,
                                                       vocab.loss_curves if loss_curves else ()),
    }
    data = data or ReportData(frame=frame, rows=rows, metric=metric, mode=mode, keys=list(keys),
                              log_keys=set(log_keys), param_prefix=PARAM_PREFIX)
    for name, build in vocab.plots.items():
        builders.setdefault(name, lambda build=build: build(data))
    figures = {}
    for name, build in builders.items():
        try:
            fig = build()
        except Exception as exc:  # noqa: BLE001
            logging.getLogger("w2s").warning("plot %s skipped: %s: %s", name, type(exc).__name__, exc)
            continue
        if fig is not None:
            figures[name] = fig
    return figures
