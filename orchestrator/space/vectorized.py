"""Vectorised trials (``params.vectorize: K``) in the orchestrator.

A trainable that names per-configuration parameters (``TrainableDef.vectorized_keys``, e.g. the
probe lr, weight decay, epochs and loss options of ``w2s_probe``) can train many configurations in
one trial as one batched computation. With ``vectorize: K``:

* **Search space.** Searched per-configuration keys leave the trial level: each trial gets K
  independent samples of the sampled ones (``probes``, a list Tune resolves) and the values of the
  ``grid`` ones (``probe_grid``), and trains K x prod(grid sizes) configurations. Trial-level keys
  are searched as usual. (With no sampled per-configuration key, K identical samples would be
  pointless, so a trial trains each grid combination once.)
* **Results.** The trial reports one metrics dict per configuration under ``probes``; the table,
  ``results.csv``, the best config and MLflow (one child run per configuration, tag ``w2s.probe``)
  get one row each, so Tune's K results look like K trials everywhere a user reads them.
* **Scheduling.** Schedulers and stoppers need one number per trial: a vectorised trial's
  top-level metrics are the best over its configurations (max; min for losses), so ASHA keeps a
  trial while any of its configurations is promising.

Random search only: Optuna proposes one configuration per trial.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from orchestrator.errors import SpecIssue
from orchestrator.space.model import SweepSpec
from trainables.core.config import set_dotted
from trainables.runtime.vectorize import GRID_KEY, PROBES_KEY, RESULTS_KEY, VECTORIZE_KEY, is_vectorized, single_config


def trainable_fields(spec: SweepSpec) -> tuple[str, ...]:
    from trainables.runtime.trainable import get_trainable

    return tuple(get_trainable(spec.trainable).vectorized_keys)


def vectorize_k(spec: SweepSpec) -> int | None:
    k = spec.params.get(VECTORIZE_KEY)
    return int(k) if isinstance(k, int) and not isinstance(k, bool) else None


def per_config_keys(spec: SweepSpec, fields: tuple[str, ...]) -> list[str]:
    """Searched keys that vary per configuration inside a trial (empty unless vectorised);
    ``fields`` are the trainable's per-configuration parameters."""
    if vectorize_k(spec) is None:
        return []
    wanted = set(fields)
    return [key for key in spec.domains if key.split(".")[0] in wanted]


@dataclass
class VectorizedCheck:
    keys: list[str]  # what parse_spec stores as spec.vectorized_keys
    issues: list[SpecIssue] = field(default_factory=list)


def check_spec(spec: SweepSpec, fields: tuple[str, ...]) -> VectorizedCheck:
    """The per-configuration keys of a spec whose domains are parsed, and the problems with
    ``vectorize`` in it. Reads the spec only; the caller stores the keys."""
    keys = per_config_keys(spec, fields)
    issues = []
    if VECTORIZE_KEY in spec.domains:
        issues.append(SpecIssue(f"search.{VECTORIZE_KEY}", "the number of configurations per trial is fixed; "
                                "set it under params"))
    if vectorize_k(spec) is None:
        return VectorizedCheck(keys, issues)
    if spec.search_alg.type == "optuna":
        issues.append(SpecIssue("search_alg.type", "vectorised trials (params.vectorize) sample their "
                                "configurations with random search; Optuna proposes one per trial", "optuna"))
    issues += shared_key_issues(spec, keys)
    for i, point in enumerate(spec.points_to_evaluate):
        for key in point:
            if key in keys and spec.domains[key].kind == "grid":
                issues.append(SpecIssue(f"points_to_evaluate[{i}].{key}", "is a grid key of a vectorised trial: "
                                        "every trial trains all its values; drop it from the point"))
    return VectorizedCheck(keys, issues)


def shared_key_issues(spec: SweepSpec, keys: list[str]) -> list[SpecIssue]:
    """Per-configuration keys searched although the trainable needs one value per trial for them
    (``TrainableDef.shared_member_keys``)."""
    from trainables.runtime.trainable import get_trainable

    shared = get_trainable(spec.trainable).shared_member_keys
    if shared is None or not keys:
        return []
    reasons = shared(spec.fixed_config(), {key: d.candidates() for key, d in spec.domains.items()})
    return [SpecIssue(f"search.{key}", f"the configurations of one vectorised trial share it ({reasons[key]}); "
                      f"fix it under params, or drop params.vectorize to search it across trials")
            for key in keys if key in reasons]


