"""Reliability building blocks without Ray: credential filtering, the watchdog's diagnosis and
abort, the finished-trials ledger, divergence reports, checkpoint fallbacks, disk usage."""
import json
import math
import os
from types import SimpleNamespace

import pytest
import torch

from orchestrator.run.watchdog import ClusterView, PlacementGroupInfo, Watchdog, diagnose
from orchestrator.store.secrets import filter_params, is_secret_key, redact, redact_yaml_text
from orchestrator.store.tracking import RedactingClient
from trainables.runtime.ledger import finished_result, record_finished
from trainables.runtime.runner import diverged_result
from trainables.runtime.session import (CHECKPOINT_FILE, LocalSession, TrialDiverged, check_finite, restore_local,
                                        save_state, state_file_problem)

# --- secrets ---------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["AWS_SECRET_ACCESS_KEY", "hf_token", "db.password", "api_key", "MLFLOW_TRACKING_TOKEN",
                                 "student_kwargs.auth", "client_secret", "loss_params.private_key", "passwd"])
def test_credential_like_keys_are_secret(key):
    assert is_secret_key(key)


@pytest.mark.parametrize("key", ["lr", "loss_params.kd_weight", "checkpoint.keep", "tokenizer", "author",
                                 "teacher_cache_id", "monkey"])
def test_ordinary_keys_are_not(key):
    assert not is_secret_key(key)


def test_params_dicts_and_yaml_are_redacted():
    kept, dropped = filter_params({"lr": 0.1, "api_token": "abc", "x.db_password": "p"})
    assert kept == {"lr": 0.1} and sorted(dropped) == ["api_token", "x.db_password"]
    assert redact({"a": 1, "nested": {"hf_token": "t", "b": [{"SECRET": 1, "c": 2}]}}) == \
        {"a": 1, "nested": {"b": [{"c": 2}]}}
    text = "params:\n  api_token: abc123  # mine\n  lr: 0.1\n  kw: {hf_token: xyz, lr: 2}\n"
    assert redact_yaml_text(text) == \
        "params:\n  api_token: '[redacted]'  # mine\n  lr: 0.1\n  kw: {hf_token: '[redacted]', lr: 2}\n"


def test_every_mlflow_write_path_is_filtered():
    calls = []

    class Fake:
        def __getattr__(self, name):
            return lambda *a, **k: calls.append((name, a, k))

    from mlflow.entities import Param, RunTag

    client = RedactingClient(Fake())
    client.log_param("r", "api_key", "v")
    client.set_tag("r", "w2s.token", "v")
    client.log_param("r", "lr", 0.1)
    client.log_batch("r", params=[Param("lr", "1"), Param("password", "p")], tags=[RunTag("SECRET_X", "s")])
    client.log_dict("r", {"cfg": {"api_token": "t", "lr": 1}}, "best.json")
    client.log_text("r", "api_token: t\n", "spec/space.yaml")
    client.create_run("e", tags={"w2s.sweep": "s", "my_secret": "x"})
    blob = json.dumps([c[1:] for c in calls], default=str)
    assert '"t"' not in blob and "my_secret" not in blob and "'p'" not in blob
    names = [c[0] for c in calls]
    assert names == ["log_param", "log_batch", "log_dict", "log_text", "create_run"]
    assert calls[1][2]["params"] == [Param("lr", "1")] and calls[1][2]["tags"] == []


# --- watchdog --------------------------------------------------------------------------------

TOTAL = {"CPU": 2.0, "TRAIN_DRIVER": 64.0}


def view(pgs, used, available=None):
    return ClusterView(pgs, used, TOTAL, available or {"CPU": 1.0})


def test_diagnosis_names_a_leaked_placement_group():
    pgs = [PlacementGroupInfo("aa" * 14, "w2s-test-leaked-pg", "CREATED", {"CPU": 1.0}),
           PlacementGroupInfo("bb" * 14, "", "CREATED", {"TRAIN_DRIVER": 1.0}),
           PlacementGroupInfo("cc" * 14, "", "PENDING", {"CPU": 2.0})]
    d = diagnose(view(pgs, used={"bb" * 14}), ["t_00000"], [], 31.0, 30, "resume with X")
    text = d.render()
    assert text.startswith("watchdog: no trial has made progress for 31s (watchdog.timeout_s 30) while 1 trial(s) "
                           "run (t_00000)")
    assert d.cause.startswith("leaked placement groups: 1 placement group(s) hold {CPU: 1}")
    assert "'w2s-test-leaked-pg'" in text and "waiting placement groups: cccccccccccc {CPU: 2}" in text
    assert d.advice.endswith("then resume with X")


