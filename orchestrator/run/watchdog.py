"""The sweep watchdog: a sweep that stops making progress says so, with the likely cause.

The failure it exists for (see ``/work/shared/reference/ray-mlflow.md`` §0.6 and §6 #1): Tune
thinks a trial is running, but the trial's Ray Train worker group waits forever for a placement
group, because placement groups leaked by earlier trials (or created outside the sweep) hold the
CPUs/GPUs. Tune only sees its own trial actors, so it waits silently; Train retries the worker
group start every minute, forever.

:class:`Heartbeat` (a Tune callback, part of every sweep's callbacks) tells the active
:class:`Watchdog` about every trial start, result and end, and about the trials' states on every
step of Tune's loop. A driver thread checks: no progress for ``watchdog.timeout_s`` while trials
are running or pending -> it inspects Ray's placement groups and the actors that use them and
prints what is stuck, the likely cause and what to do, again every ``timeout_s`` while it lasts.
With ``watchdog.abort_after_s`` it then stops the sweep the way Ctrl-C does (Tune saves its
state, so ``--resume NAME`` continues it once the cause is fixed), and the command exits with
code 3.
"""
from __future__ import annotations

import _thread
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from ray.tune import Callback

from orchestrator.errors import UserError

_ACTIVE: "Watchdog | None" = None


class SweepStalled(UserError):
    """The watchdog stopped a sweep that made no progress."""

    exit_code = 3


@dataclass
class PlacementGroupInfo:
    pg_id: str
    name: str
    state: str  # CREATED, PENDING, RESCHEDULING, REMOVED
    demand: dict[str, float]

    def describe(self) -> str:
        label = f"{self.name!r} " if self.name else ""
        return f"{label}{self.pg_id[:12]} {fmt_resources(self.demand)}"


@dataclass
class ClusterView:
    """What the diagnosis looks at; built from Ray by :func:`inspect_ray`, or by hand in tests."""

    placement_groups: list[PlacementGroupInfo]
    used_pg_ids: set[str] | None  # placement groups with a live actor; None when it could not be read
    total: dict[str, float]
    available: dict[str, float]
    error: str | None = None


@dataclass
class Diagnosis:
    summary: list[str]
    cause: str
    advice: str
    details: list[str] = field(default_factory=list)

    def render(self) -> str:
        return "\n".join([*self.summary, *[f"  {d}" for d in self.details], f"  likely cause: {self.cause}",
                          f"  what to do: {self.advice}"])


def fmt_resources(res: dict[str, float]) -> str:
    """Logical resources as Ray names them, without the per-placement-group and per-node entries
    Ray derives from them (``CPU_group_<id>``, ``node:<ip>``); memory in GiB."""
    parts = []
    for key, value in sorted(res.items()):
        if not value or key.startswith("node:") or "_group_" in key:
            continue
        parts.append(f"{key}: {value / 2**30:.1f} GiB" if "memory" in key else f"{key}: {value:g}")
    return "{" + ", ".join(parts) + "}"


def _sum(dicts) -> dict[str, float]:
    out: dict[str, float] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0.0) + float(v)
    return out


def inspect_ray() -> ClusterView:
    import ray
    from ray.util import placement_group_table

    pgs = []
    for pg_id, info in placement_group_table().items():
        demand = _sum((info.get("bundles") or {}).values())
        pgs.append(PlacementGroupInfo(pg_id, info.get("name") or "", info.get("state", "?"), demand))
    used: set[str] | None
    error = None
    try:
        from ray.util.state import list_actors

        actors = list_actors(address=ray.get_runtime_context().gcs_address, detail=True, limit=10_000,
                             filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)
        used = {a.placement_group_id for a in actors if a.placement_group_id}
    except Exception as exc:  # noqa: BLE001 - the State API needs ray[default]'s dashboard
        used = None
        error = f"the Ray State API is unavailable ({type(exc).__name__}); is ray[default] installed?"
    return ClusterView(pgs, used, dict(ray.cluster_resources()), dict(ray.available_resources()), error)


