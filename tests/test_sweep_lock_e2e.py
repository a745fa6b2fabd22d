"""One driver per sweep, end to end (local Ray, MLflow on a brand-new sqlite file, the `faulty`
plugin trainable, two short trials):

* two drivers started together on one ``--name``: exactly one runs the sweep, the other is refused
  at once with one line naming the first (exit 2);
* a SIGKILLed driver's local Ray (its processes and temp dir) is gone after the resume.

Every process these tests start is in a session of its own (``Sweep``), and only those are killed.
"""
import glob
import json
import os
import re
import signal
import time

import pytest

from tests.test_reliability_e2e import Sweep, mlflow_runs, ray_processes, wait_for

pytestmark = pytest.mark.slow

SPACE = """
name: faults-lock
trainable: faulty
params:
  epochs: {epochs}
  loss_params: {{sleep_s: {sleep_s}}}
search:
  seed: {{grid: [0, 1]}}
resources: {{workers: 1, cpus_per_worker: 1, max_concurrent_trials: 1}}
checkpoint: {{every: 1, keep: 2}}
control: {{enabled: false}}
"""


def _wait_all(sweeps, timeout=900):
    """Exit code, seconds from start to exit, output of each."""
    start, ended = time.monotonic(), {}
    while len(ended) < len(sweeps) and time.monotonic() - start < timeout:
        for i, s in enumerate(sweeps):
            if i not in ended and s.proc.poll() is not None:
                ended[i] = time.monotonic() - start
        time.sleep(0.05)
    results = []
    for i, s in enumerate(sweeps):
        rc, out = s.wait(timeout=1)
        results.append((rc, ended.get(i), out))
    return results


def test_two_drivers_started_together_on_one_name_one_runs_the_other_exits_2(tmp_path):
    (tmp_path / "space.yaml").write_text(SPACE.format(epochs=2, sleep_s=0.2))
    first = Sweep(tmp_path, "space.yaml", "--name", "twin")
    second = Sweep(tmp_path, "space.yaml", "--name", "twin")  # a few ms later
    (rc1, t1, out1), (rc2, t2, out2) = _wait_all([first, second])
    assert sorted([rc1, rc2]) == [0, 2], (out1[-3000:], out2[-3000:])
    runs = [(first, t1, out1, rc1), (second, t2, out2, rc2)]
    winner, _, won, _ = next(r for r in runs if r[3] == 0)
    _, t_refused, refused, _ = next(r for r in runs if r[3] == 2)
    errors = [line for line in refused.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in refused, refused
    assert errors[0].startswith(f"error: sweep twin is already running (driver pid {winner.proc.pid} on host "), errors
    assert "local Ray" not in refused and "MLflow" not in refused  # refused before Ray and MLflow
    # The lock is taken before torch and Ray are imported: refused in about a second.
    assert t_refused is not None and t_refused < 5, t_refused
    assert "best trial" in won
    assert len(glob.glob(str(tmp_path / "ray_results" / "twin" / "experiment_state*.json"))) == 1
    _, runs = mlflow_runs(tmp_path, "faults-lock", "twin")
    assert sorted(r.data.tags["w2s.role"] for r in runs) == ["parent", "trial", "trial"]


def _in_group(pgid: int) -> list[int]:
    """Live processes of process group ``pgid`` (the killed driver's Ray processes inherit it)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != b"Z":
            pids.append(int(pid))
    return pids


def test_a_sigkilled_drivers_local_ray_is_cleaned_up_by_the_resume(tmp_path):
    (tmp_path / "space.yaml").write_text(SPACE.format(epochs=4, sleep_s=1.0))
    first = Sweep(tmp_path, "space.yaml", "--name", "killed")
    resumed = None
    try:
        wait_for(lambda: re.search(r"\[\s*1/2\] \S+ completed", first.output()), 600, first, "the first trial to end")
        ray_tmp = first.ray_tmp()
        assert ray_tmp and os.path.isdir(ray_tmp)
        record = json.loads((tmp_path / "ray_results" / "killed" / "w2s_local_ray.json").read_text())
        assert record["temp_dir"] == ray_tmp and record["processes"], record
        os.kill(first.proc.pid, signal.SIGKILL)  # the driver only: its Ray stays behind, as after `kill -9 PID`
        first.proc.wait()
        time.sleep(1)
        assert ray_processes(ray_tmp), "the killed driver left no Ray process: nothing to test"
        assert _in_group(first.proc.pid)

        resumed = Sweep(tmp_path, "--resume", "killed")
        rc, out = resumed.wait()
        assert rc == 0, out[-3000:]
        assert "took over the lock of sweep killed from driver pid" in out
        assert re.search(rf"the sweep's previous driver \(pid {first.proc.pid}\) is gone: stopped \d+ leftover local "
                         rf"Ray process\(es\) and removed its Ray temp dir {re.escape(ray_tmp)}", out), out[-3000:]
        assert not ray_processes(ray_tmp) and not os.path.exists(ray_tmp)
        assert not _in_group(first.proc.pid), "a process of the killed driver's group survived"  # independent check
    finally:
        first.kill_leftovers()
        if resumed is not None and resumed.proc.poll() is None:
            resumed.proc.kill()
            resumed.wait(timeout=30)
