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
    nodes: int = 1
    # Whether the cluster can grow (and how far), from Ray's GCS; None: not looked at (the local
    # machine, hand-made plans), which keeps the old behaviour: a warning only.
    autoscaling: "Autoscaling | None" = None

    @classmethod
    def local(cls) -> "ClusterResources":
        return cls(cpus=float(os.cpu_count() or 1), gpus=float(_local_gpu_count()), source="local machine")

    @classmethod
    def from_ray(cls, address: str) -> "ClusterResources":
        import ray

        total = ray.cluster_resources()
        scaling = detect_autoscaling()
        max_gpus = scaling.max_resources.get("GPU", 0.0) if scaling.max_resources is not None else None
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        return cls(cpus=float(total.get("CPU", 0)), gpus=float(total.get("GPU", 0)), source=f"cluster at {address}",
                   driver_slots=float(total.get(DRIVER_RESOURCE, 0)), max_gpus=max_gpus, nodes=nodes,
                   autoscaling=scaling)


@dataclass
class Autoscaling:
    """What Ray's GCS says about the cluster's autoscaler.

    * ``max_resources``: the cluster config an autoscaler reports to the GCS (what Ray Train
      checks before a worker group starts); Ray 2.60's open-source autoscalers do not report it,
      so it is usually None: the autoscaler's maximum is then unknown.
    * ``present``: an autoscaler with a real node provider. The v1 monitor, which runs on every
      head node, publishes its status in the GCS; without an autoscaling config (a cluster made by
      hand with ``ray start``) it mirrors the nodes as read-only types ``node_<node id>``, so node
      types named otherwise mean ``ray up``'s autoscaler. The v2 autoscaler (KubeRay) reports a
      state version above 0. A cluster env file from this repository's cluster.yaml
      (``W2S_MULTI_HOST=1``) counts too.
    """

    present: bool
    max_resources: dict[str, float] | None = None
    how: str = ""


def detect_autoscaling() -> Autoscaling:
    from orchestrator.run.cluster import declared_multi_host

    limits = _autoscaler_limits()
    if limits is not None:
        return Autoscaling(True, limits, "the cluster config its autoscaler reported")
    if _v1_autoscaler_types():
        return Autoscaling(True, None, "ray up's autoscaler")
    if _v2_autoscaler_running():
        return Autoscaling(True, None, "the v2 autoscaler")
    if declared_multi_host():
        return Autoscaling(True, None, "W2S_MULTI_HOST=1 in the cluster env file")
    return Autoscaling(False, None, "no autoscaler in Ray's GCS")


def _autoscaler_limits() -> dict[str, float] | None:
    try:
        from ray._private.state import state  # the same private call Ray Train makes before a worker group starts

        limits = state.get_max_resources_from_cluster_config()
    except Exception:  # noqa: BLE001 - an older or unusual cluster: unknown
        return None
    return None if limits is None else {k: float(v) for k, v in limits.items()}


def _v1_autoscaler_types() -> list[str]:
    """Node types of the v1 autoscaler that are not the read-only mirror of hand-started nodes."""
    import json

    try:
        from ray._private import ray_constants
        from ray.experimental.internal_kv import _internal_kv_get

        raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        report = (json.loads(raw) if raw else {}).get("autoscaler_report") or {}
    except Exception:  # noqa: BLE001 - no status: no autoscaler we can see
        return []
    types = set(report.get("active_nodes") or {}) | set(report.get("pending_launches") or {}) \
        | set((report.get("node_type_mapping") or {}).values())
    readonly = {f"node_{node_id}" for node_id in (report.get("node_type_mapping") or {})}
    return sorted(t for t in types if t not in readonly and not _readonly_type(t))


def _readonly_type(name: str) -> bool:
    hexpart = name.removeprefix("node_")
    return name.startswith("node_") and len(hexpart) >= 32 and all(c in "0123456789abcdef" for c in hexpart)


