"""Seed-style summary: one line per identity group (for example teacher, student, method), the way
the seed papers report results: top-1 mean ± std over seeds of the best hyperparameters of that method.

Within a group, trials that differ only in ``seed`` are one configuration; the configuration with
the best mean search metric is the group's entry, and its top-1, the trainable's headline metric
(``Vocabulary.headline``, else the search metric), is averaged over its seeds. The group columns
are the trainable's ``Vocabulary.identity`` plus every searched key with text values;
``Vocabulary.summary_metrics`` add columns, each averaged over the entry's seeds (the few-shot
accuracies per shot count).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from orchestrator.reports.rows import TrialRow, fmt, render_table
from orchestrator.space.spec import get_dotted
from trainables.runtime.vocabulary import Vocabulary

SEED_KEY = "seed"


@dataclass
class MethodEntry:
    group: dict[str, str]
    metric: str
    top1_metric: str
    metric_values: list[float]
    top1_values: list[float]
    hyperparams: dict[str, Any]
    trial_ids: list[str]
    configs_tried: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def seeds(self) -> int:
        return len(self.top1_values)

    @staticmethod
    def _mean(values: list[float]) -> float:
        return statistics.fmean(values) if values else math.nan

    @staticmethod
    def _std(values: list[float]) -> float:
        return statistics.stdev(values) if len(values) > 1 else math.nan

    @property
    def top1_mean(self) -> float:
        return self._mean(self.top1_values)

    @property
    def top1_std(self) -> float:
        return self._std(self.top1_values)

    @property
    def metric_mean(self) -> float:
        return self._mean(self.metric_values)


def _label(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("model", value))
    return str(value)


def identity(row: TrialRow, vocabulary: Vocabulary) -> dict[str, str]:
    out = {}
    for column, candidates in vocabulary.identity.items():
        for key in candidates:
            value = get_dotted(row.config, key) if row.config else row.params.get(key)
            if value is None:
                value = row.params.get(key)
            if value is not None:
                out[column] = _label(value)
                break
    return out


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def top1_metric(rows: list[TrialRow], metric: str, vocabulary: Vocabulary) -> str:
    """The headline metric when some trial reports it, else the search metric."""
    headline = vocabulary.headline
    return headline if headline and any(_finite(r.metrics.get(headline)) for r in rows) else metric


def method_keys(rows: list[TrialRow], keys: list[str]) -> list[str]:
    """Searched keys that name a method rather than tune one: non-numeric values (loss names,
    model names), never the seed."""
    out = []
    for key in keys:
        values = [r.params.get(key) for r in rows if r.params.get(key) is not None]
        if key != SEED_KEY and values and not all(_finite(v) for v in values):
            out.append(key)
    return out


def summarize(rows: list[TrialRow], keys: list[str], metric: str, mode: str,
              vocabulary: Vocabulary | None = None) -> list[MethodEntry]:
    """The best configuration of every method group, its seeds pooled."""
    vocab = vocabulary or Vocabulary()
    top1 = top1_metric(rows, metric, vocab)
    named = vocab.identity_keys()
    by_method = method_keys(rows, keys)
    tuned = [k for k in keys if k not in by_method and k != SEED_KEY]
    groups: dict[tuple, dict[tuple, list[TrialRow]]] = {}
    group_labels: dict[tuple, dict[str, str]] = {}
    for r in rows:
        if r.status == "error" or not _finite(r.metrics.get(metric)):
            continue
        ident = identity(r, vocab)
        for key in by_method:
            if key not in named:
                ident[key] = _label(r.params.get(key))
        gkey = tuple(sorted(ident.items()))
        group_labels[gkey] = ident
        ckey = tuple(repr(r.params.get(k)) for k in tuned)
        groups.setdefault(gkey, {}).setdefault(ckey, []).append(r)
    entries = []
    sign = 1 if mode == "max" else -1
    for gkey, configs in groups.items():
        def score(members: list[TrialRow]) -> float:
            return sign * statistics.fmean(m.metrics[metric] for m in members)

        members = max(configs.values(), key=score)
        entries.append(MethodEntry(
            group=group_labels[gkey], metric=metric, top1_metric=top1,
            metric_values=[float(m.metrics[metric]) for m in members],
            top1_values=[float(m.metrics[top1]) for m in members if _finite(m.metrics.get(top1))],
            hyperparams={k: members[0].params.get(k) for k in tuned},
            trial_ids=[m.label for m in members], configs_tried=len(configs),
            extra={k: [float(m.metrics[k]) for m in members if _finite(m.metrics.get(k))]
                   for k in vocab.summary_metrics if any(_finite(m.metrics.get(k)) for m in rows)}))
    entries.sort(key=lambda e: (tuple(e.group.values()), -sign * e.metric_mean))
    return entries


def covers_several(entries: list[MethodEntry]) -> bool:
    """Worth a seed-style table: several methods/models, or several seeds of one."""
    return len(entries) > 1 or any(e.seeds > 1 for e in entries)


def mean_std(mean: float, std: float, n: int) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.4f} ± {std:.4f} (n={n})" if n > 1 else f"{mean:.4f} (n=1)"


def summary_records(entries: list[MethodEntry], leading: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Flat records (for a DataFrame or CSV): group columns, top-1 mean/std/n, metric mean, config."""
    records = []
    for e in entries:
        records.append({**(leading or {}), **e.group,
                        f"{e.top1_metric}_mean": e.top1_mean, f"{e.top1_metric}_std": e.top1_std, "seeds": e.seeds,
                        f"{e.metric}_mean": e.metric_mean, "configs_tried": e.configs_tried,
                        **{f"{k}_{stat}": f(v) for k, v in e.extra.items()
                           for stat, f in (("mean", MethodEntry._mean), ("std", MethodEntry._std))},
                        **{f"param.{k}": v for k, v in e.hyperparams.items()},
                        "trial_ids": " ".join(e.trial_ids)})
    return records


def format_summary(entries: list[MethodEntry]) -> str:
    if not entries:
        return "(no trial produced the metric)"
    group_cols = list(dict.fromkeys(c for e in entries for c in e.group))
    hyper = list(dict.fromkeys(k for e in entries for k in e.hyperparams))
    top1, metric = entries[0].top1_metric, entries[0].metric
    extra = list(dict.fromkeys(k for e in entries for k in e.extra))
    headers = [*group_cols, f"top-1 ({top1}) mean ± std", *[f"{k} mean ± std" for k in extra], f"{metric} mean",
               "configs", *hyper]
    body = [[*[e.group.get(c, "-") for c in group_cols], mean_std(e.top1_mean, e.top1_std, e.seeds),
             *[mean_std(e._mean(e.extra.get(k, [])), e._std(e.extra.get(k, [])), len(e.extra.get(k, [])))
               for k in extra],
             fmt(e.metric_mean), e.configs_tried, *[fmt(e.hyperparams.get(k, "-")) for k in hyper]]
            for e in entries]
    return render_table(headers, body)
