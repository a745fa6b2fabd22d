"""Sweep plots as PNG: the metric against each searched parameter, learning curves of the top
trials, and, when trials report ``pgr``/``weak_acc``/``strong_acc``/``w2s_acc``, weak-to-strong
plots with weak and strong reference lines.

Plots are built on ``matplotlib.figure.Figure`` (Agg canvas, no pyplot state), so they work in a
headless driver and never open a window. Every function takes the results frame of
:mod:`orchestrator.reports.table` and returns a figure, or None when it has nothing to show.
"""
from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

from orchestrator.reports.rows import TrialRow
from orchestrator.reports.table import param_column

W2S_COLUMNS = ("pgr", "weak_acc", "strong_acc", "w2s_acc")
STATUS_STYLE = {
    "completed": ("tab:blue", "o"),
    "stopped_early": ("tab:gray", "o"),
    "diverged": ("tab:orange", "X"),
    "error": ("tab:red", "X"),
}
OTHER_STYLE = ("tab:purple", "s")
LOG_KINDS = ("loguniform", "qloguniform")
PANEL = (4.2, 3.2)


def _figure(nrows: int, ncols: int, title: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(PANEL[0] * ncols, PANEL[1] * nrows + 0.6), layout="constrained")
    axes = np.atleast_2d(fig.subplots(nrows, ncols, squeeze=False))
    fig.suptitle(title, fontsize=12)
    return fig, axes


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def short_name(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _numeric(values) -> bool:
    present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return bool(present) and all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in present)


def _positions(values, jitter_seed: int = 0) -> tuple[np.ndarray, list[str] | None]:
    """x positions: the values themselves when numeric, else category indices with a little jitter."""
    if _numeric(values):
        return np.asarray([np.nan if v is None else float(v) for v in values], dtype=float), None
    labels = sorted({str(v) for v in values}, key=str)
    index = {label: i for i, label in enumerate(labels)}
    rng = np.random.default_rng(jitter_seed)
    x = np.asarray([index[str(v)] for v in values], dtype=float) + rng.uniform(-0.12, 0.12, len(values))
    return x, labels


def _style_x(ax, key: str, labels: list[str] | None, log: bool, x: np.ndarray) -> None:
    ax.set_xlabel(key)
    if labels is not None:
        ax.set_xticks(range(len(labels)), labels, rotation=20 if max(map(len, labels)) > 6 else 0)
        ax.set_xlim(-0.5, len(labels) - 0.5)
    elif log and np.nanmin(x) > 0:
        from matplotlib.ticker import LogFormatterSciNotation, NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(LogFormatterSciNotation())
        ax.xaxis.set_minor_formatter(NullFormatter())  # 2x10^-2, 3x10^-2, ... overlap in a small panel
    elif np.all(np.isnan(x) | (x == np.round(x))):
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def _status_scatter(ax, x: np.ndarray, y: np.ndarray, statuses: list[str], seen: dict[str, Any]) -> None:
    for status in dict.fromkeys(statuses):
        mask = np.asarray([s == status for s in statuses]) & np.isfinite(y) & np.isfinite(x)
        if not mask.any():
            continue
        color, marker = STATUS_STYLE.get(status, OTHER_STYLE)
        handle = ax.scatter(x[mask], y[mask], c=color, marker=marker, s=36, alpha=0.8, edgecolors="none")
        seen.setdefault(status.replace("_", " "), handle)


def _mark_best(ax, x: np.ndarray, y: np.ndarray, best_index: int | None, seen: dict[str, Any]) -> None:
    if best_index is None or not (np.isfinite(x[best_index]) and np.isfinite(y[best_index])):
        return
    handle = ax.scatter([x[best_index]], [y[best_index]], marker="*", s=260, c="gold", edgecolors="black",
                        linewidths=0.8, zorder=5)
    seen.setdefault("best trial", handle)


