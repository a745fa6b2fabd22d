"""A plugin trainable with a vocabulary of its own, loaded as users load theirs:
``W2S_PLUGINS=tests.plugins.toy``. Nothing in the package knows its names; the sweep's table,
summary, plots and reference verdict must still speak them (tests/test_plugin_vocabulary.py).

Trainable ``toy``: softmax regression on scikit-learn's digits, trained with full-batch gradient
descent (``solver: gd``) or with momentum (``solver: heavy_ball``) and optional label smoothing,
in numpy, in well under a second. Every epoch it reports

* ``toy_score``: accuracy on a validation split (the search metric);
* ``toy_top1``: accuracy on a test split (the headline the summary averages over seeds);
* ``toy_loss``: the training cross-entropy (the loss panel of the learning curves).

Its control (for the reference runs) is the same recipe without label smoothing; its own figure,
``toy_scores.png``, plots each trial's test accuracy against its validation accuracy.
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from trainables.core.plotting import figure, legend_below, status_scatter
from trainables.runtime.session import Session
from trainables.runtime.trainable import TrialContext, TrialParams, register_trainable
from trainables.runtime.vocabulary import ReportData, Vocabulary

METRICS = {
    "toy_score": "validation accuracy (last epoch)",
    "toy_top1": "test accuracy (last epoch)",
    "toy_loss": "training cross-entropy of the epoch",
}


class ToyParams(TrialParams):
    solver: Literal["gd", "heavy_ball"] = Field("gd", description="plain gradient descent or with momentum 0.9")
    lr: float = Field(0.5, gt=0, le=10)
    rounds: int = Field(6, ge=1, le=200, description="gradient steps, one report each (its epoch budget)")
    smoothing: float = Field(0.1, ge=0, lt=1, description="label smoothing of the training targets")


def _splits(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order] / 16.0, y[order]
    n = len(y)
    cut = {"train": (0, n // 2), "val": (n // 2, 3 * n // 4), "test": (3 * n // 4, n)}
    return {name: (x[a:b], y[a:b]) for name, (a, b) in cut.items()}


def _probs(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    logits = x @ w
    logits -= logits.max(1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(1, keepdims=True)


def run_toy(p: ToyParams, session: Session, ctx: TrialContext) -> dict[str, Any]:
    data = _splits(seed=0)
    x, y = data["train"]
    x = np.hstack([x, np.ones((len(x), 1))])
    targets = np.full((len(y), 10), p.smoothing / 10) + np.eye(10)[y] * (1 - p.smoothing)
    w = np.random.default_rng(p.seed).normal(0, 0.01, (x.shape[1], 10))
    velocity = np.zeros_like(w)
    momentum = 0.9 if p.solver == "heavy_ball" else 0.0

    def accuracy(split: str) -> float:
        xs, ys = data[split]
        return float((_probs(w, np.hstack([xs, np.ones((len(xs), 1))])).argmax(1) == ys).mean())

    metrics: dict[str, Any] = {}
    for epoch in range(1, p.rounds + 1):
        probs = _probs(w, x)
        loss = float(-(targets * np.log(probs + 1e-12)).sum(1).mean())
        velocity = momentum * velocity + x.T @ (probs - targets) / len(y)
        w = w - p.lr * velocity
        metrics = {"epoch": epoch, "toy_loss": loss, "toy_score": accuracy("val"), "toy_top1": accuracy("test")}
        session.report(metrics)
    return metrics


def toy_control(config: dict[str, Any]) -> dict[str, Any]:
    return {"smoothing": 0.0}


def toy_scores_plot(data: ReportData):
    """Each trial's test accuracy against its validation accuracy, coloured by status."""
    frame = data.frame
    if "toy_top1" not in frame or "toy_score" not in frame:
        return None
    fig, axes = figure(1, 1, f"toy: test against validation accuracy, {len(frame)} trials")
    ax = axes[0, 0]
    seen: dict[str, Any] = {}
    status_scatter(ax, frame["toy_score"].to_numpy(dtype=float), frame["toy_top1"].to_numpy(dtype=float),
                   [str(s) for s in frame["status"]], seen)
    ax.set_xlabel("toy_score")
    ax.set_ylabel("toy_top1")
    legend_below(fig, seen)
    return fig


TOY_VOCABULARY = Vocabulary(
    headline="toy_top1",
    table_metrics=("toy_top1", "toy_loss"),
    control="its unsmoothed control",
    identity={"recipe": ("solver",)},
    curves=("toy_top1",),
    loss_curves=("toy_loss",),
    plots={"toy_scores.png": toy_scores_plot},
    budget="rounds",  # its own name for the epoch budget
)

register_trainable(
    "toy",
    params=ToyParams,
    metric="toy_score",
    mode="max",
    description="Softmax regression on digits in numpy, with its own metric names (tests of the report vocabulary).",
    control_overrides=toy_control,
    metrics_doc=METRICS,
    vocabulary=TOY_VOCABULARY,
)(run_toy)
