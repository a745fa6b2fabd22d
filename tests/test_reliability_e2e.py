"""Fault injection on real sweeps (local Ray, MLflow, the `faulty` plugin trainable):

* the sweep driver is SIGKILLed mid-sweep and ``--resume`` finishes it: every trial complete or
  diverged, no finished trial trained again, one MLflow child run per trial, the parent reused,
  and no credential in MLflow;
* a DDP worker process dies mid-trial and the trial goes on from its checkpoint;
* a leaked placement group starves a DDP trial and the watchdog says so, then stops the sweep.

Each sweep runs in its own process group and Ray temp dir, so the test can clean up exactly the
processes it started (and never another developer's Ray).
"""
import csv
import json
import os
import signal
import re
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

SECRET = "tok-3141592653"
ENV_SECRET = "env-2718281828"


def ray_processes(ray_tmp: str) -> list[int]:
    """Live processes of the local Ray whose temp dir is ``ray_tmp`` (they inherited it as
    ``RAY_TMPDIR``, or name it on their command line)."""
    needle = f"RAY_TMPDIR={ray_tmp}".encode() + b"\0"
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = b"\0" + f.read() + b"\0"
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if b"\0" + needle in env or ray_tmp.encode() + b"/" in cmd:
            pids.append(int(pid))
    return pids


