"""The ``dino`` part of a sweep's report, declared in the trainable's vocabulary (issue 15):

* ``dino_locality.png`` / ``dino_data_size.png``: when a sweep searches ``student_init_alpha``
  (the locality study, ``student_init: interpolated``) or ``n_samples`` (the data-size study), the
  student's kNN and linear-probe accuracy against that value, mean ± std over the teacher seeds
  (``teacher_init_seed``; every other trial at the same value counts as another seed too), with
  the random teacher's own accuracy (``teacher_knn_acc``, ``teacher_linear_acc``: mean over the
  same trials, band = ± std) as a horizontal line: the paper's figures of accuracy against the
  distance of the student's initialisation from the teacher and against the training-set size.

The std is the sample std (ddof 1) over the trials at a value; 0 for a single trial. Only trials
whose status is ``completed`` (or that ended early but reported) with a finite metric count.
Hooks get plain data (:mod:`trainables.runtime.vocabulary`), never an orchestrator type.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from trainables.core.stats import finite
from trainables.runtime.vocabulary import Bar, Headline, ReportData

# searched key -> (file name, axis label)
SWEPT = {
    "student_init_alpha": ("dino_locality.png", "student_init_alpha (0: teacher, 1: random)"),
    "n_samples": ("dino_data_size.png", "n_samples (training images)"),
}
PANELS = (("knn_acc", "teacher_knn_acc", "kNN accuracy"), ("linear_acc", "teacher_linear_acc", "linear-probe accuracy"))
COUNTED = {"completed", "stopped_early", "terminated"}


def _usable(frame) -> np.ndarray:
    if "status" not in frame:
        return np.ones(len(frame), dtype=bool)
    return np.asarray([str(s) in COUNTED for s in frame["status"]], dtype=bool)


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def curve_stats(frame, column: str, metric: str) -> dict[float, tuple[float, float, int]]:
    """x value -> (mean, std, n) of ``metric`` over the usable trials at that value of ``column``
    (the seeds); values without a finite metric are left out."""
    if column not in frame or metric not in frame:
        return {}
    ok = _usable(frame)
    x = np.asarray(frame[column], dtype=float)
    y = np.asarray(frame[metric], dtype=float)
    out = {}
    for value in sorted({float(v) for v in x[ok & np.isfinite(x)]}):
        at = ok & (x == value) & np.isfinite(y)
        if at.any():
            mean, std = _mean_std(y[at])
            out[value] = (mean, std, int(at.sum()))
    return out


def reference_stats(frame, metric: str) -> tuple[float, float] | None:
    """(mean, std) of ``metric`` (the random teacher's own accuracy) over the usable trials."""
    if metric not in frame:
        return None
    y = np.asarray(frame[metric], dtype=float)[_usable(frame)]
    if not np.isfinite(y).any():
        return None
    return _mean_std(y)


def _swept_plot(key: str):
    def build(data: ReportData):
        frame = data.frame
        column = data.column(key)
        if key not in data.present_keys() or len({float(v) for v in np.asarray(frame[column], float)
                                                  if np.isfinite(v)}) < 2:
            return None
        panels = [p for p in PANELS if curve_stats(frame, column, p[0])]
        if not panels:
            return None
        from trainables.core.plotting import figure

        seeds = data.column("teacher_init_seed")
        n_seeds = len(set(frame[seeds])) if seeds in frame else 1
        fig, axes = figure(1, len(panels), f"dino: probe accuracy against {key}, mean ± std over "
                                           f"{n_seeds} teacher seed{'s' if n_seeds != 1 else ''}")
        for ax, (metric, teacher_metric, label) in zip(axes[0], panels):
            stats = curve_stats(frame, column, metric)
            xs = np.asarray(list(stats), dtype=float)
            means = np.asarray([s[0] for s in stats.values()])
            stds = np.asarray([s[1] for s in stats.values()])
            ax.errorbar(xs, means, yerr=stds, color="tab:blue", marker="o", capsize=4, lw=1.8, label="student")
            ax.fill_between(xs, means - stds, means + stds, color="tab:blue", alpha=0.15)
            test = curve_stats(frame, column, "test_" + metric)
            if test:
                ax.plot(list(test), [s[0] for s in test.values()], color="tab:blue", ls=":", marker="x",
                        label="student (test split)")
            ref = reference_stats(frame, teacher_metric)
            if ref is not None:
                ax.axhline(ref[0], color="tab:red", ls="--", lw=1.4, label="random teacher")
                if ref[1] > 0:
                    ax.axhspan(ref[0] - ref[1], ref[0] + ref[1], color="tab:red", alpha=0.1)
            if key == "n_samples" and xs.min() > 0 and xs.max() / xs.min() >= 10:
                ax.set_xscale("log")
            ax.set_xlabel(SWEPT[key][1])
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        return fig

    build.__name__ = f"dino_{key}_plot"
    return build


PLOTS: dict[str, Any] = {name: _swept_plot(key) for key, (name, _) in SWEPT.items()}


# The random-teacher headline: the student against the random teacher it learnt from, per probe
# (kNN, linear) on the validation and the test split. (student metric, teacher metric, panel, split)
HEADLINE_BARS = (
    ("knn_acc", "teacher_knn_acc", "kNN accuracy", "validation"),
    ("test_knn_acc", "teacher_test_knn_acc", "kNN accuracy", "test"),
    ("linear_acc", "teacher_linear_acc", "linear-probe accuracy", "validation"),
    ("test_linear_acc", "teacher_test_linear_acc", "linear-probe accuracy", "test"),
)


def dino_headline(data: ReportData):
    """The best configuration's student and its random teacher, over that configuration's seeds."""
    rows = data.best_group
    bars = []
    for student, teacher, panel, split in HEADLINE_BARS:
        for who, metric in (("student", student), ("random teacher", teacher)):
            values = finite(r.metrics.get(metric) for r in rows)
            if values:
                bars.append(Bar(panel, f"{who} ({split})", tuple(values), f"{who} ({split})"))
    if not any(b.role.startswith("student") for b in bars):
        return None
    return Headline(title="DINO: the student against its teacher at initialisation, best configuration", bars=tuple(bars))
