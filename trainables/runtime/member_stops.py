"""Which members of a fused trial a scheduler stopped: a mailbox between the sweep's scheduler
(in the Tune driver) and the trial.

Tune's schedulers answer CONTINUE or STOP for a whole trial; a fused trial (``vectorize``) holds
K members that ASHA judges one by one (:mod:`orchestrator.run.member_scheduler`). The scheduler
registers every fused trial when Tune adds it, and after each of its results posts a decision
(the result's epoch and the members stopped so far) to a named actor, one per sweep. The trial
reads the decision for the epoch it just reported before it starts the next one.

Why the trial waits for that decision rather than reading whatever the mailbox holds: a Tune
function trainable's report returns only once the driver has processed the result, so a
single-process trial finds the decision already there. A DDP trial reports through Ray Train,
whose ranks go on as soon as the Train controller has the result; the controller relays it to the
Tune trial and the driver decides later. Without the wait, a DDP trial applied every stop one epoch
late. The wait is bounded (:data:`WAIT_S`): a decision that never comes (the driver busy or gone)
costs that long once per epoch and the trial goes on with the stops it knows, never hangs.
Trials no scheduler registered (FIFO, no ASHA) never wait.
"""
from __future__ import annotations

from typing import Callable

from trainables.runtime.session import current_trial_id

ACTOR_PREFIX = "w2s-member-stops-"
# Trials (and their Train workers) run in namespaces of their own: the mailbox is named in a fixed one.
NAMESPACE = "w2s-sweep"
# The longest a trial waits for the decision on an epoch it reported; the relay from a DDP rank to
# the driver takes about a second (Train's controller polls its workers), the driver's processing less.
WAIT_S = 60.0


def actor_name(sweep: str) -> str:
    return ACTOR_PREFIX + sweep


def _actor_class():
    import ray

    @ray.remote(num_cpus=0, max_restarts=-1)
    class MemberStops:
        """Per trial id: whether a scheduler judges its members, the members stopped so far and
        the latest epoch decided. Async, so a trial's ``wait`` blocks no post."""

        def __init__(self) -> None:
            import asyncio

            self.stops: dict[str, set[int]] = {}
            self.decided: dict[str, int] = {}
            self.changed = asyncio.Condition()

        async def register(self, trial_id: str) -> None:
            self.stops.setdefault(trial_id, set())
            self.decided.setdefault(trial_id, 0)

        async def decide(self, trial_id: str, epoch: int, members: list[int]) -> list[int]:
            async with self.changed:
                self.stops.setdefault(trial_id, set()).update(members)
                self.decided[trial_id] = max(self.decided.get(trial_id, 0), int(epoch))
                self.changed.notify_all()
            return sorted(self.stops[trial_id])

        async def wait(self, trial_id: str, epoch: int | None, timeout: float) -> list[int]:
            """The members of ``trial_id`` stopped so far, once the decision on ``epoch`` is in (or
            ``timeout`` seconds passed); at once for an unregistered trial or no ``epoch``."""
            import asyncio

            if epoch is not None and trial_id in self.decided:
                async with self.changed:
                    try:
                        await asyncio.wait_for(self.changed.wait_for(lambda: self.decided[trial_id] >= epoch),
                                               timeout)
                    except asyncio.TimeoutError:
                        pass
            return sorted(self.stops.get(trial_id, ()))

    return MemberStops


# The driver's handles: a named actor that is not detached lives while a handle to it does.
_HANDLES: dict[str, object] = {}


def _mailbox(sweep: str):
    actor = _HANDLES.get(sweep)
    if actor is None:
        actor = _actor_class().options(name=actor_name(sweep), namespace=NAMESPACE, get_if_exists=True).remote()
        _HANDLES[sweep] = actor
    return actor


def register_trial(sweep: str, trial_id: str) -> None:
    """A scheduler judges the members of ``trial_id``: the trial waits for its decisions. Driver side."""
    import ray

    ray.get(_mailbox(sweep).register.remote(trial_id))


def post_decision(sweep: str, trial_id: str, epoch: int, members: list[int]) -> None:
    """The decision on ``trial_id``'s result of ``epoch``: ``members`` are stopped (all stopped so
    far; possibly none). Waits until recorded. Driver side."""
    import ray

    ray.get(_mailbox(sweep).decide.remote(trial_id, epoch, list(members)))


def stops_reader(sweep: str, wait_s: float = WAIT_S) -> Callable[..., set[int]]:
    """For a trial: a callable giving the members of this trial stopped so far (empty outside a
    Tune trial, or before any was stopped). Called with the epoch just reported, it first waits
    for the scheduler's decision on that epoch (see the module docstring)."""
    def read(epoch: int | None = None) -> set[int]:
        try:
            import ray

            if not ray.is_initialized():
                return set()
            trial_id = current_trial_id()
            actor = ray.get_actor(actor_name(sweep), namespace=NAMESPACE)
        except (ValueError, RuntimeError, AttributeError):
            return set()  # no mailbox yet: nothing stopped
        if not trial_id:
            return set()
        return set(ray.get(actor.wait.remote(trial_id, epoch, wait_s)))

    return read


