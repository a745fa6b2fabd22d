"""Candidate trial configs: the trial configs a search space can produce that are checked before
Ray starts. One enumerator, in two shapes:

* **one value at a time** (spec validation, :mod:`orchestrator.space.validate`): the *base* config
  (fixed parameters, ``workers``, each searched key at its first candidate value), then the base
  with one searched key at each of its candidate values (every listed value, or a range's low and
  high bound), then the base with each point to evaluate;
* **combinations** (the preflight, :mod:`orchestrator.run.preflight`): every combination of the
  searched keys' candidate values (the first :data:`MAX_COMBINATIONS`; the first combination is the
  base), then the base with each point to evaluate.
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any, Iterator, Literal

from orchestrator.space.model import SweepSpec
from trainables.core.config import MISSING, set_dotted

MAX_COMBINATIONS = 4096  # product of candidate values checked exhaustively; above it, a sample


@dataclass
class Candidate:
    """One candidate trial config and what in the search space it stands for."""

    kind: Literal["base", "value", "combination", "point"]
    # Where it comes from, in the user's terms: ``params`` (the base), ``search.lr.loguniform[low]``,
    # ``points_to_evaluate[0]``, or for a combination its values (``lr=0.1, epochs=2``).
    where: str
    config: dict[str, Any]
    keys: tuple[str, ...] = ()  # the searched or point keys it varies (none for the base)
    value: Any = MISSING  # the searched value of a "value" candidate
    point: int | None = None  # the index of a "point" candidate in points_to_evaluate


def base_config(spec: SweepSpec) -> dict[str, Any]:
    """Fixed parameters and ``workers``, each searched key at its first candidate value."""
    return with_values(spec.fixed_config(), {key: d.candidates()[0] for key, d in spec.domains.items()})


def with_values(config: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` with each dotted key of ``values`` set."""
    out = copy.deepcopy(config)
    for key, value in values.items():
        set_dotted(out, key, value)
    return out


def candidates(spec: SweepSpec, combine: bool = False) -> Iterator[Candidate]:
    """The candidate trial configs of ``spec``: one value at a time, or with ``combine`` every
    combination of values; then the points to evaluate (see the module docstring)."""
    base = base_config(spec)
    if combine:
        yield from _combinations(spec)
    else:
        yield Candidate("base", "params", base)
        yield from _values(spec, base)
    for i, point in enumerate(spec.points_to_evaluate):
        yield Candidate("point", f"points_to_evaluate[{i}]", with_values(base, point), tuple(point), point=i)


def _values(spec: SweepSpec, base: dict[str, Any]) -> Iterator[Candidate]:
    for key, d in spec.domains.items():
        for value, label in zip(d.candidates(), d.candidate_labels()):
            yield Candidate("value", f"search.{key}.{d.kind}{label}", with_values(base, {key: value}), (key,), value)


def _combinations(spec: SweepSpec) -> Iterator[Candidate]:
    keys = list(spec.domains)
    values = [spec.domains[k].candidates() for k in keys]
    fixed = spec.fixed_config()
    for combo in itertools.islice(itertools.product(*values), MAX_COMBINATIONS):
        assigned = dict(zip(keys, combo))
        where = ", ".join(f"{k}={v!r}" for k, v in assigned.items()) or "params"
        yield Candidate("combination", where, with_values(fixed, assigned), tuple(keys))
