"""A two-node Ray cluster on this machine, used the way a cluster.yaml head uses it.

Two `ray start` processes on loopback addresses (head 127.0.0.2, worker 127.0.0.3), one CPU each,
private temp dirs and free ports, Ray token authentication on. The cluster's storage is a bucket
on a local S3 server (moto), reached through the same pyarrow filesystems as AWS. The node
settings come from deploy/configure_node.sh and the MLflow server from deploy/start_mlflow.sh,
exactly as cluster.yaml runs them; run_sweep.py gets only --address and finds the rest itself.

Checks: trials ran on both nodes, results, best config, checkpoints and the teacher cache entry
are in the bucket, the MLflow runs are on the server (artifacts in the bucket), nothing was
written to the working directory, and a client without the token is turned away.

Clean-up kills only the process sessions this test started (never `ray stop`, which would stop
every Ray on the machine).
"""
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

BUCKET = "w2s-test"
HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"
SWEEP = ["--name", "mn", "--set", "num_samples=4", "--set", "control.enabled=false",
         "--set", "points_to_evaluate=[]", "--set", "scheduler.type=fifo", "--set", "params.epochs=4",
         "--set", "params.teacher.epochs=5", "--set", "checkpoint.every=2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen, log: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}: " + open(log).read()[-3000:])
        try:
            socket.create_connection((host, port), 1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s: " + open(log).read()[-3000:])


def wait_for_nodes(dashboard_port: int, token: str, count: int, timeout: float) -> None:
    """Until `count` nodes are alive, asked through the head's state API (with the token)."""
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{dashboard_port}/api/v0/nodes?limit=100",
                                     headers={"Authorization": f"Bearer {token}"})
    deadline, last = time.time() + timeout, None
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                nodes = json.loads(resp.read())["data"]["result"]["result"]
            last = [(n["node_ip"], n["state"]) for n in nodes]
            if sum(n["state"] == "ALIVE" for n in nodes) >= count:
                return
        except OSError as exc:
            last = exc
        time.sleep(1)
    raise TimeoutError(f"{count} Ray nodes not alive after {timeout}s: {last}")


