"""The best trial as a complete search-space file that re-runs it exactly:
``run_sweep.py <storage>/<name>/best_config.yaml``.

Every parameter is fixed to the trial's value (nothing searched, ``num_samples: 1``), the scheduler
is FIFO so nothing stops it early, the reference runs are off, and the search seed is kept. A
best trial that a scheduler stopped before its epoch budget is re-run to the same epoch with
``stop.max_iterations`` (one report per epoch), so its learning-rate schedule is unchanged.
"""
from __future__ import annotations

import copy
from typing import Any

import yaml

from orchestrator.reports.rows import TrialRow, vocabulary_of
from orchestrator.space.spec import SweepSpec
from orchestrator.store.layout import BEST_SPACE_FILE



def complete_params(trainable: str, config: dict[str, Any]) -> dict[str, Any]:
    """Every parameter, defaults included, so a later change of a default cannot change the re-run."""
    from pydantic import ValidationError

    from trainables.runtime.trainable import get_trainable

    try:
        return get_trainable(trainable).params_model.model_validate(config).model_dump(mode="json")
    except (ValidationError, KeyError):
        return copy.deepcopy(config)


def best_space(spec: SweepSpec, best_config: dict[str, Any], best: TrialRow, sweep: str) -> dict[str, Any]:
    params = complete_params(spec.trainable, best_config)
    workers = int(params.pop("workers", spec.resources.workers))
    raw = spec.model_dump(mode="json", exclude_none=True)
    out: dict[str, Any] = {
        "name": f"{spec.name}-best",
        "description": f"best trial {best.label} of sweep {sweep}: {spec.metric} = {best.metrics.get(spec.metric)}",
        "trainable": spec.trainable,
        "experiment": spec.experiment_name,
        "params": params,
        "metric": spec.metric,
        "mode": spec.mode,
        "num_samples": 1,
        "search_alg": {"type": "random", **({"seed": spec.search_alg.seed} if spec.search_alg.seed is not None else {})},
        "scheduler": {"type": "fifo"},
        "resources": {**raw.get("resources", {}), "workers": workers},
        "checkpoint": raw.get("checkpoint", {}),
        "control": {"enabled": False},
        "failure": raw.get("failure", {}),
    }
    out["resources"].pop("max_concurrent_trials", None)
    if out["resources"].pop("auto", False):
        # the re-run asks for the machine again (auto) rather than the devices this one had
        out["resources"].pop("gpus_per_worker", None)
        out["resources"].pop("cpus_per_worker", None)
        out["resources"]["auto"] = True
    stop = {k: v for k, v in raw.get("stop", {}).items() if v is not None}
    epoch, budget = best.metrics.get("epoch"), params.get(vocabulary_of(spec).budget)
    if best.status == "stopped_early" and isinstance(epoch, int) and isinstance(budget, int) and epoch < budget:
        stop["max_iterations"] = epoch
    if stop:
        out["stop"] = stop
    return out


def best_space_yaml(spec: SweepSpec, best_config: dict[str, Any], best: TrialRow, sweep: str,
                    path: str = BEST_SPACE_FILE) -> str:
    header = (f"# Re-runs the best trial ({best.label}) of sweep {sweep} exactly:\n"
              f"#   python run_sweep.py {path}\n")
    return header + yaml.safe_dump(best_space(spec, best_config, best, sweep), sort_keys=False)