class Sweep:
    """``run_sweep.py`` in its own session, with its own Ray temp dir."""

    def __init__(self, cwd, *args):
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "W2S_PLUGINS": "tests.plugins.faults",
                    "W2S_FAKE_API_TOKEN": ENV_SECRET, "W2S_TEST_API_TOKEN": SECRET,
                    "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.env.pop("RAY_TMPDIR", None)  # the sweep gives its local Ray a temp dir of its own, and prints it
        self.out = open(os.path.join(cwd, f"driver-{time.time_ns()}.log"), "w+")
        self.proc = subprocess.Popen([sys.executable, os.path.join(REPO, "run_sweep.py"), *args], cwd=cwd,
                                     env=self.env, stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, timeout=900, check_ray=False) -> tuple[int, str]:
        """The driver's status and output; with ``check_ray``, ``ray_left_running`` says which
        processes of its local Ray outlived a driver that exited by itself (before the clean-up)."""
        try:
            rc = self.proc.wait(timeout=timeout)
            if check_ray:
                self.ray_left_running = self._ray_left_running() if rc >= 0 else None
        finally:
            self.kill_leftovers()
        self.out.seek(0)
        return rc, self.out.read()

    def output(self) -> str:
        self.out.flush()
        with open(self.out.name) as f:
            return f.read()

    def kill_driver(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.kill_leftovers()

    def _ray_left_running(self, grace_s: float = 15.0) -> list[int]:
        """Processes of this sweep's local Ray still running ``grace_s`` after its driver exited by
        itself (Ray's dashboard modules take a second or two to notice their parent has gone)."""
        ray_tmp = self.ray_tmp()
        deadline = time.monotonic() + grace_s
        while ray_tmp and (left := ray_processes(ray_tmp)) and time.monotonic() < deadline:
            time.sleep(0.2)
        return ray_processes(ray_tmp) if ray_tmp else []

    def ray_tmp(self) -> str | None:
        match = re.search(r"local Ray: temp dir (\S+) ", self.output())
        return match.group(1) if match else None

    def kill_leftovers(self) -> None:
        """SIGKILL what this sweep's Ray left behind: its process group (Ray's processes inherit it),
        and anything whose command line names this sweep's own Ray temp dir."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        ray_tmp = self.ray_tmp()
        if not ray_tmp:
            return
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if ray_tmp.encode() in f.read():
                        os.kill(int(pid), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass


def mlflow_runs(tmp_path, experiment, sweep):
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`w2s.sweep` = '{sweep}'")
    return client, runs


def read_trace(path):
    """[(trial, rank, epoch, pid)] in the order epochs started."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [(t, int(r), int(e), int(p)) for t, r, e, p in (line.split() for line in f if line.strip())]


def wait_for(condition, timeout, proc, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        if proc.proc.poll() is not None:
            pytest.fail(f"the sweep ended before {what}:\n{proc.output()[-3000:]}")
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}:\n{proc.output()[-3000:]}")


RESUME_SPACE = """
name: faults-resume
trainable: faulty
params:
  epochs: 5
  loss_params: {{sleep_s: 0.8, nan_at_epoch: 3, trace: {trace}, exit_at_epoch: 4, marker: {marker}}}
  nan_seeds: [3]
  api_token: ${{env:W2S_TEST_API_TOKEN}}
search:
  seed: {{grid: [0, 1, 2, 3]}}
resources: {{workers: 1, cpus_per_worker: 1, max_concurrent_trials: 2}}
checkpoint: {{every: 1, keep: 2}}
failure: {{max_failures: 1}}
control: {{enabled: false}}
"""


def test_killed_driver_resumes_without_rerunning_or_duplicating(tmp_path):
    trace, marker = tmp_path / "trace.txt", tmp_path / "exited"
    (tmp_path / "space.yaml").write_text(RESUME_SPACE.format(trace=trace, secret=SECRET, marker=marker))
    ledger = tmp_path / "ray_results" / "kd" / "finished"
    first = Sweep(tmp_path, "space.yaml", "--name", "kd")

    def one_finished_one_midway():
        done = {f.removesuffix(".json") for f in os.listdir(ledger)} if ledger.exists() else set()
        started = {t for t, _, e, _ in read_trace(trace) if e >= 3 and t not in done}
        return bool(done) and bool(started)

    wait_for(one_finished_one_midway, 600, first, "a finished trial and one mid-way")
    first.kill_driver()
    finished_before = {f.removesuffix(".json") for f in os.listdir(ledger)}
    lines_before = len(read_trace(trace))
    midway = {t for t, _, e, _ in read_trace(trace) if t not in finished_before}
    assert finished_before and midway

    rc, out = Sweep(tmp_path, "--resume", "kd").wait()
    assert rc == 0, out[-4000:]
    assert "(resumed)" in out and "resuming from" in out

    after = read_trace(trace)[lines_before:]
    assert not {t for t, *_ in after} & finished_before, "a finished trial trained again after the resume"
    for trial in midway:
        epochs = [e for t, _, e, _ in after if t == trial]
        if epochs:  # it went on from its checkpoint, not from epoch 1
            assert epochs[0] > 1, (trial, epochs)

    # The first trial to reach epoch 4 lost its process once (before or after the driver kill);
    # Tune restarted it from its last checkpoint (failure.max_failures 1), not from epoch 1.
    crashed = marker.read_text().split()[0]
    pids = list(dict.fromkeys(p for t, _, _, p in read_trace(trace) if t == crashed))
    restart = [e for t, _, e, p in read_trace(trace) if t == crashed and p == pids[-1]]
    assert len(pids) >= 2 and 1 < restart[0] <= 4, (crashed, read_trace(trace))

    client, runs = mlflow_runs(tmp_path, "faults-resume", "kd")
    parents = [r for r in runs if r.data.tags["w2s.role"] == "parent"]
    children = [r for r in runs if r.data.tags["w2s.role"] == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.tags["w2s.trial_id"] for r in children) == sorted(
        json.loads(p.read_text())["trial_id"] for p in ledger.iterdir())
    assert len(children) == 4, [r.data.tags["w2s.trial_id"] for r in children]
    outcomes = sorted((r.data.params["seed"], r.data.tags["w2s.outcome"], r.info.status) for r in children)
    assert outcomes == [("0", "completed", "FINISHED"), ("1", "completed", "FINISHED"),
                        ("2", "completed", "FINISHED"), ("3", "diverged", "FAILED")]
    for run in children:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert steps == sorted(set(steps)), f"duplicated epochs in MLflow: {steps}"
        assert steps == (list(range(1, 6)) if run.data.tags["w2s.outcome"] == "completed" else [1, 2])
    diverged = next(r for r in children if r.data.tags["w2s.outcome"] == "diverged")
    assert diverged.data.tags["w2s.divergence"] == "loss became nan at epoch 3"
    assert diverged.data.metrics["diverged"] == 1.0

    # Credentials: neither the api_token parameter nor the environment reaches MLflow.
    for run in runs:
        blob = json.dumps([run.data.params, run.data.tags])
        assert SECRET not in blob and ENV_SECRET not in blob and "api_token" not in blob
    spec_text = client.download_artifacts(parents[0].info.run_id, "spec/search_space.yaml", str(tmp_path))
    assert SECRET not in open(spec_text).read()

    with open(tmp_path / "ray_results" / "kd" / "results.csv") as f:
        assert sorted(row["status"] for row in csv.DictReader(f)) == ["completed"] * 3 + ["diverged"]
    assert "disk: " in out and " in " in out and "checkpoints" in out
    assert json.loads((tmp_path / "ray_results" / "kd" / "w2s_status.json").read_text())["status"] == "finished"


DDP_SPACE = """
name: faults-ddp
trainable: faulty
params:
  epochs: 4
  loss_params: {{exit_at_epoch: 3, exit_rank: 1, marker: {marker}, trace: {trace}, sleep_s: 0.6}}
resources: {{workers: 2, cpus_per_worker: 1}}
checkpoint: {{every: 1, keep: 2}}
failure: {{max_failures: 1}}
control: {{enabled: false}}
"""


def test_killed_ddp_worker_recovers_from_its_checkpoint(tmp_path):
    trace, marker = tmp_path / "trace.txt", tmp_path / "exited"
    (tmp_path / "space.yaml").write_text(DDP_SPACE.format(trace=trace, marker=marker))
    rc, out = Sweep(tmp_path, "space.yaml", "--name", "ddp").wait()
    assert rc == 0, out[-4000:]
    assert marker.exists(), "the worker was never killed"
    rank0 = [(e, pid) for _, r, e, pid in read_trace(trace) if r == 0]
    pids = list(dict.fromkeys(pid for _, pid in rank0))
    assert len(pids) == 2, f"expected one restart of the worker group: {rank0}"
    before = [e for e, pid in rank0 if pid == pids[0]]
    resumed = [e for e, pid in rank0 if pid == pids[1]]
    assert before[:2] == [1, 2]
    # Train registers a checkpoint when it polls the workers' reports, so the last one before the
    # kill may be epoch 1's or epoch 2's: either way the workers go on from it, not from epoch 1.
    assert resumed in ([2, 3, 4], [3, 4]), f"the restarted workers must go on from their checkpoint: {rank0}"

    client, runs = mlflow_runs(tmp_path, "faults-ddp", "ddp")
    (child,) = [r for r in runs if r.data.tags["w2s.role"] == "trial"]
    assert child.info.status == "FINISHED" and child.data.tags["w2s.outcome"] == "completed"
    assert [m.step for m in client.get_metric_history(child.info.run_id, "val_acc")] == [1, 2, 3, 4]
    assert child.data.params["workers"] == "2"


STUCK_SPACE = """
name: faults-stuck
trainable: faulty
params: {{epochs: 2, leak_cpus: {leak}}}
resources: {{workers: 2, cpus_per_worker: 1}}
watchdog: {{timeout_s: 8, abort_after_s: 16}}
control: {{enabled: false}}
"""


def test_watchdog_names_a_leaked_placement_group_and_stops_the_sweep(tmp_path):
    leak = (os.cpu_count() or 2) - 1  # leaves one CPU: the 2-worker group can never be placed
    (tmp_path / "space.yaml").write_text(STUCK_SPACE.format(leak=leak))
    rc, out = Sweep(tmp_path, "space.yaml", "--name", "stuck").wait()
    assert rc == 3, out[-4000:]
    assert "watchdog: no trial has made progress for" in out
    assert "likely cause: leaked placement groups: 1 placement group(s) hold {CPU: " in out
    assert "'w2s-test-leaked-pg'" in out
    assert "watchdog: stopping the sweep after" in out
    assert "error: the watchdog stopped the sweep: leaked placement groups" in out
    assert "then resume with `run_sweep.py --resume stuck`" in out
    status = json.loads((tmp_path / "ray_results" / "stuck" / "w2s_status.json").read_text())
    assert status["status"] == "stalled"
    _, runs = mlflow_runs(tmp_path, "faults-stuck", "stuck")
    (parent,) = [r for r in runs if r.data.tags["w2s.role"] == "parent"]
    assert parent.info.status == "KILLED"


INTERRUPT_SPACE = """
name: faults-interrupt
trainable: faulty
params:
  epochs: 4
  loss_params: {sleep_s: 0.5}
search:
  seed: {grid: [0, 1, 2, 3]}
resources: {workers: 1, cpus_per_worker: 1, max_concurrent_trials: 1}
checkpoint: {every: 1, keep: 2}
control: {enabled: false}
"""


def test_ctrl_c_exits_130_resumable_and_the_same_command_finishes(tmp_path):
    """Ctrl-C during the trials: Tune's cleanup marks the running trial TERMINATED and the
    ungenerated ones are in no list, so its results look finished; the sweep must still say
    interrupted (exit 130, status file), write no report, and finish when run again."""
    (tmp_path / "space.yaml").write_text(INTERRUPT_SPACE)
    first = Sweep(tmp_path, "space.yaml", "--name", "ci")
    wait_for(lambda: re.search(r"\[\s*1/4\] \S+ completed", first.output()), 600, first, "the first trial to end")
    os.kill(first.proc.pid, signal.SIGINT)
    rc, out = first.wait()
    assert rc == 130, out[-3000:]
    assert "interrupted; the sweep's state is saved: resume it with --resume ci" in out
    assert "best trial" not in out and "results:" not in out, "an interrupted sweep writes no report"
    status = json.loads((tmp_path / "ray_results" / "ci" / "w2s_status.json").read_text())
    assert status["status"] == "interrupted"

    rc, out = Sweep(tmp_path, "space.yaml", "--name", "ci").wait()
    assert rc == 0, out[-3000:]
    assert "resuming it" in out and "best trial" in out
    with open(tmp_path / "ray_results" / "ci" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["param.seed"] for r in rows) == ["0", "1", "2", "3"]
    assert all(r["status"] == "completed" for r in rows), rows
    _, runs = mlflow_runs(tmp_path, "faults-interrupt", "ci")
    children = [r for r in runs if r.data.tags["w2s.role"] == "trial"]
    assert sorted(r.data.params["seed"] for r in children) == ["0", "1", "2", "3"]
