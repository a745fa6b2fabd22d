"""Small interval statistics shared by the sweep reports and the families' headline figures: the
mean of a few seeds with its Student-t confidence interval, and the paired difference of two
configurations run on the same seeds.

Seeds are few (2 to 5), so a normal interval (mean ± 2 SE) is too narrow; the t quantile with n - 1
degrees of freedom (scipy) is the textbook interval for a mean of few independent draws. Below
``MIN_SEEDS_TO_CALL`` seeds the interval is still computed but a comparison is not called.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping

LEVEL = 0.95
# With 2 seeds the t interval has 1 degree of freedom (t = 12.7 at 95 %): any call would rest on
# one difference; 3 is the fewest that gives the interval a usable width.
MIN_SEEDS_TO_CALL = 3


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` finite values and its two-sided ``level`` t confidence interval (NaN bounds
    when n < 2: one draw says nothing about its spread)."""

    mean: float
    low: float
    high: float
    n: int
    level: float = LEVEL

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def text(self, digits: int = 4) -> str:
        if self.n == 0:
            return "-"
        if self.n < 2:
            return f"{self.mean:.{digits}f} (n=1, no interval)"
        return (f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}] "
                f"({self.level:.0%} CI, n={self.n})")


def finite(values: Iterable) -> list[float]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            try:
                v = float(v)  # numpy scalars
            except (TypeError, ValueError):
                continue
        if math.isfinite(v):
            out.append(float(v))
    return out


def mean_interval(values: Iterable, level: float = LEVEL) -> Interval:
    """The mean of the finite values and its t interval."""
    from scipy import stats

    xs = finite(values)
    n = len(xs)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, level)
    mean = math.fsum(xs) / n
    if n < 2:
        return Interval(mean, math.nan, math.nan, 1, level)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, level)


@dataclass(frozen=True)
class PairedDifference:
    """``a - b`` over the seeds both have: the mean difference and its t interval (a paired t
    interval: the seed's own effect cancels), which seeds were paired and which were left out."""

    interval: Interval
    seeds: tuple
    unpaired: tuple

    @property
    def callable(self) -> bool:
        return self.interval.n >= MIN_SEEDS_TO_CALL

    def call(self) -> str:
        """'higher' | 'lower' | 'no detectable difference' | 'too few seeds to call'."""
        iv = self.interval
        if not self.callable:
            return "too few seeds to call"
        if iv.low > 0:
            return "higher"
        if iv.high < 0:
            return "lower"
        return "no detectable difference"


def paired_difference(a: Mapping, b: Mapping, level: float = LEVEL) -> PairedDifference:
    """``a`` and ``b`` map seed -> value; the difference is taken per seed present (finite) in both."""
    fa, fb = ({k: v for k, v in m.items() if finite([v])} for m in (a, b))
    common = sorted(set(fa) & set(fb), key=str)
    diffs = [float(fa[s]) - float(fb[s]) for s in common]
    unpaired = tuple(sorted((set(fa) ^ set(fb)), key=str))
    return PairedDifference(mean_interval(diffs, level), tuple(common), unpaired)