def _v2_autoscaler_running() -> bool:
    try:
        import ray
        from ray.autoscaler.v2.sdk import get_cluster_status

        status = get_cluster_status(ray.get_runtime_context().gcs_address)
        return int(status.stats.autoscaler_version or 0) > 0
    except Exception:  # noqa: BLE001
        return False


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
    # Trials the cluster can only run once its autoscaler adds nodes: what the biggest needs in all
    # ({"CPU": 2.01}), why (one line), and how long the sweep waits for it (resources.autoscale_wait_s).
    autoscale_needs: dict[str, float] = field(default_factory=dict)
    autoscale_reason: str = ""
    autoscale_wait_s: float = 0.0
    notes: list[str] = field(default_factory=list)  # how the plan was chosen (resources: auto)

    def lines(self) -> list[str]:
        out = [f"cluster: {self.cluster.cpus:g} CPU, {self.cluster.gpus:g} GPU ({self.cluster.source})"]
        out += self.notes
        if self.cluster.autoscaling is not None:
            a = self.cluster.autoscaling
            most = ("" if a.max_resources is None else ", at most " + ", ".join(
                f"{a.max_resources.get(k, 0):g} {k}" for k in ("CPU", "GPU")))
            out.append(f"autoscaler: {'yes (' + a.how + most + ')' if a.present else 'none'}")
        if self.autoscale_needs:
            out.append(f"waits for the autoscaler: {self.autoscale_reason}; gives up after "
                       f"{self.autoscale_wait_s:g}s (resources.autoscale_wait_s)")
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


AUTO_MAX_CPUS = 8  # data and augmentation live on the GPU: a worker needs few CPUs beyond its loader thread


