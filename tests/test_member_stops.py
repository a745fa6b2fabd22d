"""The mailbox between MemberASHA and a fused trial (trainables/runtime/member_stops.py), on a real
local Ray: a trial that reports an epoch waits for the scheduler's decision on it (a DDP trial's
report returns before the driver decides, which made its stops one epoch late), never for a trial
no scheduler registered, and never past its bound."""
import threading
import time

import pytest

from trainables.runtime import member_stops


@pytest.fixture
def mailbox(local_ray, monkeypatch):
    sweep = f"mailbox-{time.monotonic_ns()}"
    monkeypatch.setattr(member_stops, "current_trial_id", lambda: "t0")
    member_stops.register_trial(sweep, "t0")
    yield sweep
    member_stops._HANDLES.pop(sweep, None)


def test_a_trial_waits_for_the_decision_on_the_epoch_it_reported(mailbox):
    read = member_stops.stops_reader(mailbox)
    member_stops.post_decision(mailbox, "t0", 1, [])
    assert read(1) == set()
    # The decision on epoch 2 comes a second after the trial asks for it: the read returns it.
    later = threading.Timer(1.0, member_stops.post_decision, (mailbox, "t0", 2, [2]))
    later.start()
    try:
        assert read(2) == {2}
    finally:
        later.join()
    # Stops accumulate; a read without an epoch (after a restore) returns them at once.
    member_stops.post_decision(mailbox, "t0", 3, [0, 2])
    assert read(None) == {0, 2} and read(3) == {0, 2}


def test_a_decision_that_never_comes_costs_the_bound_once(mailbox):
    read = member_stops.stops_reader(mailbox, wait_s=0.5)
    member_stops.post_decision(mailbox, "t0", 1, [1])
    start = time.monotonic()
    assert read(2) == {1}  # the stops it knows
    assert 0.4 < time.monotonic() - start < 30


def test_an_unregistered_trial_does_not_wait(mailbox, monkeypatch):
    monkeypatch.setattr(member_stops, "current_trial_id", lambda: "not-scheduled")
    start = time.monotonic()
    assert member_stops.stops_reader(mailbox)(7) == set()
    assert time.monotonic() - start < member_stops.WAIT_S / 2
