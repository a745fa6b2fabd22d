"""Capacity (issue 20): a trial the cluster cannot hold even at its largest is refused before the
sweep starts (exit 2, one line naming the trial shape and the capacity); a trial that needs the
autoscaler waits for it, says so, and stops the sweep (resumable, exit 3) after
``resources.autoscale_wait_s``.

The unit tests use hand-made cluster descriptions; the slow ones run the quickstart against a
2-CPU loopback Ray started with ``ray start --head --num-cpus 2`` (no autoscaler)."""
import os
import secrets
import subprocess
import sys
import tempfile
import time

import pytest

from orchestrator.errors import UserError
from orchestrator.run.resources import Autoscaling, ClusterResources, _readonly_type, plan_resources
from orchestrator.run.watchdog import SweepStalled, Watchdog
from orchestrator.space.spec import parse_spec
from tests.conftest import REPO
from tests.test_spec import BASE

ADDR = "cluster at 10.0.0.1:6379"
TWO_WORKERS = BASE + "resources: {workers: 2, cpus_per_worker: 1}\n"


def cluster(autoscaling, cpus=2.0, gpus=0.0, nodes=1):
    return ClusterResources(cpus=cpus, gpus=gpus, source=ADDR, driver_slots=0, nodes=nodes, autoscaling=autoscaling)


def test_a_trial_bigger_than_a_fixed_cluster_is_refused_in_one_line():
    with pytest.raises(UserError) as info:
        plan_resources(parse_spec(TWO_WORKERS), cluster(Autoscaling(False)), strict=False)
    assert str(info.value) == ("resources: a 2-worker trial needs 2 workers x 1 CPU + 0.01 CPU for its driver = 2.01 "
                               f"CPU; the {ADDR} has 2 CPU in all (1 node) and no autoscaler: lower resources.workers "
                               "/ cpus_per_worker, or add nodes")


def test_beyond_the_autoscalers_maximum_is_refused():
    scaling = Autoscaling(True, {"CPU": 3.0, "GPU": 0.0}, "the cluster config its autoscaler reported")
    spec = parse_spec(BASE + "resources: {workers: 4, cpus_per_worker: 1}\n")
    with pytest.raises(UserError, match=r"needs 4 workers x 1 CPU \+ 0.01 CPU for its driver = 4.01 CPU; .* has 2 CPU "
                                        r"in all \(1 node\) and its autoscaler can grow it to 3 CPU at most"):
        plan_resources(spec, cluster(scaling), strict=False)
    with pytest.raises(UserError, match=r"1 worker x 1 GPU = 1 GPU; .* has 0 GPU in all \(2 nodes\) and its "
                                        r"autoscaler can grow it to 0 GPU at most.*gpus_per_worker"):
        plan_resources(parse_spec(BASE + "resources: {gpus_per_worker: 1}\n"), cluster(scaling, cpus=8, nodes=2),
                       strict=False)


def test_within_the_autoscalers_reach_the_plan_waits_for_it():
    spec = parse_spec(TWO_WORKERS + "")
    spec.resources.autoscale_wait_s = 120
    for scaling in (Autoscaling(True, None, "ray up's autoscaler"), Autoscaling(True, {"CPU": 64.0}, "config")):
        plan = plan_resources(spec, cluster(scaling), strict=False)
        assert plan.autoscale_needs == {"CPU": 2.01} and plan.autoscale_wait_s == 120
        assert "waits for the autoscaler: a 2-worker trial needs 2.01 CPU, the cluster has 2 now" in "\n".join(plan.lines())
    # What fits now does not wait; the local machine (no autoscaling info) keeps its strict check.
    assert plan_resources(spec, cluster(Autoscaling(False), cpus=4), strict=False).autoscale_needs == {}
    assert parse_spec(BASE).resources.autoscale_wait_s == 900


def test_the_reference_runs_shape_is_checked_up_front():
    spec = parse_spec(BASE + "resources: {workers: 1}\ncontrol: {enabled: true, workers: 3}\n")
    with pytest.raises(UserError, match="a 3-worker trial needs 3 workers"):
        plan_resources(spec, cluster(Autoscaling(False)), strict=False)


def test_readonly_node_types_are_not_an_autoscaler():
    assert _readonly_type("node_7adafc42d666d7187287dabd6e64023c2f5b22ae3f8178971aa10a1d")
    assert not _readonly_type("ray.worker.default") and not _readonly_type("node_gpu")