def resolve_auto(spec: SweepSpec, cluster: ClusterResources) -> None:
    """``resources: auto``: one GPU per worker, and an equal share of the CPUs (at most
    :data:`AUTO_MAX_CPUS`), where ``cluster`` has GPUs; one CPU per worker where it has none. Set
    on the spec once, from the first cluster it is planned against (the sweep's)."""
    r = spec.resources
    if not r.auto or "gpus_per_worker" in r.model_fields_set:
        return
    # DDP ranks cannot share a GPU: GPUs only when the biggest trial gets one per worker
    if cluster.gpus >= 1 and cluster.gpus >= max(spec.workers_values()):
        r.gpus_per_worker = 1.0
        r.cpus_per_worker = float(max(1, min(AUTO_MAX_CPUS, int(cluster.cpus // cluster.gpus) - 1)))
    else:
        r.gpus_per_worker, r.cpus_per_worker = 0.0, 1.0
    # marked as set so a second plan (reference runs, another cluster view) keeps the first choice
    r.model_fields_set.update({"gpus_per_worker", "cpus_per_worker"})


def plan_resources(spec: SweepSpec, cluster: ClusterResources, *, strict: bool = True) -> ResourcePlan:
    plan = _plan_resources(spec, cluster, strict=strict)
    if spec.resources.auto:
        r = spec.resources
        most = max(spec.workers_values())
        if r.gpus_per_worker:
            where = f"the {cluster.source} has {cluster.gpus:g} GPU"
        elif cluster.gpus >= 1:
            where = (f"the {cluster.source} has {cluster.gpus:g} GPU but a {most}-worker trial needs one per worker: "
                     f"training on CPU (set resources.gpus_per_worker and workers yourself to choose)")
        else:
            where = f"the {cluster.source} has no GPU: training on CPU"
        plan.notes.append(f"resources: auto -> gpus_per_worker {r.gpus_per_worker:g}, cpus_per_worker "
                          f"{r.cpus_per_worker:g} ({where})")
    if 0 < spec.resources.gpus_per_worker < 1:
        # Measured, not assumed: packing looked like free throughput but cost it (issue 18).
        plan.notes.append(f"resources.gpus_per_worker {spec.resources.gpus_per_worker:g}: trials share a GPU; on an "
                          "H100, 4 packed resnet8x4 trials ran 0.37-0.39x as fast as one at a time "
                          "(bench/results/sweep_gpu.jsonl): prefer params.vectorize (distill) or compile: reduce-overhead")
    return plan


def _plan_resources(spec: SweepSpec, cluster: ClusterResources, *, strict: bool = True) -> ResourcePlan:
    """Check feasibility and pick a safe concurrency. ``strict`` (a fixed-size cluster, such as the
    local machine) turns a trial that can never fit into an error. On a cluster (``strict``
    False) :func:`check_capacity` refuses a trial the cluster cannot hold even at its largest
    (no autoscaler, or beyond the autoscaler's known maximum), and a trial that needs the
    autoscaler to add nodes is marked in the plan (``autoscale_needs``) for the watchdog."""
    resolve_auto(spec, cluster)
    shapes = [trial_shape(spec, w, cluster.driver_slots) for w in spec.workers_values()]
    waiting = {}
    if not strict and cluster.autoscaling is not None:
        # The reference runs (control.workers) are checked with the trials: before any trial starts.
        extra = [spec.control.workers] if spec.control.enabled and spec.control.workers else []
        waiting = check_capacity(spec, shapes + [trial_shape(spec, w, cluster.driver_slots) for w in extra
                                                 if w not in spec.workers_values()], cluster)
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
    r = spec.resources
    if spec.sharded_prepare and r.workers > 1:
        # a sharded prepare step's workers (one worker's resources each) must all fit at once
        for unit, each, have in (("GPU", r.gpus_per_worker, cluster.gpus), ("CPU", r.cpus_per_worker, cluster.cpus)):
            if r.workers * each > have + 1e-9:
                issues.append(SpecIssue("resources.workers", f"the {spec.sharded_prepare} sharded {r.workers} ways "
                                        f"needs {r.workers * each:g} {unit} but the {cluster.source} has {have:g}; "
                                        "lower resources.workers", r.workers))
    if any(s.workers > 1 and 0 < s.worker_gpus / s.workers < 1 for s in shapes):
        issues.append(SpecIssue("resources.gpus_per_worker", "DDP workers cannot share a GPU (NCCL needs one "
                                "device per rank); use a whole number, or workers: 1 to pack small trials",
                                spec.resources.gpus_per_worker))
    never = [i for i in issues if i.key == "resources.gpus_per_worker" and cluster.max_gpus == 0]
    if issues and (strict or never):
        raise SpecError(spec.source_file, _unique(never or issues))
    warnings = [f"{i.key}: {i.message}" for i in _unique(issues)]
    plan = _concurrency(spec, shapes, cluster, warnings)
    if waiting:
        plan.autoscale_needs = {unit: need for unit, (need, _) in waiting.items()}
        plan.autoscale_reason = "; ".join(why for _, why in waiting.values())
        plan.autoscale_wait_s = spec.resources.autoscale_wait_s
    return plan


def need_text(spec: SweepSpec, shape: TrialShape, unit: str) -> str:
    """``2 workers x 1 CPU + 0.01 CPU for its driver = 2.01 CPU``: what one trial of this shape holds."""
    r = spec.resources
    plural = "s" if shape.workers > 1 else ""
    if unit == "GPU":
        return f"{shape.workers} worker{plural} x {r.gpus_per_worker:g} GPU = {shape.total_gpus:g} GPU"
    if shape.workers == 1:
        return f"1 worker x {r.cpus_per_worker:g} CPU = {shape.total_cpus:g} CPU"
    driver = (f" + {shape.trial_cpus:g} CPU for its driver" if not shape.driver_slot
              else f" (its driver holds 1 {DRIVER_RESOURCE})")
    return f"{shape.workers} workers x {r.cpus_per_worker:g} CPU{driver} = {shape.total_cpus:g} CPU"


def check_capacity(spec: SweepSpec, shapes: list[TrialShape], cluster: ClusterResources) -> dict[str, tuple[float, str]]:
    """On a cluster (``cluster.autoscaling`` known): a trial bigger than the cluster can ever be is
    refused (a ``UserError``, one line); one bigger than the cluster is now, but within what its
    autoscaler may add, waits for it. Returns, per resource, what the biggest such trial needs and
    a line that says so (empty when every trial fits now)."""
    from orchestrator.errors import UserError

    scaling = cluster.autoscaling
    assert scaling is not None
    have = {"CPU": cluster.cpus, "GPU": cluster.gpus}
    waiting: dict[str, tuple[float, str]] = {}
    for s in sorted(shapes, key=lambda s: (s.total_gpus, s.total_cpus), reverse=True):
        for unit, need in (("GPU", s.total_gpus), ("CPU", s.total_cpus)):
            if need <= have[unit] + 1e-9:
                continue
            nodes = f"{cluster.nodes} node{'s' if cluster.nodes != 1 else ''}"
            head = (f"resources: a {s.workers}-worker trial needs {need_text(spec, s, unit)}; the {cluster.source} "
                    f"has {have[unit]:g} {unit} in all ({nodes})")
            limit = None if scaling.max_resources is None else scaling.max_resources.get(unit, 0.0)
            per_worker = "cpus_per_worker" if unit == "CPU" else "gpus_per_worker"
            if not scaling.present:
                raise UserError(f"{head} and no autoscaler: lower resources.workers / {per_worker}, or add nodes")
            if limit is not None and need > limit + 1e-9:
                raise UserError(f"{head} and its autoscaler can grow it to {limit:g} {unit} at most: lower "
                                f"resources.workers / {per_worker}, or raise the autoscaler's max_workers")
            if unit not in waiting:
                most = f"at most {limit:g}" if limit is not None else "its maximum unknown"
                waiting[unit] = (need, f"a {s.workers}-worker trial needs {need:g} {unit}, the cluster has "
                                       f"{have[unit]:g} now ({scaling.how}; {most})")
    return waiting


def _concurrency(spec: SweepSpec, shapes: list[TrialShape], cluster: ClusterResources,
                 warnings: list[str]) -> ResourcePlan:
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
