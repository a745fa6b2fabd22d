"""The sweep spec: what a search-space file may hold, as strict pydantic models (unknown keys are
errors), with the defaults documented in ``docs/search_spaces.md``."""
from __future__ import annotations

import copy
import math
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from orchestrator.space.domains import Domain
from trainables.core.config import StrictModel


# A sweep name: it names folders and MLflow runs, so no path separators and a bounded length.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,80}$"


class SearchAlgSpec(StrictModel):
    type: Literal["random", "optuna"] = "random"
    seed: int | None = None


class SchedulerSpec(StrictModel):
    type: Literal["fifo", "asha"] = "fifo"
    grace_period: int = Field(1, ge=1, description="epochs before ASHA may stop a trial")
    reduction_factor: float = Field(2.0, gt=1.0)
    max_t: int | None = Field(None, ge=1, description="epochs of the longest trial (default: params.epochs)")
    brackets: int = Field(1, ge=1)


class ResourcesSpec(StrictModel):
    workers: int = Field(1, ge=1, description="DDP workers per trial; 1 runs in the Tune trainable itself")
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    driver_cpus: float = Field(0.0, ge=0, description="CPU held by the Tune driver of a multi-worker trial; 0 "
                               "holds one unit of the TRAIN_DRIVER custom resource instead")
    max_concurrent_trials: int | None = Field(None, ge=1)
    autoscale_wait_s: float = Field(900.0, gt=0, description="on an autoscaling cluster, how long a trial bigger "
                                    "than the cluster is now waits for nodes before the sweep stops (resumable)")
    auto: bool = Field(False, description="`resources: auto`: each worker takes one GPU (and its share of the "
                       "CPUs, at most 8) where the machine or cluster has GPUs, else one CPU; set when the plan is made")

    @model_validator(mode="after")
    def _auto_sets_the_devices(self):
        if self.auto and {"gpus_per_worker", "cpus_per_worker"} & self.model_fields_set:
            raise ValueError("auto picks gpus_per_worker and cpus_per_worker itself; set them, or auto, not both")
        return self

    @field_validator("gpus_per_worker")
    @classmethod
    def _whole_or_fraction(cls, v: float) -> float:
        if v > 1 and not float(v).is_integer():
            raise ValueError("more than one GPU per worker must be a whole number")
        return v


class StopSpec(StrictModel):
    max_iterations: int | None = Field(None, ge=1, description="stop a trial after this many reports")
    target: float | None = Field(None, description="stop a trial once its metric reaches this value")


class CheckpointSpec(StrictModel):
    every: int = Field(5, ge=0, description="checkpoint every N epochs (0: only at the end)")
    keep: int = Field(2, ge=1, description="checkpoints kept per trial")


class ControlSpec(StrictModel):
    enabled: bool = True
    seeds: int = Field(3, ge=1, le=20)
    workers: int | None = Field(None, ge=1, description="workers for reference runs (default: the best trial's)")


class FailureSpec(StrictModel):
    max_failures: int = Field(0, ge=0, description="retries of a failed trial (from its last checkpoint)")


class WatchdogSpec(StrictModel):
    timeout_s: float = Field(900.0, ge=0, description="warn, with the likely cause, when no trial has made "
                             "progress for this long while trials run or wait (0: off)")
    abort_after_s: float | None = Field(None, gt=0, description="then stop the sweep (resumable) after this long "
                                        "without progress")

    @model_validator(mode="after")
    def _abort_after_timeout(self):
        if self.abort_after_s is not None and self.abort_after_s < self.timeout_s:
            raise ValueError(f"abort_after_s ({self.abort_after_s:g}) must be at least timeout_s ({self.timeout_s:g})")
        return self


class SweepSpec(StrictModel):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    trainable: str
    experiment: str | None = Field(None, description="MLflow experiment (default: the sweep name)")
    params: dict[str, Any] = Field(default_factory=dict)
    search: dict[str, Any] = Field(default_factory=dict)
    points_to_evaluate: list[dict[str, Any]] = Field(default_factory=list)
    metric: str | None = None
    mode: Literal["max", "min"] | None = None
    num_samples: int = Field(1, ge=1)
    search_alg: SearchAlgSpec = Field(default_factory=SearchAlgSpec)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)

    @field_validator("resources", mode="before")
    @classmethod
    def _resources_auto(cls, v):
        """``resources: auto`` is ``resources: {auto: true}``."""
        if v == "auto":
            return {"auto": True}
        if isinstance(v, str):
            raise ValueError("must be a mapping (workers, cpus_per_worker, gpus_per_worker, ...) or 'auto'")
        return v
    stop: StopSpec = Field(default_factory=StopSpec)
    time_budget_s: float | None = Field(None, gt=0)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    control: ControlSpec = Field(default_factory=ControlSpec)
    failure: FailureSpec = Field(default_factory=FailureSpec)
    watchdog: WatchdogSpec = Field(default_factory=WatchdogSpec)

    # Filled in by parse_spec's stages (orchestrator.space.parse), not by the file.
    source_file: str | None = Field(None, exclude=True)
    domains: dict[str, Domain] = Field(default_factory=dict, exclude=True)
    # Searched keys that vary inside a vectorised trial rather than across trials.
    vectorized_keys: list[str] = Field(default_factory=list, exclude=True)
    # The trainable's TrainableDef.sharded_prepare: non-empty, resources.workers shards its prepare
    # step and each trial runs on one worker.
    sharded_prepare: str = Field("", exclude=True)

    @property
    def experiment_name(self) -> str:
        return self.experiment or self.name

    def fixed_config(self) -> dict[str, Any]:
        """Fixed parameters plus ``workers``: the part of every trial's config that is not searched."""
        cfg = copy.deepcopy(self.params)
        cfg.setdefault("workers", 1 if self.sharded_prepare else self.resources.workers)
        return cfg

    def prepare_config(self) -> dict[str, Any]:
        """What the trainable's prepare step gets: the fixed config, with ``workers`` the shards of
        a sharded prepare."""
        cfg = self.fixed_config()
        if self.sharded_prepare:
            cfg["workers"] = self.resources.workers
        return cfg

    def workers_values(self) -> list[int]:
        """The workers of the trials (a sharded prepare's trials run on one)."""
        if self.sharded_prepare:
            return [1]
        values = {int(self.resources.workers)}
        if "workers" in self.domains:
            values |= {int(v) for v in self.domains["workers"].candidates()}
            d = self.domains["workers"]
            if d.kind in ("randint", "qrandint"):
                values |= set(range(int(d.args[0]), int(d.args[1]) + 1))
        values |= {int(p["workers"]) for p in self.points_to_evaluate if "workers" in p}
        return sorted(values)

    def expected_trials(self) -> int:
        grid = math.prod(d.grid_size for k, d in self.domains.items() if k not in self.vectorized_keys)
        return grid * self.num_samples

    def resolved_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=False)


def spec_to_yaml(spec: SweepSpec) -> str:
    """The resolved spec (defaults filled in) as YAML, as ``--dry-run`` prints it."""
    return yaml.safe_dump(spec.resolved_dict(), sort_keys=False)
