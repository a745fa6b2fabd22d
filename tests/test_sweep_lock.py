"""One driver per sweep, without Ray: the sweep lock (local flock and the s3 conditional write),
MLflow experiment creation by two processes on a brand-new sqlite store, and the clean-up after a
SIGKILLed driver's local Ray (on stand-in processes). The end-to-end cases (two real drivers, a
killed driver's Ray) are in tests/test_reliability_e2e.py."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from orchestrator.errors import UserError
from orchestrator.run.local_ray import clean_up_dead_driver
from orchestrator.store.layout import LOCAL_RAY_FILE
from orchestrator.store.lock import acquire_sweep_lock, holder_info, proc_start_time
from tests.conftest import REPO


def test_a_second_acquirer_is_refused_naming_the_holder(tmp_path):
    out = str(tmp_path / "sweep")
    with acquire_sweep_lock(out, "exp") as lock:
        assert lock.took_over() is None
        with pytest.raises(UserError) as err:
            acquire_sweep_lock(out, "exp")
        message = str(err.value)
        assert "\n" not in message and err.value.exit_code == 2
        assert f"sweep exp is already running (driver pid {os.getpid()} on host {socket.gethostname()}" in message
        assert "--resume exp" in message
    with acquire_sweep_lock(out, "exp") as again:  # released: free, and not a take-over
        assert again.took_over() is None
    assert not os.path.exists(out)  # the lock file and the folder the lock alone made are gone


def test_the_lock_of_a_sigkilled_driver_is_taken_over(tmp_path):
    out = str(tmp_path / "sweep")
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from orchestrator.store.lock import acquire_sweep_lock
            lock = acquire_sweep_lock({out!r}, "exp")
            print("locked", flush=True)
            time.sleep(600)
        """)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        with pytest.raises(UserError, match=f"driver pid {holder.pid} on host"):
            acquire_sweep_lock(out, "exp")
        assert time.monotonic() - t0 < 5
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        with acquire_sweep_lock(out, "exp") as lock:
            line = lock.took_over()
            assert line and f"from driver pid {holder.pid} on host {socket.gethostname()}" in line
            assert "no longer running" in line
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_the_s3_lock_is_a_conditional_write(monkeypatch):
    moto = pytest.importorskip("moto")
    import boto3

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    with moto.mock_aws():
        boto3.client("s3").create_bucket(Bucket="bucket")
        lock = acquire_sweep_lock("s3://bucket/results/exp", "exp")
        with pytest.raises(UserError, match=f"sweep exp is already running \\(driver pid {os.getpid()}"):
            acquire_sweep_lock("s3://bucket/results/exp", "exp")
        lock.release()
        acquire_sweep_lock("s3://bucket/results/exp", "exp").release()


CREATE = """
import sys, time
from orchestrator.store.tracking import Tracker
start = float(sys.argv[2])
while time.time() < start:
    time.sleep(0.001)
print("id", Tracker(sys.argv[1], "race").ensure_experiment(), flush=True)
"""


