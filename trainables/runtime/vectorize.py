"""Vectorised trials: one Tune trial that trains several configurations of the cheap part of an
experiment (for example K linear probes on one set of cached features) as one batched
computation.

A trainable opts in by naming its per-configuration parameters (``TrainableDef.vectorized_keys``)
and accepting the three keys below. With ``vectorize: K`` in a sweep's params the orchestrator
builds each trial's config as

    probes:     [K dicts]            the sampled values of the searched per-configuration keys
    probe_grid: {key: [values]}      the ``grid`` values of searched per-configuration keys

and the trial trains every (entry of ``probes``) x (combination of ``probe_grid``), in the order of
:func:`expand_configs`, which the orchestrator also uses to turn the trial's per-configuration
results back into one row and one MLflow run each.
"""
from __future__ import annotations

import copy
import itertools
import math
from typing import Any, ClassVar, Iterable

from pydantic import ValidationError

from trainables.core.config import first_problem, set_dotted

VECTORIZE_KEY = "vectorize"
PROBES_KEY = "probes"
GRID_KEY = "probe_grid"
RESULTS_KEY = "probes"  # a vectorised trial's report holds one metrics dict per configuration here


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def is_vectorized(config: dict[str, Any]) -> bool:
    return isinstance(config.get(PROBES_KEY), list) or isinstance(config.get(GRID_KEY), dict)


def expand_configs(config: dict[str, Any], fields: Iterable[str]) -> list[dict[str, Any]]:
    """The per-configuration parameter dicts of a trial config, in training and reporting order:
    for each ``probes`` entry, for each ``probe_grid`` combination (last key fastest). The values
    of ``fields`` fixed at the top level of ``config`` are the defaults of every entry."""
    base = {k: copy.deepcopy(config[k]) for k in fields if k in config}
    if not is_vectorized(config):
        return [base]
    slots = config.get(PROBES_KEY) or [{}]
    grid = config.get(GRID_KEY) or {}
    combos = list(itertools.product(*grid.values())) if grid else [()]
    out = []
    for slot in slots:
        for combo in combos:
            entry = deep_merge(base, slot)
            for key, value in zip(grid, combo):
                set_dotted(entry, key, value)
            out.append(entry)
    return out


def single_config(config: dict[str, Any], fields: Iterable[str], index: int) -> dict[str, Any]:
    """A stand-alone (not vectorised) trial config that trains configuration ``index`` of ``config``."""
    chosen = expand_configs(config, fields)[index]
    out = {k: v for k, v in copy.deepcopy(config).items() if k not in (PROBES_KEY, GRID_KEY, VECTORIZE_KEY)}
    return deep_merge(out, chosen)


class FusedMembers:
    """Mixed into a trainable's parameters model whose trials can run fused (``vectorize: K``, or
    ``probes`` / ``probe_grid``): its members, each as the stand-alone parameters its unfused trial
    would have. The model names what its members may differ in, ``member_fields``."""
    member_fields: ClassVar[tuple[str, ...]] = ()

    @property
    def is_fused(self) -> bool:
        """``vectorize`` set: the trial runs fused, even with one member (no per-member key searched)."""
        return self.vectorize is not None or is_vectorized(self.model_dump(include={PROBES_KEY, GRID_KEY}))

    @property
    def members(self) -> int:
        fields = self.member_fields
        return len(expand_configs(self.model_dump(include={*fields, PROBES_KEY, GRID_KEY}), fields))

    def member_params(self) -> list:
        """The stand-alone parameters of each member, in member order, built from the keys this
        trial set (nested ones too) as its unfused trial would set them: checks that read which keys
        were set (betas with sgd, a head of kind identity, ...) judge both alike. The first member
        that is not valid on its own is named with its problem (a ValueError, for the trial's own
        validator)."""
        config, fields = self.model_dump(exclude_unset=True), self.member_fields
        out = []
        for k, member in enumerate(expand_configs(config, fields)):
            try:
                out.append(type(self).model_validate(single_config(config, fields, k)))
            except ValidationError as exc:
                raise ValueError(f"member {k} ({member}): {first_problem(exc)}") from None
        return out


def best_over(values: list[float], name: str) -> float:
    """The best of one metric over a trial's configurations: min for losses, else max; NaN-aware.
    A vectorised trial reports it at the top level, for schedulers that read one number per trial."""
    finite = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    if not finite:
        return math.nan
    return min(finite) if "loss" in name else max(finite)


def members_report(per_member: list[dict[str, Any]], epoch: int) -> dict[str, Any]:
    """A fused trial's report: every member's latest metrics under ``probes`` (a member that left
    keeps its last ones), and the best over them at the top level for Tune's scheduler."""
    # Imported here: the orchestrator reads this module while parsing a sweep, before torch is needed.
    from trainables.runtime.session import DIVERGED

    names = sorted({k for m in per_member for k, v in m.items() if isinstance(v, (int, float))} - {"epoch", DIVERGED})
    best = {k: best_over([m.get(k, math.nan) for m in per_member], k) for k in names}
    return {**best, "epoch": epoch, RESULTS_KEY: [dict(m) for m in per_member]}


def diverged_member_metrics(epoch: int, metric: str, mode_max: bool) -> dict[str, Any]:
    """What a fused trial reports for a member whose loss turned non-finite in ``epoch`` (0-based):
    flagged, and the worst value of the sweep's metric, so no scheduler or report ranks it."""
    from trainables.runtime.session import DIVERGED

    return {DIVERGED: 1.0, "epoch": epoch + 1, "divergence": f"non-finite loss in epoch {epoch + 1}",
            metric: float("-inf") if mode_max else float("inf")}