def kill_session(sid: int) -> None:
    """SIGKILL every process of one session this test started (Ray workers make their own process
    groups, but stay in the session)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    os.kill(int(entry), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@dataclass
class LoopbackCluster:
    address: str
    env: dict
    mlflow_uri: str
    tmp: str


def s3_client(env):
    import boto3

    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], region_name=env["AWS_DEFAULT_REGION"],
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture(scope="module")
def cluster():
    from moto.server import ThreadedMotoServer

    tmp = tempfile.mkdtemp(prefix="w2s-mn-", dir="/tmp")  # short: Ray's socket paths have a length limit
    sessions: list[int] = []
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    s3.start()
    try:
        bin_dir = os.path.dirname(sys.executable)
        env = {k: v for k, v in os.environ.items()
               if k not in ("RAY_ADDRESS", "W2S_MLFLOW_URI", "W2S_STORAGE_PATH") and not k.startswith("AWS_")}
        env.update({
            "PATH": bin_dir + os.pathsep + env.get("PATH", ""),
            "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16), "RAY_USAGE_STATS_ENABLED": "0",
            "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{s3._port}", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "W2S_CLUSTER_ENV": os.path.join(tmp, "w2s", "cluster.env"), "W2S_MLFLOW_WORKERS": "1",
            "TMPDIR": os.path.join(tmp, "tmp"), "PYTHONUNBUFFERED": "1",
        })
        os.makedirs(env["TMPDIR"])
        s3_client(env).create_bucket(Bucket=BUCKET)

        # The head's set-up, as cluster.yaml runs it (with a free port instead of 5000).
        mlflow_port = free_port()
        subprocess.run(["bash", os.path.join(REPO, "deploy", "configure_node.sh"), f"s3://{BUCKET}/w2s",
                        "--mlflow-port", str(mlflow_port)], env=env, check=True, capture_output=True, text=True)
        mlflow = subprocess.Popen(["bash", os.path.join(REPO, "deploy", "start_mlflow.sh")], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        gcs, dashboard = free_port(), free_port()
        common = ["--block", "--num-cpus", "1", "--num-gpus", "0", "--disable-usage-stats",
                  "--dashboard-agent-listen-port", None]
        nodes = [
            ("head", ["--head", "--node-ip-address", HEAD_IP, "--port", str(gcs), "--dashboard-host", "127.0.0.1",
                      "--dashboard-port", str(dashboard), "--ray-client-server-port", str(free_port()),
                      "--resources", json.dumps({"TRAIN_DRIVER": 8})]),
            ("worker", ["--address", f"{HEAD_IP}:{gcs}", "--node-ip-address", WORKER_IP]),
        ]
        for name, args in nodes:
            log = os.path.join(tmp, f"{name}.log")
            cmd = [os.path.join(bin_dir, "ray"), "start", *args, *[str(free_port()) if a is None else a for a in common],
                   "--temp-dir", os.path.join(tmp, f"ray-{name}")]
            proc = subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                    start_new_session=True)
            sessions.append(proc.pid)
            if name == "head":
                wait_for_port(HEAD_IP, gcs, 120, proc, log)

        wait_for_nodes(dashboard, env["RAY_AUTH_TOKEN"], 2, 180)
        out, _ = mlflow.communicate(timeout=240)
        assert mlflow.returncode == 0, out
        with open(os.path.join(tmp, "w2s", "mlflow.pid")) as f:
            sessions.append(int(f.read()))  # start_mlflow.sh runs the server in its own session
        yield LoopbackCluster(address=f"{HEAD_IP}:{gcs}", env=env, mlflow_uri=f"http://127.0.0.1:{mlflow_port}",
                              tmp=tmp)
    finally:
        for sid in sessions:
            kill_session(sid)
        s3.stop()
        subprocess.run(["rm", "-rf", tmp], check=False)


@pytest.fixture(scope="module")
def sweep(cluster):
    workdir = os.path.join(cluster.tmp, "work")
    os.makedirs(workdir)
    proc = subprocess.run([sys.executable, os.path.join(REPO, "run_sweep.py"), "--address", cluster.address, *SWEEP],
                          cwd=workdir, env=cluster.env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc, workdir


def bucket_keys(env, prefix=""):
    pages = s3_client(env).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def read_object(env, key) -> str:
    return s3_client(env).get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()


def trial_results(env) -> list[list[dict]]:
    keys = [k for k in bucket_keys(env, "w2s/mn/") if k.endswith("/result.json")]
    return [[json.loads(line) for line in read_object(env, k).splitlines() if line.strip()] for k in keys]


def test_trials_ran_on_both_nodes(cluster, sweep):
    trials = trial_results(cluster.env)
    assert len(trials) == 4
    for reports in trials:
        assert [r["epoch"] for r in reports] == [1, 2, 3, 4]
    assert {r["node_ip"] for reports in trials for r in reports} == {HEAD_IP, WORKER_IP}


def test_results_checkpoints_and_cache_are_in_the_bucket(cluster, sweep):
    proc, workdir = sweep
    keys = bucket_keys(cluster.env, "w2s/")
    best = json.loads(read_object(cluster.env, "w2s/mn/best_config.json"))
    assert best["metric"] == "val_acc" and 0.0 <= best["value"] <= 1.0
    assert f"best trial {best['trial_id']}" in proc.stdout
    rows = read_object(cluster.env, "w2s/mn/results.csv").splitlines()
    assert len(rows) == 5 and rows[0].startswith("trial_id,status")
    assert any("/checkpoint_" in k for k in keys if k.startswith("w2s/mn/trial_"))
    manifests = [k for k in keys if k.startswith("w2s/cache/teacher/") and k.endswith("/MANIFEST.json")]
    assert len(manifests) == 1
    manifest = json.loads(read_object(cluster.env, manifests[0]))
    assert {"model.pt", "train_logits.pt"} <= set(manifest["files"])
    assert "teacher_cache_hit=False" in proc.stdout  # built once, by the preparation task
    # ... and every trial, on either node, read that entry back from the bucket.
    assert {r["teacher_test_acc"] for reports in trial_results(cluster.env) for r in reports} == \
        {manifest["meta"]["test_acc"]}
    assert sorted(os.listdir(workdir)) == []  # nothing went to the working directory


def test_mlflow_runs_are_on_the_heads_server(cluster, sweep):
    from mlflow.tracking import MlflowClient

    proc, _ = sweep
    assert f"MLflow: experiment 'quickstart'" in proc.stdout
    client = MlflowClient(tracking_uri=cluster.mlflow_uri)
    exp = client.get_experiment_by_name("quickstart")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`w2s.sweep` = 'mn'")
    parents = [r for r in runs if r.data.tags["w2s.role"] == "parent"]
    trials = [r for r in runs if r.data.tags["w2s.role"] == "trial"]
    assert len(parents) == 1 and len(trials) == 4
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in trials)
    assert all(r.info.status == "FINISHED" and 0.0 <= r.data.metrics["val_acc"] <= 1.0 for r in trials)
    assert {a.path for a in client.list_artifacts(parents[0].info.run_id)} >= {"best_config.json", "results"}
    # The server proxies artifacts to the cluster's bucket.
    assert any(k.startswith("w2s/mlflow-artifacts/") and k.endswith("best_config.json")
               for k in bucket_keys(cluster.env, "w2s/mlflow-artifacts/"))


def test_a_client_without_the_token_is_refused(cluster):
    env = {k: v for k, v in cluster.env.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE")}
    env["HOME"] = os.path.join(cluster.tmp, "no-token-home")  # no ~/.ray/auth_token to fall back on
    env["RAY_NUM_REDIS_GET_RETRIES"] = "3"  # Ray retries a refused connection about 20 times, 1 s apart
    proc = subprocess.run([sys.executable, os.path.join(REPO, "run_sweep.py"), "--address", cluster.address,
                           "--name", "mn-no-token", "--set", "num_samples=1"],
                          cwd=cluster.tmp, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "InvalidAuthToken" in proc.stderr  # Ray's own log line: the GCS turned the client away
    assert "or it refused this client" in proc.stderr and "needs RAY_AUTH_MODE=token here" in proc.stderr
