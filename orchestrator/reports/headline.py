"""The headline figure: the experiment's answer at a glance, declared by the trainable
(``Vocabulary.headline_figure``, a :class:`~trainables.runtime.vocabulary.Headline` of bars over
seeds) and drawn here three ways: ``headline.png``, an interactive ``headline.html`` (plotly, with
its JavaScript inlined so it opens offline and from the MLflow artifact viewer) and a printed table.

Every bar is the mean of its per-seed values with a Student-t confidence interval
(:func:`trainables.core.stats.mean_interval`); the seeds are drawn as dots on it, so two seeds never
pass for a distribution. A trainable that declares no headline gets the best configuration of each
summary group on the headline metric.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from orchestrator.reports.rows import render_table
from trainables.core.stats import finite, mean_interval
from trainables.runtime.vocabulary import Bar, Headline, ReportData, Vocabulary

ROLE_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def default_headline(data: ReportData, metric: str) -> Headline | None:
    """The best configuration of every summary group, its ``metric`` over seeds."""
    bars = []
    for label, rows in data.groups.items():
        values = tuple(finite(r.metrics.get(metric) for r in rows))
        if values:
            bars.append(Bar(panel=metric, name=label or "best", values=values, role=label or "best"))
    if not bars:
        return None
    return Headline(title=f"{metric}: best configuration per group, over seeds", bars=tuple(bars))


def build_headline(data: ReportData, vocabulary: Vocabulary) -> Headline | None:
    headline = (vocabulary.headline_figure(data) if vocabulary.headline_figure
                else default_headline(data, vocabulary.headline_of(data.metric)))
    if headline is None or not any(finite(b.values) for b in headline.bars):
        return None
    return headline


def headline_records(headline: Headline) -> list[dict[str, Any]]:
    """One record per bar: what is drawn (mean, interval bounds, n, the seeds' values)."""
    out = []
    for bar in headline.bars:
        iv = mean_interval(bar.values)
        out.append({"panel": bar.panel, "name": bar.name, "role": bar.role or bar.name, "mean": iv.mean,
                    "ci_low": iv.low, "ci_high": iv.high, "n": iv.n, "level": iv.level,
                    "values": list(finite(bar.values))})
    return out


def _cell(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.4f}"


def headline_table(headline: Headline) -> str:
    body = [[r["panel"], r["name"], _cell(r["mean"]),
             f"[{_cell(r['ci_low'])}, {_cell(r['ci_high'])}]" if r["n"] > 1 else "(one seed)", r["n"],
             " ".join(f"{v:.4f}" for v in r["values"])]
            for r in headline_records(headline)]
    text = render_table(["panel", "", "mean", "95% CI", "seeds", "per seed"], body)
    return "\n".join([headline.title, text, *headline.notes])


def _panels(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    panels: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        panels.setdefault(r["panel"], []).append(r)
    return panels


def _role_colors(records: list[dict[str, Any]]) -> dict[str, str]:
    roles = list(dict.fromkeys(r["role"] for r in records))
    return {role: ROLE_COLORS[i % len(ROLE_COLORS)] for i, role in enumerate(roles)}


def _ylim(records: list[dict[str, Any]]) -> tuple[float, float] | None:
    """Bars start at 0 unless a value is negative (PGR can be); the top clears every dot and interval."""
    values = [v for r in records for v in (r["values"] + [r["ci_low"], r["ci_high"], r["mean"]]) if math.isfinite(v)]
    if not values:
        return None
    low, high = min(0.0, min(values)), max(0.0, max(values))
    pad = 0.08 * (high - low or 1.0)
    return (low - pad if low < 0 else 0.0), high + pad


def headline_png(headline: Headline):
    """Bars (mean), t interval whiskers and one dot per seed, one panel per metric."""
    from matplotlib.figure import Figure

    records = headline_records(headline)
    panels = _panels(records)
    colors = _role_colors(records)
    widest = max(len(p) for p in panels.values())
    fig = Figure(figsize=(max(4.5, 1.3 * widest + 1.5) * len(panels), 4.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False)[0])
    rng = np.random.default_rng(0)  # dot jitter only; fixed so the figure is reproducible
    for ax, (panel, recs) in zip(axes, panels.items()):
        x = np.arange(len(recs))
        means = [r["mean"] for r in recs]
        err = np.array([[r["mean"] - r["ci_low"] if r["n"] > 1 else 0.0 for r in recs],
                        [r["ci_high"] - r["mean"] if r["n"] > 1 else 0.0 for r in recs]])
        ax.bar(x, means, color=[colors[r["role"]] for r in recs], alpha=0.55, width=0.6)
        ax.errorbar(x, means, yerr=np.nan_to_num(err), fmt="none", ecolor="black", capsize=5, lw=1.2)
        for xi, r in zip(x, recs):
            vals = np.asarray(r["values"])
            ax.scatter(xi + rng.uniform(-0.12, 0.12, len(vals)), vals, s=18, color="black", zorder=3)
            ax.annotate(f"{r['mean']:.3f}\nn={r['n']}", (xi, r["mean"]), textcoords="offset points",
                        xytext=(18, -4), fontsize=7, ha="left")
        ax.set_xticks(x, [r["name"] for r in recs], rotation=15 if max(len(r["name"]) for r in recs) > 10 else 0,
                      fontsize=8)
        lim = _ylim(recs)
        if lim:
            ax.set_ylim(*lim)
        ax.set_ylabel(panel)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{headline.title}\nbars: mean; whiskers: 95% t-interval; dots: seeds", fontsize=10)
    return fig


def headline_html(headline: Headline) -> str:
    """The same figure in plotly, hover showing each seed's value; self-contained HTML."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    records = headline_records(headline)
    panels = _panels(records)
    colors = _role_colors(records)
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=list(panels))
    shown: set[str] = set()
    for col, recs in enumerate(panels.values(), start=1):
        for r in recs:
            half = [r["mean"] - r["ci_low"]] if r["n"] > 1 else [0.0]
            fig.add_trace(go.Bar(x=[r["name"]], y=[r["mean"]], name=r["role"], marker_color=colors[r["role"]],
                                 opacity=0.6, legendgroup=r["role"], showlegend=r["role"] not in shown,
                                 error_y=dict(type="data", array=half, visible=True),
                                 hovertemplate=f"{r['name']}<br>mean %{{y:.4f}}<br>n={r['n']}<extra></extra>"),
                          row=1, col=col)
            shown.add(r["role"])
            fig.add_trace(go.Scatter(x=[r["name"]] * len(r["values"]), y=r["values"], mode="markers",
                                     marker=dict(color="black", size=7), showlegend=False,
                                     hovertemplate="seed value %{y:.4f}<extra></extra>"), row=1, col=col)
        lim = _ylim(recs)
        if lim:
            fig.update_yaxes(range=list(lim), row=1, col=col)
    fig.update_layout(title=dict(text=headline.title), barmode="overlay", template="plotly_white",
                      height=520, width=max(600, 420 * len(panels)))
    return fig.to_html(full_html=True, include_plotlyjs=True)
