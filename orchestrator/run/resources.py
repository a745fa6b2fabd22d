"""The trial resource plan: what each kind of trial reserves, how many can run at once, and
whether the cluster can run them at all.

Tune only accounts for the trial processes themselves. A multi-worker trial's Ray Train worker
group reserves its own placement group, invisible to Tune, so concurrency must be capped by hand
or a sweep that fills the cluster with drivers dead-locks silently.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from orchestrator.errors import SpecError, SpecIssue
from orchestrator.space.spec import SweepSpec


# A custom resource for the thin Tune drivers of multi-worker trials. Holding it instead of a CPU
# means a DDP trial can use every CPU of a small machine for its workers. The local Ray defines
# it; cluster.yaml gives it to the (non-spot) head node.
DRIVER_RESOURCE = "TRAIN_DRIVER"
LOCAL_DRIVER_SLOTS = 64
FALLBACK_DRIVER_CPUS = 0.01


@dataclass
class ClusterResources:
    cpus: float
    gpus: float
    source: str  # "local machine" or "cluster at <address>"
    driver_slots: float = LOCAL_DRIVER_SLOTS
    # The most GPUs the cluster can ever have, from its autoscaler config; None when unknown
    # (a cluster without an autoscaler config may still grow, so it only gets a warning).
    max_gpus: float | None = None

    @classmethod
    def local(cls) -> "ClusterResources":
        return cls(cpus=float(os.cpu_count() or 1), gpus=float(_local_gpu_count()), source="local machine")

    @classmethod
    def from_ray(cls, address: str) -> "ClusterResources":
        import ray

        total = ray.cluster_resources()
        return cls(cpus=float(total.get("CPU", 0)), gpus=float(total.get("GPU", 0)), source=f"cluster at {address}",
                   driver_slots=float(total.get(DRIVER_RESOURCE, 0)), max_gpus=_autoscaler_max("GPU"))


def _autoscaler_max(resource: str) -> float | None:
    try:
        from ray._private.state import state  # the same private call Ray Train makes before a worker group starts

        limits = state.get_max_resources_from_cluster_config()
    except Exception:  # noqa: BLE001 - an older or unusual cluster: unknown
        return None
    return None if limits is None else float(limits.get(resource, 0))


def _local_gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no usable torch CUDA means no GPUs
        return 0


@dataclass
class TrialShape:
    workers: int
    trial_cpus: float  # what Tune reserves for the trial process
    trial_gpus: float
    worker_cpus: float  # what the Train worker group reserves (0 for single-worker trials)
    worker_gpus: float
    driver_slot: bool = False  # the trial process holds a TRAIN_DRIVER unit instead of CPU

    @property
    def total_cpus(self) -> float:
        return self.trial_cpus + self.worker_cpus

    @property
    def total_gpus(self) -> float:
        return self.trial_gpus + self.worker_gpus

    def describe(self) -> str:
        if self.workers == 1:
            return f"1 worker: runs in the Tune trial process, {self.trial_cpus:g} CPU, {self.trial_gpus:g} GPU"
        backend = "nccl" if self.worker_gpus else "gloo"
        driver = f"1 {DRIVER_RESOURCE}" if self.driver_slot else f"{self.trial_cpus:g} CPU"
        return (f"{self.workers} workers: Tune driver {driver} + TorchTrainer DDP ({backend}) "
                f"{self.workers} x ({self.worker_cpus / self.workers:g} CPU, {self.worker_gpus / self.workers:g} GPU)")


@dataclass
class ResourcePlan:
    shapes: list[TrialShape]
    cluster: ClusterResources
    max_concurrent_trials: int | None  # None: Tune's own accounting is enough
    reason: str
    warnings: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"cluster: {self.cluster.cpus:g} CPU, {self.cluster.gpus:g} GPU ({self.cluster.source})"]
        out += [f"trial shape: {s.describe()}" for s in self.shapes]
        limit = "unlimited (Tune's accounting)" if self.max_concurrent_trials is None else str(self.max_concurrent_trials)
        out.append(f"max concurrent trials: {limit} ({self.reason})")
        out += [packing_line(s, self.cluster, self.max_concurrent_trials) for s in self.shapes]
        out += [f"warning: {w}" for w in self.warnings]
        return out


@dataclass
class Packing:
    """How trials of one shape fill the cluster: ``per_gpu`` trials share each GPU (fractional
    ``gpus_per_worker``), or each trial holds ``gpus_per_trial`` whole GPUs; ``concurrent`` trials
    fit at once, limited by ``limited_by``."""

    per_gpu: int
    gpus_per_trial: float
    concurrent: int
    limited_by: str


def packing(shape: TrialShape, cluster: ClusterResources, cap: int | None = None) -> Packing:
    by_cpu = math.floor(cluster.cpus / shape.total_cpus + 1e-9) if shape.total_cpus else 10**6
    fits = {"CPUs": by_cpu}
    per_gpu = 0
    if shape.total_gpus:
        per_gpu = math.floor(1 / shape.total_gpus + 1e-9) if shape.total_gpus < 1 else 0
        fits["GPUs"] = (math.floor(cluster.gpus + 1e-9) * per_gpu if per_gpu
                        else math.floor(cluster.gpus / shape.total_gpus + 1e-9))
    if cap is not None:
        fits["max_concurrent_trials"] = cap
    limited_by = min(fits, key=fits.get)
    return Packing(per_gpu, shape.total_gpus, max(fits[limited_by], 0), limited_by)


def packing_line(shape: TrialShape, cluster: ClusterResources, cap: int | None = None) -> str:
    p = packing(shape, cluster, cap)
    head = f"packing ({shape.workers}-worker trials): "
    if not shape.total_gpus:
        where = "on CPU"
    elif p.per_gpu:
        where = f"{p.per_gpu} trials share each GPU ({shape.total_gpus:g} GPU each)"
    else:
        where = f"each trial holds {shape.total_gpus:g} GPUs"
    line = f"{head}{where}; {p.concurrent} at once (limited by {p.limited_by})"
    if shape.total_gpus and cluster.gpus:
        slots = per_device(shape, cluster, p)
        line += "; " + ", ".join(f"GPU {g}: {n:g}" for g, n in enumerate(slots) if n) if slots else ""
    return line


def per_device(shape: TrialShape, cluster: ClusterResources, p: Packing) -> list[float]:
    """Trials (or, for multi-GPU trials, trial shares) on each GPU when ``p.concurrent`` trials run,
    filling GPUs in order as Ray's packing does."""
    gpus = math.floor(cluster.gpus + 1e-9)
    counts = [0.0] * gpus
    if p.per_gpu:
        for t in range(p.concurrent):
            counts[min(t // p.per_gpu, gpus - 1)] += 1
    else:
        for t in range(p.concurrent):
            for g in range(int(t * shape.total_gpus), min(int((t + 1) * shape.total_gpus), gpus)):
                counts[g] += 1
    return counts


def trial_shape(spec: SweepSpec, workers: int, driver_slots: float = LOCAL_DRIVER_SLOTS) -> TrialShape:
    r = spec.resources
    if workers == 1:
        return TrialShape(1, r.cpus_per_worker, r.gpus_per_worker, 0.0, 0.0)
    use_slot = r.driver_cpus == 0 and driver_slots >= 1
    driver_cpus = r.driver_cpus or (0.0 if use_slot else FALLBACK_DRIVER_CPUS)
    return TrialShape(workers, driver_cpus, 0.0, workers * r.cpus_per_worker, workers * r.gpus_per_worker,
                      driver_slot=use_slot)


def trial_resources(spec: SweepSpec, workers: int, driver_slots: float = LOCAL_DRIVER_SLOTS) -> dict[str, float]:
    shape = trial_shape(spec, workers, driver_slots)
    res = {"CPU": shape.trial_cpus}
    if shape.trial_gpus:
        res["GPU"] = shape.trial_gpus
    if shape.driver_slot:
        res[DRIVER_RESOURCE] = 1
    return res


def plan_resources(spec: SweepSpec, cluster: ClusterResources, *, strict: bool = True) -> ResourcePlan:
    """Check feasibility and pick a safe concurrency. ``strict`` (a fixed-size cluster, such as the
    local machine) turns a trial that can never fit into an error; an autoscaling cluster only
    gets a warning in the plan."""
    shapes = [trial_shape(spec, w, cluster.driver_slots) for w in spec.workers_values()]
    issues = []
    for s in shapes:
        if s.total_gpus > 0 and cluster.gpus == 0:
            why = " (nor can its autoscaler add any)" if cluster.max_gpus == 0 else ""
            issues.append(SpecIssue("resources.gpus_per_worker", f"GPUs requested but the {cluster.source} has "
                                    f"none{why}; set it to 0 to train on CPU", spec.resources.gpus_per_worker))
        elif s.total_gpus > cluster.gpus:
            issues.append(SpecIssue("resources", f"a {s.workers}-worker trial needs {s.total_gpus:g} GPUs but the "
                                    f"{cluster.source} has {cluster.gpus:g}"))
        if s.total_cpus > cluster.cpus + 1e-9:
            issues.append(SpecIssue("resources", f"a {s.workers}-worker trial needs {s.total_cpus:g} CPUs "
                                    f"({s.workers} x cpus_per_worker {spec.resources.cpus_per_worker:g}"
                                    f"{' + driver' if s.workers > 1 else ''}) but the {cluster.source} has "
                                    f"{cluster.cpus:g}; lower workers or cpus_per_worker"))
    if any(s.workers > 1 and 0 < s.worker_gpus / s.workers < 1 for s in shapes):
        issues.append(SpecIssue("resources.gpus_per_worker", "DDP workers cannot share a GPU (NCCL needs one "
                                "device per rank); use a whole number, or workers: 1 to pack small trials",
                                spec.resources.gpus_per_worker))
    never = [i for i in issues if i.key == "resources.gpus_per_worker" and cluster.max_gpus == 0]
    if issues and (strict or never):
        raise SpecError(spec.source_file, _unique(never or issues))
    warnings = [f"{i.key}: {i.message}" for i in _unique(issues)]

    if spec.resources.max_concurrent_trials:
        return ResourcePlan(shapes, cluster, spec.resources.max_concurrent_trials, "set in resources", warnings)
    if all(s.workers == 1 for s in shapes):
        return ResourcePlan(shapes, cluster, None, "single-worker trials are fully accounted by Tune", warnings)
    biggest_cpu = max(s.total_cpus for s in shapes)
    limit = math.floor(cluster.cpus / biggest_cpu) if biggest_cpu else 10**6
    biggest_gpu = max(s.total_gpus for s in shapes)
    if biggest_gpu:
        limit = min(limit, math.floor(cluster.gpus / biggest_gpu))
    if any(s.driver_slot for s in shapes):
        limit = min(limit, math.floor(cluster.driver_slots))
    limit = max(1, limit)
    return ResourcePlan(shapes, cluster, limit, "multi-worker trials reserve worker groups that Tune cannot see",
                        warnings)


def _unique(issues: list[SpecIssue]) -> list[SpecIssue]:
    seen, out = set(), []
    for i in issues:
        if (i.key, i.message) not in seen:
            seen.add((i.key, i.message))
            out.append(i)
    return out