def test_diagnosis_names_resources_the_cluster_lacks():
    pgs = [PlacementGroupInfo("dd" * 14, "", "PENDING", {"CPU": 2.0, "GPU": 1.0})]
    d = diagnose(view(pgs, used=set()), ["t"], ["u"], 50, 30, "R")
    assert d.cause.startswith("a placement group needs {GPU: 1} but the whole cluster has {}")


def test_diagnosis_without_waiting_placement_groups_suspects_the_training_loop():
    d = diagnose(view([], used=set()), ["t"], [], 50, 30, "R")
    assert "report nothing although their resources are in place" in d.cause
    assert "raise watchdog.timeout_s" in d.advice
    d = diagnose(view([PlacementGroupInfo("ee" * 14, "", "PENDING", {"CPU": 1.0})], used=set()), ["t"], [], 50, 30, "R")
    assert d.cause.startswith("a worker group waits for resources that running trials hold")


def test_watchdog_warns_repeats_and_aborts(monkeypatch):
    import orchestrator.run.watchdog as wd

    now = [0.0]
    said, interrupts = [], []
    monkeypatch.setattr(wd, "_interrupt_tune", lambda: interrupts.append(now[0]))
    dog = Watchdog(10, 25, "resume with R", say=said.append, clock=lambda: now[0],
                   inspect=lambda: view([], used=set()))
    dog.check()
    assert said == []  # Tune has not stepped yet: nothing is known to be running
    dog.observe([SimpleNamespace(trial_id="t1", status="RUNNING")])
    for t in (5, 9.9):
        now[0] = t
        dog.check()
    assert said == []
    now[0] = 10
    dog.check()
    now[0] = 15
    dog.check()  # the same stall is not reported twice within timeout_s
    assert len(said) == 1 and said[0].startswith("watchdog: no trial has made progress for 10s")
    now[0] = 20
    dog.check()
    assert len(said) == 2 and not interrupts
    now[0] = 25
    dog.check()
    assert interrupts == [25] and "stopping the sweep after 25s" in said[-1]
    with pytest.raises(wd.SweepStalled) as info:
        dog.raise_if_aborted()
    assert info.value.exit_code == 3 and "the watchdog stopped the sweep: the running trials report nothing" in str(info.value)


def test_progress_resets_the_watchdog():
    now = [0.0]
    said = []
    dog = Watchdog(10, None, "R", say=said.append, clock=lambda: now[0], inspect=lambda: view([], set()))
    dog.observe([SimpleNamespace(trial_id="t1", status="RUNNING")])
    for t in range(0, 40, 5):
        now[0] = t
        dog.beat()
        dog.check()
    dog.observe([SimpleNamespace(trial_id="t1", status="TERMINATED")])
    now[0] = 100
    dog.check()  # nothing running or pending: an idle Tune is not a stall
    assert said == []


# --- divergence, ledger, checkpoints ------------------------------------------------------------


def test_diverged_result_ranks_last_for_searchers():
    exc = TrialDiverged("loss became nan at epoch 3", epoch=3)
    assert diverged_result(exc, "val_acc", "max") == {"diverged": 1.0, "epoch": 3, "val_acc": -math.inf,
                                                      "divergence": "loss became nan at epoch 3"}
    assert diverged_result(exc, "val_loss", "min")["val_loss"] == math.inf


class TwoRanks(LocalSession):
    """One rank of a two-rank group, without processes: ``all_reduce_sum`` adds what the other
    rank contributes, as a SUM all-reduce would."""

    def __init__(self, other_rank_bad: bool):
        super().__init__(torch.device("cpu"))
        self.rank, self.world_size, self.other = 0, 2, float(other_rank_bad)

    @property
    def distributed(self) -> bool:
        return True

    def all_reduce_sum(self, tensor):
        return tensor + self.other


def test_check_finite_agrees_across_ranks():
    """A NaN on one rank only: every rank must stop, or the others would hang in the next collective."""
    check_finite(torch.tensor(1.0), "epoch 3", TwoRanks(other_rank_bad=False), 3)  # all finite: no stop
    with pytest.raises(TrialDiverged) as info:
        check_finite(torch.tensor(1.0), "epoch 3", TwoRanks(other_rank_bad=True), 3)
    assert str(info.value) == "loss became non-finite on another rank at epoch 3" and info.value.epoch == 3
    with pytest.raises(TrialDiverged, match="loss became nan at epoch 3"):
        check_finite(torch.tensor(float("nan")), "epoch 3", TwoRanks(other_rank_bad=False), 3)
    with pytest.raises(TrialDiverged, match="loss became inf at epoch 1"):
        check_finite(torch.tensor(float("inf")), "epoch 1")  # single process