def _grid_shape(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = min(max_cols, max(1, n))
    return math.ceil(n / cols), cols


def _hide_unused(axes, used: int) -> None:
    for ax in axes.flat[used:]:
        ax.set_visible(False)


def best_index(frame, metric: str, mode: str) -> int | None:
    if metric not in frame:
        return None
    values = frame[metric].to_numpy(dtype=float)
    if not np.isfinite(values).any():
        return None
    return int(np.nanargmax(values) if mode == "max" else np.nanargmin(values))


def metric_vs_params(frame, metric: str, mode: str, keys: list[str], log_keys: set[str]):
    """One panel per searched parameter: each trial's final metric, coloured by status, best starred."""
    keys = [k for k in keys if param_column(k) in frame]
    if metric not in frame or not keys or not np.isfinite(frame[metric].to_numpy(dtype=float)).any():
        return None
    rows, cols = _grid_shape(len(keys))
    fig, axes = _figure(rows, cols, f"{metric} ({mode}) against each searched parameter, {len(frame)} trials")
    y = frame[metric].to_numpy(dtype=float)
    statuses = [str(s) for s in frame["status"]]
    best = best_index(frame, metric, mode)
    seen: dict[str, Any] = {}
    missing = int((~np.isfinite(y)).sum())
    for ax, key in zip(axes.flat, keys):
        x, labels = _positions(list(frame[param_column(key)]))
        _status_scatter(ax, x, y, statuses, seen)
        _mark_best(ax, x, y, best, seen)
        _style_x(ax, key, labels, key in log_keys, x)
        ax.set_ylabel(metric)
    _hide_unused(axes, len(keys))
    if missing:
        fig.text(0.01, 0.005, f"{missing} trial(s) without {metric} are not shown", fontsize=8, color="tab:red")
    fig.legend(list(seen.values()), list(seen), loc="outside lower center", ncols=len(seen), fontsize=9)
    return fig


def _curve_label(row: TrialRow, keys: list[str]) -> str:
    parts = []
    for key in keys[:3]:
        v = row.params.get(key)
        parts.append(f"{short_name(key)}={v:.3g}" if isinstance(v, float) else f"{short_name(key)}={v}")
    return f"{row.trial_id}: " + ", ".join(parts) if parts else row.trial_id


def learning_curves(rows: list[TrialRow], metric: str, mode: str, keys: list[str], top: int = 5):
    """The metric (and the training loss, when reported) per epoch: the top trials in colour, the
    rest in grey. A metric reported only at the end (PGR, say) ranks the trials; the curves then
    show the first per-epoch accuracy there is."""
    curve = next((m for m in (metric, "val_acc", "w2s_acc", "test_acc")
                  if any(m in h for r in rows for h in r.history)), None)
    if curve is None:
        return None
    with_history = [r for r in rows if any(curve in h for h in r.history)]
    ranked = sorted((r for r in with_history if isinstance(r.metrics.get(metric), (int, float))
                     and math.isfinite(r.metrics[metric])),
                    key=lambda r: r.metrics[metric], reverse=(mode == "max"))
    leaders = ranked[:top]
    secondary = next((m for m in ("train_loss", "val_loss", "loss") if any(m in h for r in rows for h in r.history)),
                     None)
    panels = [curve] + ([secondary] if secondary else [])
    fig, axes = _figure(1, len(panels), f"learning curves: top {len(leaders)} of {len(with_history)} trials by {metric}")
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
        if name.endswith("loss"):
            finite = [v for r in with_history for v in _series(r, name)[1] if math.isfinite(v) and v > 0]
            if finite and max(finite) / min(finite) > 20:
                ax.set_yscale("log")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(2, len(labels)), fontsize=8)
    return fig


def _series(row: TrialRow, name: str) -> tuple[list[float], list[float]]:
    points = [(h.get("epoch", i + 1), h[name]) for i, h in enumerate(row.history) if name in h]
    return [p[0] for p in points], [p[1] for p in points]


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