def diagnose(view: ClusterView, running: list[str], pending: list[str], stalled_for: float, timeout_s: float,
             resume_hint: str) -> Diagnosis:
    """Name what is stuck and the likely cause, from a :class:`ClusterView`."""
    summary = [f"watchdog: no trial has made progress for {stalled_for:.0f}s (watchdog.timeout_s {timeout_s:g}) "
               f"while {len(running)} trial(s) run{' (' + ', '.join(running[:6]) + ')' if running else ''} "
               f"and {len(pending)} wait to start."]
    waiting = [p for p in view.placement_groups if p.state in ("PENDING", "RESCHEDULING")]
    created = [p for p in view.placement_groups if p.state == "CREATED"]
    idle = [p for p in created if view.used_pg_ids is not None and p.pg_id not in view.used_pg_ids]
    details = [f"cluster: {fmt_resources(view.total)} in all, {fmt_resources(view.available)} free"]
    if waiting:
        details.append("waiting placement groups: " + "; ".join(p.describe() for p in waiting[:5]))
    if idle:
        details.append("placement groups holding resources with no live actor in them: "
                       + "; ".join(p.describe() for p in idle[:5]))
    if view.error:
        details.append(view.error)

    lacking = []
    for p in waiting:
        short = {k: v for k, v in p.demand.items() if v > view.total.get(k, 0.0) + 1e-9}
        if short:
            lacking.append((p, short))
    if lacking:
        p, short = lacking[0]
        have = {k: view.total.get(k, 0.0) for k in short}
        cause = (f"a placement group needs {fmt_resources(short)} but the whole cluster has {fmt_resources(have)}: "
                 "resources the cluster lacks (on an autoscaling cluster, nodes that never came)")
        advice = ("check `ray status`; lower resources.workers, cpus_per_worker or gpus_per_worker, or add nodes "
                  f"with those resources; then {resume_hint}")
    elif waiting and idle:
        held = _sum(p.demand for p in idle)
        cause = (f"leaked placement groups: {len(idle)} placement group(s) hold {fmt_resources(held)} that no live "
                 "actor uses, and a worker group waits for those resources. Ray Train leaks the worker groups of "
                 "trials stopped early when its cleaner cannot reach the State API (ray[default] missing, or "
                 "several Ray instances on one machine with no RAY_ADDRESS); placement groups created by other "
                 "scripts on the same Ray hold resources the same way")
        advice = ("remove them (ray.util.remove_placement_group) or restart Ray (`ray stop`, or let this local "
                  f"Ray end with the sweep), make sure ray[default] is installed; then {resume_hint}")
    elif waiting:
        cause = ("a worker group waits for resources that running trials hold: DDP worker groups are invisible "
                 "to Tune's accounting, so trials started while it waited can keep it out")
        advice = f"set resources.max_concurrent_trials lower (--dry-run prints the plan); then {resume_hint}"
    elif running:
        cause = ("the running trials report nothing although their resources are in place: an epoch may take "
                 "longer than watchdog.timeout_s, or a training process hangs (a collective waiting on a dead "
                 "peer, a deadlocked data loader)")
        advice = ("if epochs are this slow, raise watchdog.timeout_s; otherwise see where it hangs with "
                  f"`ray stack` or `py-spy dump --pid PID` on the trial's node, then stop and {resume_hint}")
    else:
        cause = "Tune cannot start the pending trials: the resources one trial asks for are never free"
        advice = f"compare the trial shape in --dry-run with `ray status`; then {resume_hint}"
    return Diagnosis(summary, cause, advice, details)