def test_ledger_round_trip_keeps_infinities_and_drops_tune_bookkeeping(tmp_path):
    d = str(tmp_path / "finished")
    assert finished_result(d, "t1") is None
    record_finished(d, "t1", {"val_acc": -math.inf, "epoch": 3, "diverged": 1.0, "training_iteration": 3,
                              "trial_id": "t1", "config": {"lr": 1}, "divergence": "nan"}, "diverged")
    assert finished_result(d, "t1") == {"val_acc": -math.inf, "epoch": 3, "diverged": 1.0, "divergence": "nan"}
    (tmp_path / "finished" / "t2.json").write_text("{not json")
    assert finished_result(d, "t2") is None  # unreadable: the trial resumes from its checkpoint instead


def test_state_file_problems(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.arange(1000.0)}, good)
    assert state_file_problem(str(good)) is None
    assert state_file_problem(str(tmp_path / "missing.pt")) == "does not exist"
    (tmp_path / "empty.pt").write_bytes(b"")
    assert state_file_problem(str(tmp_path / "empty.pt")) == "is empty"
    data = good.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    assert state_file_problem(str(tmp_path / "cut.pt")).startswith("is not a readable torch checkpoint")
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0xFF  # inside the tensor payload: only the CRC notices
    (tmp_path / "rot.pt").write_bytes(bytes(flipped))
    assert state_file_problem(str(tmp_path / "rot.pt")).startswith("is corrupt (checksum mismatch in ")


def test_a_checkpoint_without_readable_state_falls_back_to_the_newest_readable_one(tmp_path, capsys):
    from trainables.runtime.session import RESTORE_NOTE

    trial = tmp_path / "trial"
    for i in (1, 2, 3):
        (trial / f"checkpoint_00000{i}").mkdir(parents=True)
        save_state(str(trial / f"checkpoint_00000{i}"), {"progress": {"epoch": i}})
    os.rename(trial / "checkpoint_000003" / CHECKPOINT_FILE, trial / "checkpoint_000003" / "state.pt.corrupt")
    (trial / "checkpoint_000002" / CHECKPOINT_FILE).write_bytes(b"PK\x03\x04 cut short")  # unreadable too
    state = restore_local(str(trial / "checkpoint_000003"))
    note = "checkpoint checkpoint_000003 has no readable state; resumed from checkpoint_000001 (epoch 1)"
    assert state == {"progress": {"epoch": 1}, RESTORE_NOTE: note}
    assert note in capsys.readouterr().out
    os.remove(trial / "checkpoint_000001" / CHECKPOINT_FILE)
    assert restore_local(str(trial / "checkpoint_000003")) is None
    assert "has no other; it starts over" in capsys.readouterr().out