def w2s_plot(frame, metric: str, mode: str, keys: list[str], log_keys: set[str]):
    """Weak-to-strong: w2s accuracy with the weak teacher's and the strong ceiling's accuracy as
    reference lines (band = their range over trials), and PGR with its 0 (weak) and 1 (strong) lines,
    against each searched parameter."""
    if not has_w2s(frame):
        return None
    keys = [k for k in keys if param_column(k) in frame and k != "seed"] or [k for k in keys if param_column(k) in frame]
    if not keys:
        return None
    fig, axes = _figure(2, len(keys), f"weak-to-strong: accuracy and PGR against the searched parameters "
                                      f"({len(frame)} trials)")
    statuses = [str(s) for s in frame["status"]]
    best = best_index(frame, metric, mode)
    seen: dict[str, Any] = {}
    w2s = frame["w2s_acc"].to_numpy(dtype=float)
    pgr = frame["pgr"].to_numpy(dtype=float)
    for col, key in enumerate(keys):
        x, labels = _positions(list(frame[param_column(key)]))
        top, bottom = axes[0, col], axes[1, col]
        _reference_band(top, frame["strong_acc"].to_numpy(dtype=float), "tab:green", "strong ceiling", seen)
        _reference_band(top, frame["weak_acc"].to_numpy(dtype=float), "tab:red", "weak teacher", seen)
        _status_scatter(top, x, w2s, statuses, seen)
        _mark_best(top, x, w2s, best, seen)
        top.set_ylabel("w2s_acc")
        _style_x(top, key, labels, key in log_keys, x)
        bottom.axhline(1.0, color="tab:green", ls="--", lw=1.4, zorder=0)
        bottom.axhline(0.0, color="tab:red", ls="--", lw=1.4, zorder=0)
        _status_scatter(bottom, x, pgr, statuses, seen)
        _mark_best(bottom, x, pgr, best, seen)
        bottom.set_ylabel("PGR (0 = weak, 1 = strong)")
        _style_x(bottom, key, labels, key in log_keys, x)
    fig.legend(list(seen.values()), list(seen), loc="outside lower center", ncols=len(seen), fontsize=9)
    return fig


def w2s_map(frame, keys: list[str], log_keys: set[str]):
    """PGR over the first two numeric searched parameters (for example superalignment rate and
    threshold), one point per trial coloured by PGR."""
    if not has_w2s(frame):
        return None
    numeric = [k for k in keys if k != "seed" and param_column(k) in frame and _numeric(list(frame[param_column(k)]))]
    if len(numeric) < 2:
        return None
    kx, ky = numeric[:2]
    x = frame[param_column(kx)].to_numpy(dtype=float)
    y = frame[param_column(ky)].to_numpy(dtype=float)
    pgr = frame["pgr"].to_numpy(dtype=float)
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(pgr)
    fig, axes = _figure(1, 1, f"PGR over {short_name(kx)} and {short_name(ky)}")
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
        if name in log_keys and ok.any() and np.nanmin(values[ok]) > 0:
            setter("log")
    ax.set_xlabel(kx)
    ax.set_ylabel(ky)
    ax.grid(alpha=0.3)
    return fig


def sweep_figures(frame, rows: list[TrialRow], metric: str, mode: str, keys: list[str],
                  log_keys: set[str]) -> dict[str, Any]:
    """file name -> figure, for every plot this sweep has data for. A plot that fails is left out
    with a warning: a report must not lose a finished sweep's results over a figure."""
    import logging

    builders = {
        "metric_vs_params.png": lambda: metric_vs_params(frame, metric, mode, keys, log_keys),
        "learning_curves.png": lambda: learning_curves(rows, metric, mode, keys),
        "w2s_pgr.png": lambda: w2s_plot(frame, metric, mode, keys, log_keys),
        "w2s_pgr_map.png": lambda: w2s_map(frame, keys, log_keys),
    }
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
