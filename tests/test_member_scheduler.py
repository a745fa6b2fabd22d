"""ASHA over the members of fused trials (orchestrator/run/member_scheduler.py), without Ray: the
rung decisions per member, what is posted to the trial's mailbox, and the trial's own decision.
The mailbox itself (a Ray actor) and a trial waiting on it: tests/test_member_stops.py."""
from types import SimpleNamespace

import pytest

from orchestrator.run import member_scheduler as ms


@pytest.fixture
def asha(monkeypatch):
    posted, registered = [], []
    # Only the stops: every result's decision is posted, with its epoch (checked below)
    monkeypatch.setattr(ms, "post_decision",
                        lambda sweep, trial_id, epoch, members: members and posted.append((sweep, trial_id, members)))
    monkeypatch.setattr(ms, "register_trial", lambda sweep, trial_id: registered.append((sweep, trial_id)))
    s = ms.MemberASHA(fields=("lr",), sweep="sw", time_attr="epoch", max_t=20, grace_period=5, reduction_factor=2,
                      brackets=1)
    s.set_search_properties("val_acc", "max")
    s.registered = registered
    return s, posted


def trial(i, members=3):
    return SimpleNamespace(trial_id=f"t{i}", config={"probes": [{"lr": 0.1 * (k + 1)} for k in range(members)]})


def result(epoch, values, epochs=None):
    members = [{"epoch": e, "val_acc": v} for v, e in zip(values, epochs or [epoch] * len(values))]
    return {"epoch": epoch, "val_acc": max(values), "probes": members}


def test_members_below_the_rung_cutoff_stop_one_by_one(asha):
    s, posted = asha
    t0, t1 = trial(0), trial(1)
    s.on_trial_add(None, t0)
    s.on_trial_add(None, t1)
    assert s.on_trial_result(None, t0, result(4, [0.1, 0.2, 0.3])) == "CONTINUE"  # before the first rung
    # rung 5: the first value has no cutoff; 0.947 >= 0.942; 0.967 >= the median of the two
    assert s.on_trial_result(None, t0, result(5, [0.942, 0.947, 0.967])) == "CONTINUE"
    assert posted == []
    # trial 1 at rung 5: 0.958 >= median 0.947; 0.936 < median(0.942, 0.947, 0.967, 0.958) = 0.9525; 0.1 below
    assert s.on_trial_result(None, t1, result(5, [0.958, 0.936, 0.1])) == "CONTINUE"
    assert posted == [("sw", "t1", [1, 2])]
    # the stops are posted again with every result (a resumed trial reads a fresh mailbox), and the
    # stopped members' stale entries are not judged again
    assert s.on_trial_result(None, t1, result(6, [0.96, 0.936, 0.1], epochs=[6, 5, 5])) == "CONTINUE"
    assert posted[-1] == ("sw", "t1", [1, 2])


def test_the_trial_stops_when_no_member_is_left(asha):
    s, posted = asha
    t0, t1 = trial(0, 2), trial(1, 2)
    s.on_trial_add(None, t0)
    s.on_trial_add(None, t1)
    s.on_trial_result(None, t0, result(5, [0.9, 0.95]))
    assert s.on_trial_result(None, t1, result(5, [0.1, 0.2])) == "STOP"
    assert posted == [("sw", "t1", [0, 1])]  # the trial itself stops (a waiting rank is released)


def test_a_diverged_member_stops_and_max_t_ends_every_member(asha):
    s, posted = asha
    t0 = trial(0)
    s.on_trial_add(None, t0)
    diverged = result(2, [0.5, 0.6, float("-inf")])
    diverged["probes"][2]["diverged"] = 1.0
    assert s.on_trial_result(None, t0, diverged) == "CONTINUE"
    assert posted == [("sw", "t0", [2])]
    assert s.on_trial_result(None, t0, result(20, [0.9, 0.91, float("-inf")], epochs=[20, 20, 2])) == "STOP"


def test_trials_that_are_not_fused_are_plain_asha(asha):
    s, posted = asha
    plain = SimpleNamespace(trial_id="p", config={"lr": 0.1})
    s.on_trial_add(None, plain)
    assert s.on_trial_result(None, plain, {"epoch": 5, "val_acc": 0.5}) == "CONTINUE"
    other = SimpleNamespace(trial_id="q", config={"lr": 0.2})
    s.on_trial_add(None, other)
    assert s.on_trial_result(None, other, {"epoch": 5, "val_acc": 0.1}) == "STOP"
    s.on_trial_complete(None, plain, {"epoch": 20, "val_acc": 0.6})
    assert "p" not in s._trial_info and posted == [] and s.registered == []


def test_a_points_entry_is_member_0_of_its_fused_trial():
    from orchestrator.run.tuner import nested_points
    from orchestrator.space.spec import load_spec

    spec = load_spec("search_spaces/quickstart.yaml", ["params.vectorize=3"])
    (point,) = nested_points(spec)
    assert point["workers"] == 2 and "lr" not in point
    members = point["probes"]
    assert len(members) == 3
    assert members[0] == {"lr": 0.05, "loss_params": {"temperature": 4.0, "kd_weight": 0.9}}
    for m in members[1:]:  # sampled from the space's domains
        assert 0.005 <= m["lr"] <= 0.3 and m["loss_params"]["temperature"] in (1.0, 2.0, 4.0, 8.0)
        assert 0.1 <= m["loss_params"]["kd_weight"] <= 1.0
    assert nested_points(spec) == [point]  # seeded: a resumed sweep plans the same members


def test_every_fused_trial_is_registered_and_every_result_gets_a_decision(monkeypatch):
    """A trial waits for the decision on the epoch it reported (a DDP trial's report returns before
    the driver decides): the decision is posted for every result, stops or not, with its epoch."""
    decisions, registered = [], []
    monkeypatch.setattr(ms, "post_decision",
                        lambda sweep, trial_id, epoch, members: decisions.append((trial_id, epoch, members)))
    monkeypatch.setattr(ms, "register_trial", lambda sweep, trial_id: registered.append((sweep, trial_id)))
    s = ms.MemberASHA(fields=("lr",), sweep="sw", time_attr="epoch", max_t=20, grace_period=5, reduction_factor=2,
                      brackets=1)
    s.set_search_properties("val_acc", "max")
    t0, t1 = trial(0), trial(1)
    s.on_trial_add(None, t0)
    s.on_trial_add(None, t1)
    assert registered == [("sw", "t0"), ("sw", "t1")]
    s.on_trial_result(None, t0, result(4, [0.1, 0.2, 0.3]))
    s.on_trial_result(None, t0, result(5, [0.942, 0.947, 0.967]))
    s.on_trial_result(None, t1, result(5, [0.958, 0.936, 0.1]))
    assert decisions == [("t0", 4, []), ("t0", 5, []), ("t1", 5, [1, 2])]