def test_two_processes_creating_the_experiment_on_a_new_sqlite_store_converge(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    start = time.time() + 6  # both past their imports, then at the same moment
    procs = [subprocess.Popen([sys.executable, "-c", CREATE, uri, str(start)], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=120) for p in procs]
    ids = set()
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0 and "Traceback" not in err, err[-2000:]
        ids.update(line.split()[1] for line in out.splitlines() if line.startswith("id "))
    assert len(ids) == 1


def _dead_pid() -> tuple[int, int | None]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    start = proc_start_time(proc.pid)
    proc.kill()
    proc.wait()
    return proc.pid, start


def test_a_dead_drivers_local_ray_is_stopped_and_its_temp_dir_removed(tmp_path):
    """Stand-ins for a killed driver's Ray: one recorded process, one started later (a worker)
    that only inherited RAY_TMPDIR, and a bystander that must survive."""
    ray_tmp = tempfile.mkdtemp(prefix="w2s-ray-", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    recorded = subprocess.Popen(sleeper + [f"--temp-dir={ray_tmp}/ray"], env=env)
    worker = subprocess.Popen(sleeper, env=env)
    bystander = subprocess.Popen(sleeper + [f"--temp-dir={ray_tmp}x"])  # a longer name, not this dir
    try:
        time.sleep(0.3)
        pid, start = _dead_pid()
        driver = {**holder_info(), "pid": pid, "pid_start": start}
        record = {"driver": driver, "temp_dir": ray_tmp,
                  "processes": [{"pid": recorded.pid, "start": proc_start_time(recorded.pid), "cmd": "gcs_server"},
                                {"pid": bystander.pid, "start": 1, "cmd": "reused pid"}]}  # not the same process
        (tmp_path / LOCAL_RAY_FILE).write_text(json.dumps(record))
        line = clean_up_dead_driver(str(tmp_path), grace_s=2)
        assert line == (f"  the sweep's previous driver (pid {pid}) is gone: stopped 2 leftover local Ray process(es) "
                        f"and removed its Ray temp dir {ray_tmp}")
        assert recorded.wait(timeout=10) is not None and worker.wait(timeout=10) is not None
        assert bystander.poll() is None and not os.path.exists(ray_tmp)
        assert clean_up_dead_driver(str(tmp_path)) is None  # done once
    finally:
        for proc in (recorded, worker, bystander):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_dead_drivers_exited_but_unreaped_processes_are_not_reported_as_stopped(tmp_path):
    """Right after a driver's exit its Ray's last processes can be zombies for a moment (exited,
    not yet reaped): already gone, so the resume only removes the temp dir."""
    ray_tmp = tempfile.mkdtemp(prefix="w2s-ray-", dir="/tmp")
    zombie = subprocess.Popen([sys.executable, "-c", "pass", f"--temp-dir={ray_tmp}/ray"])
    try:
        deadline = time.monotonic() + 30
        while open(f"/proc/{zombie.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the child did not exit"
            time.sleep(0.05)
        pid, start = _dead_pid()
        record = {"driver": {**holder_info(), "pid": pid, "pid_start": start}, "temp_dir": ray_tmp,
                  "processes": [{"pid": zombie.pid, "start": proc_start_time(zombie.pid), "cmd": "raylet"}]}
        (tmp_path / LOCAL_RAY_FILE).write_text(json.dumps(record))
        line = clean_up_dead_driver(str(tmp_path), grace_s=2)
        assert line == f"  the sweep's previous driver (pid {pid}) is gone: removed its Ray temp dir {ray_tmp}"
        assert not os.path.exists(ray_tmp)
    finally:
        zombie.wait()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_a_live_drivers_local_ray_is_left_alone(tmp_path):
    ray_tmp = tempfile.mkdtemp(prefix="w2s-ray-", dir="/tmp")
    try:
        alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            driver = {**holder_info(), "pid": alive.pid, "pid_start": proc_start_time(alive.pid)}
            (tmp_path / LOCAL_RAY_FILE).write_text(json.dumps({"driver": driver, "temp_dir": ray_tmp, "processes": []}))
            assert clean_up_dead_driver(str(tmp_path)) is None and os.path.isdir(ray_tmp)
        finally:
            alive.kill()
            alive.wait()
    finally:
        os.rmdir(ray_tmp)


@pytest.mark.parametrize("ending,code", [(KeyboardInterrupt, 130), (UserError("bad"), 2), (RuntimeError("bug"), 4),
                                         (None, 1)])
def test_the_lock_is_released_on_every_exit_path(tmp_path, monkeypatch, capsys, ending, code):
    """Ctrl-C, an error, an unexpected error, a normal end: the next driver finds the sweep free
    (and no take-over: the lock was let go, not lost)."""
    import orchestrator.run.sweep
    import tests.plugins.faults  # noqa: F401 - registers the `faulty` trainable
    from orchestrator import cli

    held = []

    def fake_run_sweep(spec, text, opts):
        held.append(os.path.exists(tmp_path / "ray_results" / "exp" / "w2s_driver.lock"))
        if ending is not None:
            raise ending

        class Report:
            best = None
        return Report()

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(orchestrator.run.sweep, "run_sweep", fake_run_sweep)
    (tmp_path / "space.yaml").write_text("name: t\ntrainable: faulty\nparams: {epochs: 2}\n"
                                         "search:\n  seed: {grid: [0, 1]}\ncontrol: {enabled: false}\n")
    assert cli.main(["space.yaml", "--name", "exp"]) == code
    assert held == [True]
    err = capsys.readouterr().err
    if "full traceback in " in err:
        os.remove(err.split("full traceback in ")[1].split(")")[0])
    with acquire_sweep_lock(str(tmp_path / "ray_results" / "exp"), "exp") as lock:
        assert lock.took_over() is None