@dataclass
class Watchdog:
    """Run as a context manager around ``Tuner.fit()``."""

    timeout_s: float
    abort_after_s: float | None
    resume_hint: str
    say: Callable[[str], None] = print
    inspect: Callable[[], ClusterView] = inspect_ray
    clock: Callable[[], float] = time.monotonic
    # What the watchdog has seen so far (set by the Heartbeat callback and the watch thread).
    last_progress: float = field(init=False)
    last_alarm: float | None = field(init=False, default=None)
    running: list[str] = field(init=False, default_factory=list)
    pending: list[str] = field(init=False, default_factory=list)
    observed: bool = field(init=False, default=False)
    aborted: bool = field(init=False, default=False)
    diagnosis: Diagnosis | None = field(init=False, default=None)
    # A trial bigger than the cluster is now waits for its autoscaler (ResourcePlan.autoscale_needs):
    # the watchdog says so, and stops the sweep (resumable) after autoscale_wait_s without the nodes.
    autoscale_needs: dict[str, float] = field(default_factory=dict)
    autoscale_reason: str = ""
    autoscale_wait_s: float = 0.0
    cluster_total: Callable[[], dict[str, float]] = field(default=lambda: _cluster_total())
    waiting_since: float | None = field(init=False, default=None)
    gave_up: str | None = field(init=False, default=None)
    _stop: threading.Event = field(init=False, default_factory=threading.Event)
    _thread: threading.Thread | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.last_progress = self.clock()

    # -- events from Heartbeat ---------------------------------------------------------------
    def beat(self) -> None:
        self.last_progress = self.clock()
        self.last_alarm = None

    def observe(self, trials) -> None:
        self.observed = True
        self.running = [t.trial_id for t in trials if t.status == "RUNNING"]
        self.pending = [t.trial_id for t in trials if t.status in ("PENDING", "PAUSED")]

    # -- waiting for the autoscaler ------------------------------------------------------------
    def check_capacity(self) -> None:
        if not self.autoscale_needs or self.aborted:
            return
        try:
            total = self.cluster_total()
        except Exception:  # noqa: BLE001 - cannot tell; keep waiting
            return
        now = self.clock()
        if all(total.get(k, 0.0) + 1e-9 >= v for k, v in self.autoscale_needs.items()):
            if self.waiting_since is not None:
                self.say(f"autoscaler: the cluster now has {fmt_resources(total)}: the waiting trials fit")
            self.autoscale_needs, self.waiting_since = {}, None
            return
        if self.waiting_since is None:
            self.waiting_since = now
            self.say(f"waiting for the autoscaler: {self.autoscale_reason}; giving up after "
                     f"{self.autoscale_wait_s:g}s (resources.autoscale_wait_s)")
        waited = now - self.waiting_since
        if waited >= self.autoscale_wait_s:
            self.aborted = True
            self.gave_up = (f"the cluster did not grow to fit the trials within resources.autoscale_wait_s "
                            f"{self.autoscale_wait_s:g}s ({self.autoscale_reason}; it has {fmt_resources(total)})")
            self.say(f"watchdog: stopping the sweep: {self.gave_up}; its state is saved")
            _interrupt_tune()

    def waiting_note(self) -> str | None:
        """For the progress status line, while trials wait for the autoscaler."""
        if self.waiting_since is None or self.aborted:
            return None
        left = max(0.0, self.autoscale_wait_s - (self.clock() - self.waiting_since))
        return f"waiting for the autoscaler ({self.autoscale_reason}), gives up in {left:.0f}s"

    # -- the check -------------------------------------------------------------------------
    def check(self) -> None:
        self.check_capacity()
        now = self.clock()
        stalled_for = now - self.last_progress
        if self.aborted or not self.timeout_s or not self.observed or not (self.running or self.pending) \
                or stalled_for < self.timeout_s:
            return
        if self.last_alarm is None or now - self.last_alarm >= self.timeout_s:
            self.last_alarm = now
            try:
                view = self.inspect()
            except Exception as exc:  # noqa: BLE001 - a diagnosis must not take the sweep down
                view = ClusterView([], None, {}, {}, error=f"could not inspect Ray ({type(exc).__name__}: {exc})")
            self.diagnosis = diagnose(view, self.running, self.pending, stalled_for, self.timeout_s, self.resume_hint)
            self.say(self.diagnosis.render())
        if self.abort_after_s and stalled_for >= self.abort_after_s and not self.aborted:
            self.aborted = True
            self.say(f"watchdog: stopping the sweep after {stalled_for:.0f}s without progress "
                     f"(watchdog.abort_after_s {self.abort_after_s:g}); its state is saved")
            _interrupt_tune()

    def _loop(self) -> None:
        poll = max(0.5, min(5.0, (self.timeout_s or 60) / 3, (self.autoscale_wait_s or 60) / 3))
        while not self._stop.wait(poll):
            self.check()

    def __enter__(self) -> "Watchdog":
        global _ACTIVE
        _ACTIVE = self
        self.last_progress = self.clock()
        if self.timeout_s or self.autoscale_needs:
            self._thread = threading.Thread(target=self._loop, name="w2s-watchdog", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        global _ACTIVE
        self._stop.set()
        if _ACTIVE is self:
            _ACTIVE = None

    def raise_if_aborted(self) -> None:
        if self.aborted and self.gave_up:
            raise SweepStalled(f"the watchdog stopped the sweep: {self.gave_up}. What to do: check `ray status` "
                               "and the autoscaler's logs, or lower resources.workers / cpus_per_worker / "
                               f"gpus_per_worker; then {self.resume_hint}")
        if self.aborted:
            cause = self.diagnosis.cause if self.diagnosis else "no progress"
            raise SweepStalled(f"the watchdog stopped the sweep: {cause}. "
                               + (f"What to do: {self.diagnosis.advice}" if self.diagnosis else self.resume_hint))


def _interrupt_tune() -> None:
    """Stop ``Tuner.fit()`` as Ctrl-C does: Tune's handler saves the experiment state and returns.
    Tune installs it for SIGUSR1 too, which leaves the user's Ctrl-C alone."""
    handler = signal.getsignal(signal.SIGUSR1)
    if callable(handler):
        os.kill(os.getpid(), signal.SIGUSR1)
    else:
        _thread.interrupt_main()


class Heartbeat(Callback):
    """Forwards Tune's events to the active :class:`Watchdog`; stateless, so it survives being
    pickled with the experiment and restored by ``--resume``."""

    @staticmethod
    def _beat() -> None:
        if _ACTIVE is not None:
            _ACTIVE.beat()

    def on_trial_start(self, iteration, trials, trial, **info):
        self._beat()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._beat()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._beat()

    def on_trial_error(self, iteration, trials, trial, **info):
        self._beat()

    def on_step_end(self, iteration, trials, **info):
        if _ACTIVE is not None:
            _ACTIVE.observe(trials)


def _cluster_total() -> dict[str, float]:
    import ray

    return dict(ray.cluster_resources())


def waiting_note() -> str | None:
    """The active watchdog's note while trials wait for the autoscaler (for the status line)."""
    return _ACTIVE.waiting_note() if _ACTIVE is not None else None


def watchdog_for(spec, name: str, say: Callable[[str], None] = print, plan=None) -> Watchdog:
    w = spec.watchdog
    dog = Watchdog(w.timeout_s, w.abort_after_s, f"resume with `run_sweep.py --resume {name}`", say=say)
    if plan is not None and plan.autoscale_needs:
        dog.autoscale_needs = dict(plan.autoscale_needs)
        dog.autoscale_reason, dog.autoscale_wait_s = plan.autoscale_reason, plan.autoscale_wait_s
    return dog