def test_the_watchdog_gives_up_on_the_autoscaler_after_the_wait(monkeypatch):
    import orchestrator.run.watchdog as watchdog

    stops = []
    monkeypatch.setattr(watchdog, "_interrupt_tune", lambda: stops.append(1))
    now, said, total = [0.0], [], {"CPU": 2.0}
    dog = Watchdog(0, None, "resume with `run_sweep.py --resume s`", say=said.append, clock=lambda: now[0],
                   cluster_total=lambda: total)
    dog.autoscale_needs, dog.autoscale_reason, dog.autoscale_wait_s = {"CPU": 2.01}, "a 2-worker trial needs 2.01 CPU", 60
    dog.check()
    assert said == ["waiting for the autoscaler: a 2-worker trial needs 2.01 CPU; giving up after 60s "
                    "(resources.autoscale_wait_s)"]
    now[0] = 20
    assert dog.waiting_note() == "waiting for the autoscaler (a 2-worker trial needs 2.01 CPU), gives up in 40s"
    now[0] = 61
    dog.check()
    assert dog.aborted and stops == [1] and "within resources.autoscale_wait_s 60s" in said[-1]
    with pytest.raises(SweepStalled, match="did not grow to fit the trials") as info:
        dog.raise_if_aborted()
    assert info.value.exit_code == 3 and "--resume s" in str(info.value)


def test_the_watchdog_stops_waiting_once_nodes_come():
    now, said, total = [0.0], [], {"CPU": 2.0}
    dog = Watchdog(0, None, "r", say=said.append, clock=lambda: now[0], cluster_total=lambda: total)
    dog.autoscale_needs, dog.autoscale_reason, dog.autoscale_wait_s = {"CPU": 2.01}, "x", 60
    dog.check()
    total["CPU"], now[0] = 4.0, 30
    dog.check()
    now[0] = 100
    dog.check()
    assert not dog.aborted and dog.waiting_note() is None and "the waiting trials fit" in said[-1]


# -- against a running 2-CPU Ray (no autoscaler) -------------------------------------------------
@pytest.fixture(scope="module")
def two_cpu_ray():
    from tests.test_multinode import free_port, kill_session, wait_for_port

    tmp = tempfile.mkdtemp(prefix="w2s-cap-", dir="/tmp")  # short: Ray's socket paths have a length limit
    bin_dir = os.path.dirname(sys.executable)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "W2S_MLFLOW_URI", "W2S_STORAGE_PATH")}
    env.update({"PATH": bin_dir + os.pathsep + env.get("PATH", ""), "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN": secrets.token_hex(16), "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1",
                "W2S_CLUSTER_ENV": os.path.join(tmp, "no-cluster.env")})
    port, log = free_port(), os.path.join(tmp, "head.log")
    proc = subprocess.Popen([os.path.join(bin_dir, "ray"), "start", "--head", "--block", "--num-cpus", "2",
                             "--num-gpus", "0", "--port", str(port), "--node-ip-address", "127.0.0.1",
                             "--include-dashboard=false", "--disable-usage-stats", "--temp-dir",
                             os.path.join(tmp, "ray")], env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_for_port("127.0.0.1", port, 120, proc, log)
        yield f"127.0.0.1:{port}", env, tmp
    finally:
        # Only this test's Ray: `ray stop` would stop every Ray on the machine (a CI run's too).
        kill_session(proc.pid)
        subprocess.run(["rm", "-rf", tmp], check=False)


def sweep(address, env, cwd, *args, timeout, as_job=False):
    """run_sweep.py against the cluster: with --address, or (``as_job``) as `ray job submit` starts
    its entrypoint, with the cluster in $RAY_ADDRESS and no flag."""
    where = [] if as_job else ["--address", address]
    env = {**env, "RAY_ADDRESS": address} if as_job else env
    return subprocess.run([sys.executable, os.path.join(REPO, "run_sweep.py"), *where,
                           "--storage-path", os.path.join(cwd, "results"), "--mlflow-uri",
                           f"sqlite:///{cwd}/mlflow.db", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_quickstart_on_a_2_cpu_cluster_is_refused_within_60s(two_cpu_ray):
    address, env, tmp = two_cpu_ray
    work = os.path.join(tmp, "refused")
    os.makedirs(work)
    t0 = time.time()
    proc = sweep(address, env, work, "--name", "cap", timeout=120, as_job=True)
    took = time.time() - t0
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert took < 60
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: resources: a 2-worker trial needs 2 workers x 1 CPU + 0.01 CPU for its driver = 2.01 "
                      f"CPU; the cluster at {address} has 2 CPU in all (1 node) and no autoscaler: lower "
                      "resources.workers / cpus_per_worker, or add nodes"], proc.stderr[-3000:]
    assert not os.path.exists(os.path.join(work, "results", "cap"))  # no sweep folder, no status, no trial
    assert "parent run" not in proc.stdout


@pytest.mark.slow
def test_quickstart_that_fits_the_2_cpu_cluster_runs(two_cpu_ray):
    address, env, tmp = two_cpu_ray
    work = os.path.join(tmp, "fits")
    os.makedirs(work)
    proc = sweep(address, env, work, "--name", "fits", "--set", "num_samples=1", "--set", "points_to_evaluate=[]",
                 "--set", "params.epochs=1", "--set", "params.teacher.epochs=1", "--set", "control.enabled=false",
                 "--set", "scheduler.type=fifo", timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "autoscaler: none" in proc.stdout
    assert os.path.isfile(os.path.join(work, "results", "fits", "best_config.json"))
