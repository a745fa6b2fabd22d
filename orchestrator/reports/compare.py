"""``run_sweep.py compare A B [...]``: sweeps side by side, best configuration per method in each,
with top-1 mean ± std over seeds where seeds were swept."""
from __future__ import annotations

import math
import re

from orchestrator.reports.publish import StoredSweep, load_sweep
from orchestrator.reports.rows import fmt, render_table, searched_keys, vocabulary_of
from orchestrator.reports.summary import MethodEntry, mean_std, summarize, summary_records
from orchestrator.store.secrets import redact_artifact
from orchestrator.store.storage import join, write_bytes


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


def comparison_figure(sweeps: list[StoredSweep], entries: list[list[MethodEntry]]):
    """Top-1 mean per (sweep, method) as bars with ±std error bars."""
    import numpy as np
    from matplotlib.figure import Figure

    labels, means, stds, colors = [], [], [], []
    for i, (sweep, es) in enumerate(zip(sweeps, entries)):
        for e in es:
            method = "/".join(v for v in e.group.values()) or "all"
            labels.append(f"{sweep.name}\n{method}")
            means.append(e.top1_mean)
            stds.append(0.0 if math.isnan(e.top1_std) else e.top1_std)
            colors.append(f"C{i % 10}")
    if not labels:
        return None
    metric = next(e.top1_metric for es in entries for e in es)
    fig = Figure(figsize=(max(5.0, 1.1 * len(labels) + 2), 4.2), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(labels))
    ax.bar(x, means, yerr=stds, color=colors, capsize=4, alpha=0.85)
    for xi, m in zip(x, means):
        ax.annotate(f"{m:.4f}", (xi, m), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    finite = [m for m in means if math.isfinite(m)]
    if finite:
        lo = min(m - s for m, s in zip(means, stds) if math.isfinite(m))
        ax.set_ylim(max(0.0, lo - 0.05 * (max(finite) - lo + 1e-3) - 0.02), max(finite) + 0.03)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel(f"{metric} (mean ± std over seeds)")
    ax.set_title("best configuration per method: " + " vs ".join(s.name for s in sweeps))
    ax.grid(axis="y", alpha=0.3)
    return fig


def compare_sweeps(names: list[str], storage_path: str, mlflow_uri: str | None, say=print) -> list[StoredSweep]:
    import pandas as pd

    from orchestrator.reports.plots import png_bytes

    sweeps = [load_sweep(name, storage_path, mlflow_uri) for name in names]
    entries = [sweep_entries(s) for s in sweeps]
    say(comparison_table(sweeps, entries))
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