def test_a_trial_tune_restores_without_a_checkpoint_takes_the_newest_readable_one_in_its_folder(tmp_path, capsys):
    """The driver was killed before Tune's experiment state recorded the trial's checkpoints."""
    from trainables.runtime.session import RESTORE_NOTE, unrecorded_checkpoint

    trial = tmp_path / "trial"
    assert unrecorded_checkpoint(str(trial)) is None  # a fresh trial: no folder yet
    trial.mkdir()
    assert unrecorded_checkpoint(str(trial)) is None  # nor any checkpoint
    # written in this order: a resumed trial reused the name checkpoint_000000 after 000004
    for mtime, (name, epoch) in enumerate([("checkpoint_000003", 4), ("checkpoint_000004", 5),
                                           ("checkpoint_000000", 6), ("checkpoint_000001", 7)]):
        (trial / name).mkdir()
        save_state(str(trial / name), {"progress": {"epoch": epoch}})
        os.utime(trial / name / CHECKPOINT_FILE, (1000 + mtime, 1000 + mtime))
    data = (trial / "checkpoint_000001" / CHECKPOINT_FILE).read_bytes()
    (trial / "checkpoint_000001" / CHECKPOINT_FILE).write_bytes(data[: len(data) // 2])  # newest: cut short
    os.utime(trial / "checkpoint_000001" / CHECKPOINT_FILE, (1003, 1003))
    (trial / "checkpoint_000009.corrupt").mkdir()  # set aside by the resume check: never read
    save_state(str(trial / "checkpoint_000009.corrupt"), {"progress": {"epoch": 99}})
    state = unrecorded_checkpoint(str(trial))
    note = ("the sweep's state recorded no checkpoint for this trial; resumed from checkpoint_000000 (epoch 6), "
            "found in its folder")
    assert state == {"progress": {"epoch": 6}, RESTORE_NOTE: note}
    assert note in capsys.readouterr().out


def test_the_resume_check_sets_corrupt_states_aside_and_names_what_each_trial_resumes_from(tmp_path):
    from orchestrator.run.preflight import repair_sweep_checkpoints

    sweep = tmp_path / "s"
    # Trial folders as the sweep names them (trial_<id>), and one named otherwise
    for trial, epochs in (("trial_a1", (1, 2)), ("trial_b2", (1,)), ("trial_c3", (1,)), ("other", (1,))):
        for e in epochs:
            (sweep / trial / f"checkpoint_00000{e}").mkdir(parents=True)
            save_state(str(sweep / trial / f"checkpoint_00000{e}"), {"progress": {"epoch": e}})
    (sweep / "trial_a1" / "checkpoint_000002" / CHECKPOINT_FILE).write_bytes(b"")
    # trial_b2 has no result.json (a driver killed before writing it): its id is its folder's
    (sweep / "trial_b2" / "checkpoint_000001" / CHECKPOINT_FILE).write_bytes(b"PK\x03\x04 garbage")
    (sweep / "trial_a1" / "result.json").write_text('{"trial_id": "a1", "epoch": 1}\n{"trial_id": "a1", "epoch": 2}\n')
    (sweep / "other" / "checkpoint_000001" / CHECKPOINT_FILE).write_bytes(b"")
    (sweep / "other" / "result.json").write_text('{"trial_id": "d4", "epoch": 1}\n')
    notes = repair_sweep_checkpoints(str(sweep))
    assert notes == [
        ("d4", "checkpoint other/checkpoint_000001/state.pt is empty: kept as state.pt.corrupt; its trial has no "
               "older checkpoint and starts over"),
        ("a1", "checkpoint trial_a1/checkpoint_000002/state.pt is empty: kept as state.pt.corrupt; its trial goes on "
               "from checkpoint_000001"),
        ("b2", "checkpoint trial_b2/checkpoint_000001/state.pt is not a readable torch checkpoint (File is not a zip "
               "file): kept as state.pt.corrupt; its trial has no older checkpoint and starts over")]
    assert (sweep / "trial_a1" / "checkpoint_000002" / "state.pt.corrupt").exists()
    assert (sweep / "trial_a1" / "checkpoint_000002").is_dir()  # Tune's recorded checkpoint folder stays
    assert (sweep / "trial_c3" / "checkpoint_000001" / CHECKPOINT_FILE).exists()
    assert repair_sweep_checkpoints(str(sweep)) == []  # nothing left to repair
    # the first epoch after a fallback reports the note once, for the MLflow tag
    from trainables.runtime.epochs import Checkpointed, run_epochs
    from trainables.runtime.session import RESTORE_NOTE

    class Session:
        is_main, distributed, world_size, history = True, False, 1, []

        def restore(self):
            return {"progress": {"epoch": 1}, RESTORE_NOTE: "resumed from checkpoint_000001 (epoch 1)"}

        def report(self, metrics, checkpoint=None):
            self.history.append(metrics)

        def all_reduce_sum(self, t):
            return t

    session = Session()
    run_epochs(session, Checkpointed({}), 3, lambda e: {"train_loss": torch.tensor(1.0)}, lambda e, s: {"epoch": e + 1})
    assert [h.get(RESTORE_NOTE) for h in session.history] == ["resumed from checkpoint_000001 (epoch 1)", None]


def test_disk_usage_separates_checkpoints_from_results(tmp_path):
    from orchestrator.store.disk import disk_usage

    sweep = tmp_path / "s"
    (sweep / "trial_a" / "checkpoint_000001").mkdir(parents=True)
    (sweep / "trial_a" / "checkpoint_000001" / "state.pt").write_bytes(b"x" * 1000)
    (sweep / "train_runs" / "train-b" / "checkpoint_2026-01-01_00-00-00.1").mkdir(parents=True)
    (sweep / "train_runs" / "train-b" / "checkpoint_2026-01-01_00-00-00.1" / "state.pt").write_bytes(b"x" * 500)
    (sweep / "trial_a" / "result.json").write_bytes(b"x" * 30)
    (tmp_path / "cache" / "teacher").mkdir(parents=True)
    (tmp_path / "cache" / "teacher" / "model.pt").write_bytes(b"x" * 70)
    usage = disk_usage([str(sweep), str(tmp_path / "absent")], str(tmp_path / "cache"))
    assert (usage.checkpoint_bytes, usage.checkpoints, usage.other_bytes, usage.cache_bytes) == (1500, 2, 30, 70)
    assert usage.line() == "disk: 1.5 KB in 2 checkpoints, 30 B of results and logs, 70 B of cache"


def test_rows_label_diverged_trials_and_the_best_pick_skips_them():
    from orchestrator.reports.rows import pick_best, rows_from_results
    from orchestrator.space.spec import parse_spec
    from tests.test_spec import BASE

    spec = parse_spec(BASE)

    def result(tid, **m):
        return SimpleNamespace(config={"lr": 0.1, "epochs": 4}, metrics={"trial_id": tid, **m}, error=None)

    rows = rows_from_results(spec, [result("a", val_acc=0.5, epoch=4),
                                    result("b", val_acc=-math.inf, epoch=2, diverged=1.0)])
    assert [r.status for r in rows] == ["completed", "diverged"] and "val_acc" not in rows[1].metrics
    assert pick_best(rows, "val_acc", "max").trial_id == "a"
    assert pick_best(rows[1:], "val_acc", "max") is None


def test_child_runs_of_trials_lost_in_a_crash_are_archived(tmp_path):
    from orchestrator.run.resume import archive_lost_runs
    from orchestrator.store.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "e")
    tracker.ensure_experiment()
    parent, _ = tracker.parent_run("s", {}, None)
    ids = {}
    for trial, status in (("t_kept", "RUNNING"), ("t_lost", "RUNNING"), ("t_done", "FINISHED")):
        run = tracker.client.create_run(tracker.experiment_id, tags={"w2s.sweep": "s", "w2s.role": "trial",
                                                                     "w2s.trial_id": trial, "mlflow.parentRunId": parent})
        ids[trial] = run.info.run_id
        if status != "RUNNING":
            tracker.finish(run.info.run_id, status)
    assert archive_lost_runs(tracker, "s", {"t_kept"}) == ["t_lost"]
    lost = tracker.client.get_run(ids["t_lost"])
    assert lost.info.lifecycle_stage == "deleted" and lost.info.status == "KILLED"
    assert lost.data.tags["w2s.outcome"] == "lost_in_crash"
    assert {r.data.tags["w2s.trial_id"] for r in tracker.find_runs(**{"w2s.role": "trial"})} == {"t_kept", "t_done"}


def test_a_trials_checkpoint_notes_add_up_on_its_run(tmp_path):
    """The resume check's note (a corrupt state set aside) stays on the run when the trial's own
    note (where it went on from) comes after it; the same note twice is kept once."""
    from orchestrator.store.tracking import TAG_CHECKPOINT_NOTE, Tracker

    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "e")
    tracker.ensure_experiment()
    run = tracker.client.create_run(tracker.experiment_id, tags={"w2s.sweep": "s", "w2s.trial_id": "t"})
    tracker.note_checkpoint_repair("s", "t", "checkpoint_000003/state.pt is corrupt")
    tracker.add_checkpoint_note(run.info.run_id, "resumed from checkpoint_000002")
    tracker.add_checkpoint_note(run.info.run_id, "resumed from checkpoint_000002")
    assert tracker.client.get_run(run.info.run_id).data.tags[TAG_CHECKPOINT_NOTE] == \
        "checkpoint_000003/state.pt is corrupt; then resumed from checkpoint_000002"


def test_sigint_watch_reads_tunes_handler_swap(monkeypatch):
    """Tune installs its own SIGINT handler for a run and puts the one it found back when Ctrl-C
    comes (ray.tune.tune._setup_signal_catching): the watch reads that, and afterwards puts the
    driver's own handler back either way."""
    import signal

    from orchestrator.run.resume import SigintWatch

    monkeypatch.delenv("TUNE_DISABLE_SIGINT_HANDLER", raising=False)
    mine = signal.getsignal(signal.SIGINT)

    def tunes(sig, frame):  # what Tune installs for the run
        pass

    watch = SigintWatch()
    signal.signal(signal.SIGINT, tunes)  # a run that ended normally leaves Tune's handler in place
    assert not watch.interrupted()
    assert signal.getsignal(signal.SIGINT) is mine, "a later Ctrl-C must reach the driver, not Tune's stale flag"

    watch = SigintWatch()
    signal.signal(signal.SIGINT, tunes)
    signal.signal(signal.SIGINT, mine)  # Ctrl-C: Tune put the original back
    assert watch.interrupted()
