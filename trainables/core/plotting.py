"""Plot building blocks shared by the sweep reports and the families' own figures: a figure of
panels, trial positions on a parameter axis, points coloured by trial status, the best trial's
star and axis styling.

Figures are ``matplotlib.figure.Figure`` objects (Agg canvas, no pyplot state), so they work in a
headless driver and never open a window. matplotlib is imported only when a figure is built.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

STATUS_STYLE = {
    "completed": ("tab:blue", "o"),
    "stopped_early": ("tab:gray", "o"),
    "diverged": ("tab:orange", "X"),
    "error": ("tab:red", "X"),
}
OTHER_STYLE = ("tab:purple", "s")
PANEL = (4.2, 3.2)


def figure(nrows: int, ncols: int, title: str):
    """A figure of ``nrows`` x ``ncols`` panels and its axes as a 2-D array."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(PANEL[0] * ncols, PANEL[1] * nrows + 0.6), layout="constrained")
    axes = np.atleast_2d(fig.subplots(nrows, ncols, squeeze=False))
    fig.suptitle(title, fontsize=12)
    return fig, axes


def short_name(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def is_numeric(values) -> bool:
    present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return bool(present) and all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in present)


def positions(values, jitter_seed: int = 0) -> tuple[np.ndarray, list[str] | None]:
    """x positions: the values themselves when numeric, else category indices with a little jitter."""
    if is_numeric(values):
        return np.asarray([np.nan if v is None else float(v) for v in values], dtype=float), None
    labels = sorted({str(v) for v in values}, key=str)
    index = {label: i for i, label in enumerate(labels)}
    rng = np.random.default_rng(jitter_seed)
    x = np.asarray([index[str(v)] for v in values], dtype=float) + rng.uniform(-0.12, 0.12, len(values))
    return x, labels


def style_x(ax, key: str, labels: list[str] | None, log: bool, x: np.ndarray) -> None:
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


def status_scatter(ax, x: np.ndarray, y: np.ndarray, statuses: list[str], seen: dict[str, Any]) -> None:
    """One point per trial, coloured and shaped by its status; ``seen`` collects legend handles."""
    for status in dict.fromkeys(statuses):
        mask = np.asarray([s == status for s in statuses]) & np.isfinite(y) & np.isfinite(x)
        if not mask.any():
            continue
        color, marker = STATUS_STYLE.get(status, OTHER_STYLE)
        handle = ax.scatter(x[mask], y[mask], c=color, marker=marker, s=36, alpha=0.8, edgecolors="none")
        seen.setdefault(status.replace("_", " "), handle)


def mark_best(ax, x: np.ndarray, y: np.ndarray, best: int | None, seen: dict[str, Any]) -> None:
    if best is None or not (np.isfinite(x[best]) and np.isfinite(y[best])):
        return
    handle = ax.scatter([x[best]], [y[best]], marker="*", s=260, c="gold", edgecolors="black",
                        linewidths=0.8, zorder=5)
    seen.setdefault("best trial", handle)


def best_index(frame, metric: str, mode: str) -> int | None:
    """The frame row with the best value of ``metric`` (None when no row has one)."""
    if metric not in frame:
        return None
    values = frame[metric].to_numpy(dtype=float)
    if not np.isfinite(values).any():
        return None
    return int(np.nanargmax(values) if mode == "max" else np.nanargmin(values))


def legend_below(fig, seen: dict[str, Any], fontsize: int = 9) -> None:
    fig.legend(list(seen.values()), list(seen), loc="outside lower center", ncols=len(seen), fontsize=fontsize)
