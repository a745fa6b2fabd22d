"""Which searched parameters mattered: hyperparameter importance, the optimisation history and a
parallel-coordinates view, from a sweep's finished trials.

Importance is Optuna's fANOVA evaluator (a random forest fitted on the trials, the variance of the
metric each parameter explains) over an in-memory study rebuilt from the trials
(``optuna.trial.create_trial`` with distributions read off the trials' values), so it works for any
search algorithm, not only Optuna's. The evaluator's seed is fixed: the same trials give the same
ranking. ``seed`` and ``workers`` are not hyperparameters and are never ranked.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from trainables.core.plotting import is_numeric, short_name
from trainables.runtime.vocabulary import NOT_HYPERPARAMETERS
# Trials whose final metric is a result of their configuration; diverged and errored ones have none.
FINISHED = {"completed", "stopped_early", "terminated"}
IMPORTANCE_SEED = 0


def hyperparameter_keys(keys: list[str]) -> list[str]:
    """Searched keys that are hyperparameters: not the seed, not the worker count."""
    return [k for k in keys if short_name(k) not in NOT_HYPERPARAMETERS]


def _finished(frame, metric: str):
    y = frame[metric].to_numpy(dtype=float) if metric in frame else np.full(len(frame), np.nan)
    ok = np.isfinite(y)
    if "status" in frame:
        ok &= np.asarray([str(s) in FINISHED for s in frame["status"]], dtype=bool)
    return frame[ok], y[ok]


def _distribution(values: list[Any], log: bool):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if is_numeric(values):
        lo, hi = min(values), max(values)
        if lo == hi:
            return None  # a constant explains nothing
        if all(float(v).is_integer() for v in values) and not log:
            return IntDistribution(int(lo), int(hi))
        return FloatDistribution(float(lo), float(hi), log=log and lo > 0)
    choices = tuple(sorted({str(v) for v in values}))
    return CategoricalDistribution(choices) if len(choices) > 1 else None


def study_from_frame(frame, metric: str, mode: str, keys: list[str], column, log_keys: set[str]):
    """An in-memory Optuna study holding the finished trials (``column(key)`` is a key's frame column)."""
    import optuna

    finished, y = _finished(frame, metric)
    dists = {}
    for key in hyperparameter_keys(keys):
        if column(key) not in finished:
            continue
        values = [v for v in finished[column(key)] if v is not None and not (isinstance(v, float) and math.isnan(v))]
        if len(values) == len(finished) and (d := _distribution(values, key in log_keys)) is not None:
            dists[key] = d
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for (_, row), value in zip(finished.iterrows(), y):
        params = {}
        for key, d in dists.items():
            v = row[column(key)]
            params[key] = str(v) if hasattr(d, "choices") else (int(v) if type(d).__name__ == "IntDistribution"
                                                                  else float(v))
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dict(dists), value=float(value)))
    return study, list(dists)


def param_importance(frame, metric: str, mode: str, keys: list[str], column, log_keys: set[str]
                     ) -> dict[str, float]:
    """key -> importance (summing to 1), most important first; empty with fewer than 3 finished
    trials or no varied hyperparameter."""
    import optuna

    study, params = study_from_frame(frame, metric, mode, keys, column, log_keys)
    if len(study.trials) < 3 or not params:
        return {}
    if len(params) == 1:
        return {params[0]: 1.0}
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=IMPORTANCE_SEED)
    return {k: float(v) for k, v in optuna.importance.get_param_importances(study, evaluator=evaluator,
                                                                                 normalize=True).items()}


def importance_lines(importance: dict[str, float], metric: str, n: int) -> list[str]:
    if not importance:
        return []
    parts = ", ".join(f"{k} {v:.2f}" for k, v in importance.items())
    return [f"hyperparameter importance for {metric} (fANOVA over {n} finished trials, shares of variance): {parts}"]


def importance_figure(importance: dict[str, float], metric: str):
    from matplotlib.figure import Figure

    if not importance:
        return None
    keys = list(importance)[::-1]
    fig = Figure(figsize=(6.5, 0.5 * len(keys) + 1.6), layout="constrained")
    ax = fig.subplots()
    ax.barh(keys, [importance[k] for k in keys], color="tab:blue")
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"share of the variance of {metric} (fANOVA, seed {IMPORTANCE_SEED})")
    ax.set_title("hyperparameter importance")
    ax.grid(axis="x", alpha=0.3)
    return fig


def history_figure(frame, metric: str, mode: str):
    """Each finished trial's metric in trial order, with the best so far."""
    from matplotlib.figure import Figure

    finished, y = _finished(frame, metric)
    if len(y) < 2:
        return None
    best = np.maximum.accumulate(y) if mode == "max" else np.minimum.accumulate(y)
    fig = Figure(figsize=(7, 3.8), layout="constrained")
    ax = fig.subplots()
    order = np.arange(1, len(y) + 1)
    ax.scatter(order, y, s=18, color="tab:blue", label="trial")
    ax.step(order, best, where="post", color="tab:red", label=f"best so far ({mode})")
    ax.set_xlabel("finished trial (in trial-id order)")
    ax.set_ylabel(metric)
    ax.set_title(f"optimisation history: {len(y)} finished trials")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def parallel_coordinates_html(frame, metric: str, mode: str, keys: list[str], column, log_keys: set[str]
                              ) -> str | None:
    """One line per finished trial across the hyperparameters and the metric, coloured by the metric."""
    import plotly.graph_objects as go

    finished, y = _finished(frame, metric)
    if len(y) < 2:
        return None
    dims = []
    for key in hyperparameter_keys(keys):
        if column(key) not in finished:
            continue
        values = list(finished[column(key)])
        if is_numeric(values):
            arr = np.asarray(values, dtype=float)
            if key in log_keys and np.nanmin(arr) > 0:
                dims.append(dict(label=f"log10 {short_name(key)}", values=np.log10(arr)))
            else:
                dims.append(dict(label=short_name(key), values=arr))
        else:
            labels = sorted({str(v) for v in values})
            dims.append(dict(label=short_name(key), values=[labels.index(str(v)) for v in values],
                             tickvals=list(range(len(labels))), ticktext=labels))
    if not dims:
        return None
    dims.append(dict(label=metric, values=y))
    fig = go.Figure(go.Parcoords(line=dict(color=y, colorscale="Viridis", showscale=True,
                                           reversescale=(mode == "min"), colorbar=dict(title=metric)),
                                 dimensions=dims))
    fig.update_layout(title=f"{len(y)} finished trials, coloured by {metric} ({mode})", template="plotly_white",
                      height=520)
    return fig.to_html(full_html=True, include_plotlyjs=True)