def configs_per_trial(spec: SweepSpec) -> int:
    k = vectorize_k(spec)
    if k is None:
        return 1
    grid = [spec.domains[key] for key in spec.vectorized_keys if spec.domains[key].kind == "grid"]
    sampled = len(grid) < len(spec.vectorized_keys)
    return (k if sampled else 1) * math.prod(d.grid_size for d in grid)


def probe_space(spec: SweepSpec) -> dict[str, Any]:
    """The ``probes`` / ``probe_grid`` part of the Tune param space (empty unless vectorised)."""
    k = vectorize_k(spec)
    if k is None or not spec.vectorized_keys:
        return {}
    grid = {key: list(spec.domains[key].args) for key in spec.vectorized_keys if spec.domains[key].kind == "grid"}
    sampled = [key for key in spec.vectorized_keys if key not in grid]
    slots = []
    for _ in range(k if sampled else 1):
        slot: dict[str, Any] = {}
        for key in sampled:
            set_dotted(slot, key, spec.domains[key].to_tune())  # a fresh domain: sampled independently
        slots.append(slot)
    return {PROBES_KEY: slots, **({GRID_KEY: grid} if grid else {})}


def point_probes(spec: SweepSpec, point: dict[str, Any], index: int) -> dict[str, Any]:
    """The ``probes`` of the trial that ``points_to_evaluate[index]`` starts, in a vectorised sweep:
    the point's per-configuration values are configuration 0, the other K - 1 are sampled here
    (seeded by the search seed and the point's index, so a resumed sweep plans the same ones).
    Empty when the sweep is not vectorised or has no sampled per-configuration key."""
    import numpy as np

    k = vectorize_k(spec)
    sampled = [key for key in spec.vectorized_keys if spec.domains[key].kind != "grid"]
    if k is None or not sampled:
        return {}
    rng = np.random.RandomState((spec.search_alg.seed or 0) * 1_000 + index)
    slots = []
    for slot_index in range(k):
        slot: dict[str, Any] = {}
        for key in sampled:
            if slot_index == 0 and key in point:
                value = point[key]
            else:
                value = spec.domains[key].to_tune().sample(random_state=rng)
                value = value.item() if hasattr(value, "item") else value
            set_dotted(slot, key, value)
        slots.append(slot)
    return {PROBES_KEY: slots}


def plan_lines(spec: SweepSpec) -> list[str]:
    if vectorize_k(spec) is None:
        return []
    from trainables.runtime.trainable import get_trainable

    n = configs_per_trial(spec)
    keys = ", ".join(spec.vectorized_keys) or "none searched"
    lines = [f"vectorised: each trial trains {n} configurations together on shared batches "
             f"({n * spec.expected_trials()} in all; per-configuration keys: {keys})"]
    if get_trainable(spec.trainable).stops_members and spec.scheduler.type == "asha":
        lines.append("vectorised: ASHA judges every configuration at its rungs; a stopped one leaves its trial's "
                     "step and the others train on")
    return lines


# ---------------------------------------------------------------------------------------------
# Results: one row per configuration
# ---------------------------------------------------------------------------------------------


def expand_result(config: dict[str, Any], metrics: dict[str, Any], fields: tuple[str, ...]) -> \
        list[tuple[int, dict[str, Any], dict[str, Any]]]:
    """(index, stand-alone config, metrics) per configuration of a vectorised trial's result;
    empty for other results."""
    per_config = metrics.get(RESULTS_KEY)
    if not fields or not is_vectorized(config) or not isinstance(per_config, list):
        return []
    shared = {k: v for k, v in metrics.items() if k not in (RESULTS_KEY,) and k in ("trial_id", "time_total_s")}
    return [(k, single_config(config, fields, k), {**m, **shared}) for k, m in enumerate(per_config)]


def row_config(spec: SweepSpec, config: dict[str, Any], probe: int | None) -> dict[str, Any]:
    """The stand-alone config of a result row: the trial's, or one configuration of a vectorised trial."""
    if probe is None:
        return config
    return single_config(config, trainable_fields(spec), probe)
