"""Which members of a fused trial a scheduler stopped: a mailbox between the sweep's scheduler
(in the Tune driver) and the trial.

Tune's schedulers answer CONTINUE or STOP for a whole trial; a fused trial (``vectorize``) holds
K members that ASHA judges one by one (:mod:`orchestrator.run.member_scheduler`). The scheduler
posts the members it stopped to a named actor, one per sweep, and waits for the post; the trial
reads it right after each report. A Tune function trainable's report returns only once the driver
has processed that result (and the scheduler decided on it), so the trial sees every decision on
the epoch it was made for.
"""
from __future__ import annotations

from typing import Callable

ACTOR_PREFIX = "w2s-member-stops-"
# Trials (and their Train workers) run in namespaces of their own: the mailbox is named in a fixed one.
NAMESPACE = "w2s-sweep"


def actor_name(sweep: str) -> str:
    return ACTOR_PREFIX + sweep


def _actor_class():
    import ray

    @ray.remote(num_cpus=0, max_restarts=-1)
    class MemberStops:
        """trial id -> the member indices stopped so far."""

        def __init__(self) -> None:
            self.stops: dict[str, set[int]] = {}

        def stop(self, trial_id: str, members: list[int]) -> list[int]:
            self.stops.setdefault(trial_id, set()).update(members)
            return sorted(self.stops[trial_id])

        def get(self, trial_id: str) -> list[int]:
            return sorted(self.stops.get(trial_id, ()))

    return MemberStops


# The driver's handles: a named actor that is not detached lives while a handle to it does.
_HANDLES: dict[str, object] = {}


def post_stops(sweep: str, trial_id: str, members: list[int]) -> None:
    """Record (and wait until recorded) that ``members`` of ``trial_id`` stop. Driver side."""
    import ray

    actor = _HANDLES.get(sweep)
    if actor is None:
        actor = _actor_class().options(name=actor_name(sweep), namespace=NAMESPACE, get_if_exists=True).remote()
        _HANDLES[sweep] = actor
    ray.get(actor.stop.remote(trial_id, list(members)))


def stops_reader(sweep: str) -> Callable[[], set[int]]:
    """For a trial: a callable giving the members of this trial stopped so far (empty outside a
    Tune trial, or before any was stopped)."""
    def read() -> set[int]:
        try:
            import ray

            if not ray.is_initialized():
                return set()
            trial_id = _trial_id()
            actor = ray.get_actor(actor_name(sweep), namespace=NAMESPACE)
        except (ValueError, RuntimeError, AttributeError):
            return set()  # no mailbox yet: nothing stopped
        if not trial_id:
            return set()
        return set(ray.get(actor.get.remote(trial_id)))

    return read


def _trial_id() -> str | None:
    """The Tune trial this process serves: a Tune function trainable's own, or, on a rank of the
    trial's Ray Train worker group, the id in the Train run's name (``train-<trial id>``, see
    trainables/runtime/runner.py)."""
    try:
        import ray.train

        name = ray.train.get_context().get_experiment_name()
        if name and name.startswith("train-"):
            return name.removeprefix("train-")
    except Exception:  # noqa: BLE001 - not inside a Train worker
        pass
    from ray import tune

    return tune.get_context().get_trial_id()
