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
    set_title(fig, title)
    return fig, axes


def set_title(fig, title: str, fontsize: int = 12) -> None:
    """The figure's title, wrapped to its width (a title longer than the figure is cut at the edges)."""
    import textwrap

    width = max(30, int(fig.get_figwidth() * 108 / fontsize))  # ~ characters per line at this font size
    fig.suptitle("\n".join(textwrap.fill(part, width) for part in title.split("\n")), fontsize=fontsize)


def short_name(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def is_numeric(values) -> bool:
    present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return bool(present) and all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in present)


def positions(values, jitter_seed: int = 0, categorical: bool = False) -> tuple[np.ndarray, list[str] | None]:
    """x positions: the values themselves when numeric, else category indices with a little jitter
    (so the trials of one category do not hide each other). ``categorical``: a choice parameter's
    values are categories even when numeric (``epochs`` in {20, 40} is two settings, not a range)."""
    if is_numeric(values) and not categorical:
        return np.asarray([np.nan if v is None else float(v) for v in values], dtype=float), None
    present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if is_numeric(present):  # numeric categories in numeric order, 1e-3 before 1e-2
        labels = [f"{v:g}" for v in sorted({float(v) for v in present})]
        values = ["nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):g}" for v in values]
        labels += ["nan"] if "nan" in values else []
    else:
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


def robust_limits(y: np.ndarray, keep: np.ndarray | None = None, k: float = 6.0) -> tuple[float, float] | None:
    """y-axis limits that the bulk of the trials set, not one diverged trial: the median ± ``k``
    robust standard deviations (1.4826 x the median absolute deviation), narrowed to the data's own
    range, padded 6 %. ``keep``: values that must stay inside (the best trial). None without data."""
    finite = y[np.isfinite(y)]
    if not len(finite):
        return None
    med = float(np.median(finite))
    spread = 1.4826 * float(np.median(np.abs(finite - med)))
    if spread == 0:  # more than half the trials tie: fall back on the interquartile range, then the range
        q1, q3 = np.percentile(finite, [25, 75])
        spread = float(q3 - q1) / 1.349 or float(finite.max() - finite.min()) / 4
    lo, hi = max(float(finite.min()), med - k * spread), min(float(finite.max()), med + k * spread)
    if keep is not None:
        kept = keep[np.isfinite(keep)]
        if len(kept):
            lo, hi = min(lo, float(kept.min())), max(hi, float(kept.max()))
    pad = 0.06 * (hi - lo) if hi > lo else max(abs(hi) * 0.05, 1e-3)
    return lo - pad, hi + pad


def clip_to_limits(ax, x: np.ndarray, y: np.ndarray, limits: tuple[float, float] | None,
                   seen: dict[str, Any]) -> int:
    """Draw the points outside ``limits`` on the axis edge as red triangles pointing out, set the
    limits, and return how many were outside (for the title)."""
    if limits is None:
        return 0
    lo, hi = limits
    ax.set_ylim(lo, hi)
    count = 0
    for mask, edge, marker in ((y > hi, hi, "^"), (y < lo, lo, "v")):
        mask = mask & np.isfinite(x)
        if mask.any():
            handle = ax.scatter(x[mask], np.full(mask.sum(), edge), marker=marker, c="tab:red", s=50,
                                clip_on=False, zorder=6)
            seen.setdefault("off the axis (value beyond the edge)", handle)
            count += int(mask.sum())
    return count


def mark_epochs(ax, x: np.ndarray, y: np.ndarray, statuses: list[str], epochs: np.ndarray | None) -> None:
    """Label each stopped-early trial with the epoch it stopped at: its metric is not a finished one."""
    if epochs is None:
        return
    for xi, yi, status, ep in zip(x, y, statuses, epochs):
        if status == "stopped_early" and np.isfinite(xi) and np.isfinite(yi) and np.isfinite(ep):
            ax.annotate(f"e{int(ep)}", (xi, yi), textcoords="offset points", xytext=(4, -8), fontsize=6,
                        color="0.35")


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
    # as many columns as fit the figure's width (one row of seven entries runs off a two-panel figure)
    cols = max(1, min(len(seen), int(fig.get_figwidth() / 2.1)))
    fig.legend(list(seen.values()), list(seen), loc="outside lower center", ncols=cols, fontsize=fontsize)
