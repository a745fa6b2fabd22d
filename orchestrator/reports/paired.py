"""The reference runs' verdict, paired by seed: the best config and its control run on the same
seeds, so their difference is taken per seed and the verdict reports the mean paired difference, its
t confidence interval and n (:mod:`trainables.core.stats`). Below three seeds it says the sample is
too small to call rather than claim a margin.

Replaces the unpaired "more than 2 standard errors" verdict of ``rows.compare`` for the sweep's
reference runs and for ``report``/``compare`` rebuilt from storage.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from orchestrator.reports.rows import Comparison
from trainables.core.stats import MIN_SEEDS_TO_CALL, PairedDifference, mean_interval, paired_difference

REPRODUCE, CONTROL = "reproduce", "control"


@dataclass
class PairedComparison(Comparison):
    """A :class:`Comparison` that keeps its values by seed and the paired difference."""

    best_by_seed: dict[Any, float] = field(default_factory=dict)
    control_by_seed: dict[Any, float] = field(default_factory=dict)
    paired: PairedDifference | None = None

    def metrics(self) -> dict[str, float]:
        """For the parent run: the paired difference, its interval and n."""
        if self.paired is None or self.paired.interval.n == 0:
            return {}
        iv = self.paired.interval
        return {"reference_paired_diff": iv.mean, "reference_paired_ci_low": iv.low,
                "reference_paired_ci_high": iv.high, "reference_paired_n": float(iv.n)}


def paired_verdict(metric: str, best: dict[Any, float], control: dict[Any, float], label: str) -> PairedComparison:
    """``best`` and ``control`` map seed -> the reference metric. The Comparison keeps the per-seed
    values (in seed order) for the summary and the headline figure."""
    order = sorted(set(best) | set(control), key=str)
    comp = PairedComparison(metric, [best[s] for s in order if s in best],
                            [control[s] for s in order if s in control], best_by_seed=dict(best),
                            control_by_seed=dict(control))
    if not best or not control:
        comp.verdict = "no comparison: reference runs did not finish"
        return comp
    pd = comp.paired = paired_difference(best, control)
    iv = pd.interval
    b, c = mean_interval(best.values()), mean_interval(control.values())
    if iv.n == 0:
        comp.verdict = (f"no comparison: the best config and {label} finished on no common seed "
                        f"(best on {sorted(best, key=str)}, control on {sorted(control, key=str)})")
        return comp
    head = (f"best config vs {label} on {metric}: {b.mean:.4f} vs {c.mean:.4f}; paired difference "
            f"{iv.mean:+.4f}")
    if iv.n >= 2:
        head += f", {iv.level:.0%} CI [{iv.low:+.4f}, {iv.high:+.4f}]"
    head += f", n={iv.n} seed{'s' if iv.n != 1 else ''}"
    if pd.unpaired:
        head += f" ({len(pd.unpaired)} unpaired run(s) left out)"
    call = pd.call()
    if call == "too few seeds to call":
        tail = (f"too few seeds to call (fewer than {MIN_SEEDS_TO_CALL} paired seeds; raise control.seeds)")
    elif call == "higher":
        tail = f"the best config beat {label} (the interval excludes 0)"
    elif call == "lower":
        tail = f"the best config did NOT beat {label}: it is lower (the interval excludes 0)"
    else:
        tail = "no detectable difference (the interval contains 0)"
    comp.verdict = f"{head}: {tail}"
    return comp


def reference_values(results: Iterable, metric: str) -> dict[str, dict[Any, float]]:
    """role -> {seed: value} from the reference runs' results (each trial's config holds its case);
    errored runs and runs without the metric are left out."""
    from trainables.runtime.runner import CASE_KEY

    values: dict[str, dict[Any, float]] = {REPRODUCE: {}, CONTROL: {}}
    for i, r in enumerate(results):
        case = (r.config or {}).get(CASE_KEY, {})
        value = (r.metrics or {}).get(metric)
        role = case.get("role")
        if r.error is None and isinstance(value, (int, float)) and role in values:
            values[role][case.get("seed", i)] = float(value)
    return values


def paired_reference_comparison(results, metric: str, control: str) -> PairedComparison:
    """Best config vs its control from the reference runs' results, paired by seed."""
    values = reference_values(results, metric)
    return paired_verdict(metric, values[REPRODUCE], values[CONTROL], control)
