"""``run_sweep.py compare A B [...]``: sweeps side by side, best configuration per method in each,
with top-1 mean ± std over seeds where seeds were swept. Sweeps whose top-1 metrics differ (say
``w2s_acc`` and ``knn_acc``) are never drawn on one axis: each metric gets its own panel."""
from __future__ import annotations

import math
import re

from orchestrator.reports.publish import StoredSweep, load_sweep
from orchestrator.reports.rows import fmt, render_table, searched_keys, vocabulary_of
from orchestrator.reports.summary import MethodEntry, mean_std, summarize, summary_records
from orchestrator.store.secrets import redact_artifact
from orchestrator.store.storage import join, write_bytes
from trainables.core.stats import mean_interval


def sweep_entries(sweep: StoredSweep) -> list[MethodEntry]:
    spec = sweep.spec
    return summarize(sweep.rows, searched_keys(spec), spec.metric, spec.mode, vocabulary_of(spec))


def comparison_table(sweeps: list[StoredSweep], entries: list[list[MethodEntry]]) -> str:
    group_cols = list(dict.fromkeys(c for es in entries for e in es for c in e.group))
    headers = ["sweep", *group_cols, "top-1", "mean ± std over seeds", "search metric", "value", "configs", "trials"]
    body = []
    for sweep, es in zip(sweeps, entries):
        if not es:
            body.append([sweep.name, *["-"] * len(group_cols), "-", "no trial produced the metric", "-", "-", "-",
                         len(sweep.rows)])
        for e in es:
            body.append([sweep.name, *[e.group.get(c, "-") for c in group_cols], e.top1_metric,
                         mean_std(e.top1_mean, e.top1_std, e.seeds), e.metric, fmt(e.metric_mean), e.configs_tried,
                         len(sweep.rows)])
    return render_table(headers, body)


def metrics_compared(entries: list[list[MethodEntry]]) -> list[str]:
    """The distinct top-1 metrics of the entries, in order of appearance."""
    return list(dict.fromkeys(e.top1_metric for es in entries for e in es))


def comparison_figure(sweeps: list[StoredSweep], entries: list[list[MethodEntry]]):
    """One panel per top-1 metric (sweeps that report different metrics are never put on one axis):
    methods on the x-axis, one colour per sweep (legend), bars = mean over seeds from 0, whiskers =
    95% t-interval, dots = the seeds."""
    import numpy as np
    from matplotlib.figure import Figure

    from trainables.core.plotting import set_title

    metrics = metrics_compared(entries)
    if not metrics:
        return None
    methods = {m: list(dict.fromkeys(_method(e) for es in entries for e in es if e.top1_metric == m)) for m in metrics}
    widest = max(len(v) for v in methods.values())
    fig = Figure(figsize=(max(5.5, (1.2 + 0.5 * len(sweeps)) * widest + 2) * len(metrics), 4.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(metrics), squeeze=False)[0])
    rng = np.random.default_rng(0)  # dot jitter only
    handles = {}
    for ax, metric in zip(axes, metrics):
        top = 0.0
        # the sweeps with this metric share each method's slot; the colour stays the sweep's own
        present = [i for i, es in enumerate(entries) if any(e.top1_metric == metric for e in es)]
        width = 0.8 / len(present)
        for i, (sweep, es) in enumerate(zip(sweeps, entries)):
            for e in es:
                if e.top1_metric != metric:
                    continue
                iv = mean_interval(e.top1_values)
                x = methods[metric].index(_method(e)) - 0.4 + width * (present.index(i) + 0.5)
                bar = ax.bar([x], [iv.mean], width=width * 0.9, color=f"C{i % 10}", alpha=0.6)
                handles.setdefault(sweep.name, bar)
                if iv.n > 1:
                    ax.errorbar([x], [iv.mean], yerr=[[iv.mean - iv.low], [iv.high - iv.mean]], fmt="none",
                                ecolor="black", capsize=4)
                ax.scatter(x + rng.uniform(-width / 5, width / 5, iv.n), e.top1_values, s=12, color="black", zorder=3)
                top = max(top, iv.mean, iv.high if iv.n > 1 else iv.mean, *e.top1_values)
        ax.set_xticks(range(len(methods[metric])), methods[metric],
                      rotation=20 if max(map(len, methods[metric])) > 10 else 0, fontsize=8)
        ax.set_xlim(-0.5, len(methods[metric]) - 0.5)
        ax.set_ylim(0, top * 1.08 if top > 0 else 1)  # bars from 0: their lengths compare honestly
        ax.set_ylabel(f"{metric} (mean over seeds)")
        ax.grid(axis="y", alpha=0.3)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center",
               ncols=max(1, min(len(handles), int(fig.get_figwidth() / 2.1))), fontsize=8, title="sweep")
    set_title(fig, "best configuration per method: " + " vs ".join(s.name for s in sweeps)
              + "\nbars: mean over seeds; whiskers: 95% t-interval; dots: seeds", fontsize=11)
    return fig


def _method(e: MethodEntry) -> str:
    return "/".join(v for v in e.group.values()) or "all"


def compare_sweeps(names: list[str], storage_path: str, mlflow_uri: str | None, say=print) -> list[StoredSweep]:
    import pandas as pd

    from orchestrator.reports.plots import png_bytes

    sweeps = [load_sweep(name, storage_path, mlflow_uri) for name in names]
    entries = [sweep_entries(s) for s in sweeps]
    say(comparison_table(sweeps, entries))
    metrics = metrics_compared(entries)
    if len(metrics) > 1:
        say(f"note: these sweeps report different top-1 metrics ({', '.join(metrics)}); each metric is its own "
            "panel of comparison.png, and rows with different metrics in the table are not comparable")
    for sweep in sweeps:
        if sweep.comparison is not None:
            say(f"{sweep.name} reference: {sweep.comparison.verdict}")
    slug = "__".join(re.sub(r"[^A-Za-z0-9_.-]", "_", n) for n in names)[:200]
    out_dir = join(storage_path, "comparisons", slug)
    records = [r for s, es in zip(sweeps, entries) for r in summary_records(es, {"sweep": s.name})]
    write_bytes(join(out_dir, "comparison.csv"),
                redact_artifact("comparison.csv", pd.DataFrame(records).to_csv(index=False).encode()))
    fig = comparison_figure(sweeps, entries)
    if fig is not None:
        write_bytes(join(out_dir, "comparison.png"), png_bytes(fig))
    say(f"wrote {join(out_dir, 'comparison.csv')}" + (f" and comparison.png" if fig is not None else ""))
    return sweeps
