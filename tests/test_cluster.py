"""Cluster mode without a cluster: where the MLflow and storage defaults come from, how the code
is shipped to workers, the refusal of node-local locations on several machines, and cloud URIs
resolving through pyarrow offline."""
import os

import pyarrow.fs as pafs
import pytest

from orchestrator.cli import main
from orchestrator.errors import UserError
from orchestrator.run.cluster import (DEFAULT_MLFLOW_PORT, check_shared_locations, code_packages, filesystem_type,
                                      read_env_file, resolve_locations, worker_runtime_env)
from orchestrator.store.cache import ArtifactCache, resolve_filesystem
from tests.conftest import REPO

CLUSTER_ENV = ("# written by deploy/configure_node.sh\n"
               "W2S_STORAGE_PATH=s3://team-bucket/w2s\n"
               f"W2S_MLFLOW_URI=http://127.0.0.1:{DEFAULT_MLFLOW_PORT}\n"
               "export W2S_MULTI_HOST='1'\n")


@pytest.fixture
def cluster_env(tmp_path):
    path = tmp_path / "cluster.env"
    path.write_text(CLUSTER_ENV)
    return {"W2S_CLUSTER_ENV": str(path)}


def test_env_file_is_parsed(cluster_env):
    values = read_env_file(cluster_env["W2S_CLUSTER_ENV"])
    assert values == {"W2S_STORAGE_PATH": "s3://team-bucket/w2s", "W2S_MLFLOW_URI": "http://127.0.0.1:5000",
                      "W2S_MULTI_HOST": "1"}


def test_cluster_defaults_apply_only_with_an_address(cluster_env, tmp_path):
    on_cluster = resolve_locations(None, None, "auto", environ=cluster_env, cwd=str(tmp_path))
    assert on_cluster.mlflow_uri == "http://127.0.0.1:5000"
    assert on_cluster.storage_path == "s3://team-bucket/w2s"
    assert on_cluster.origins["mlflow"] == f"W2S_MLFLOW_URI in {cluster_env['W2S_CLUSTER_ENV']}"

    local = resolve_locations(None, None, None, environ=cluster_env, cwd=str(tmp_path))
    assert local.mlflow_uri == f"sqlite:///{tmp_path}/mlflow.db"
    assert local.storage_path == f"{tmp_path}/ray_results"
    assert local.origins == {"mlflow": "local default", "storage": "local default"}


def test_flags_beat_environment_beat_env_file(cluster_env, tmp_path):
    environ = {**cluster_env, "W2S_STORAGE_PATH": "gs://other/w2s", "W2S_MLFLOW_URI": "http://127.0.0.1:5055"}
    where = resolve_locations(None, None, "auto", environ=environ, cwd=str(tmp_path))
    assert (where.storage_path, where.origins["storage"]) == ("gs://other/w2s", "$W2S_STORAGE_PATH")
    assert where.mlflow_uri == "http://127.0.0.1:5055"
    where = resolve_locations("sqlite:///x.db", "rel/out", "auto", environ=environ, cwd=str(tmp_path))
    assert where.mlflow_uri == f"sqlite:///{tmp_path}/x.db"
    assert where.storage_path == f"{tmp_path}/rel/out"
    assert where.origins == {"mlflow": "--mlflow-uri", "storage": "--storage-path"}


def test_a_query_string_in_the_storage_uri_is_refused(tmp_path):
    with pytest.raises(UserError, match="no query string in the storage URI"):
        resolve_locations(None, "s3://b/w2s?region=us-west-2", None, environ={}, cwd=str(tmp_path))


def test_dry_run_says_where_each_default_came_from(cluster_env, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("W2S_CLUSTER_ENV", cluster_env["W2S_CLUSTER_ENV"])
    monkeypatch.delenv("W2S_MLFLOW_URI", raising=False)
    monkeypatch.delenv("W2S_STORAGE_PATH", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["--address", "auto", "--dry-run", "--storage-path", "gs://mine/w2s"]) == 0
    out = capsys.readouterr().out
    assert f"mlflow: http://127.0.0.1:5000  (from W2S_MLFLOW_URI in {cluster_env['W2S_CLUSTER_ENV']})" in out
    assert "storage: gs://mine/w2s  (from --storage-path)" in out


def test_workers_get_the_drivers_code_on_a_cluster():
    env = {"PYTHONPATH": REPO, "RAY_DEDUP_LOGS": "1"}
    assert worker_runtime_env(env, None, REPO) == {"env_vars": env}
    remote = worker_runtime_env(env, "auto", REPO)
    assert remote["env_vars"] == {"RAY_DEDUP_LOGS": "1"}  # no path that only exists on this machine
    assert {os.path.basename(p) for p in remote["py_modules"]} >= {"orchestrator", "trainables"}
    assert remote["py_modules"] == code_packages(REPO)
    assert all(os.path.isfile(os.path.join(p, "__init__.py")) for p in remote["py_modules"])


MOUNTS = """overlay / overlay rw 0 0
/dev/nvme0n1p1 /home ext4 rw 0 0
fs-1234.efs.us-west-2.amazonaws.com:/ /mnt/efs nfs4 rw 0 0
gcsfuse /mnt/gcs fuse.gcsfuse rw 0 0
"""


def test_filesystem_type_takes_the_longest_mount_point():
    assert filesystem_type("/mnt/efs/team/mlflow.db", MOUNTS) == "nfs4"
    assert filesystem_type("/mnt/efsx", MOUNTS) == "overlay"
    assert filesystem_type("/home/ubuntu/x", MOUNTS) == "ext4"


def test_node_local_locations_are_refused_on_several_machines():
    local_db, local_dir = "sqlite:////home/ubuntu/mlflow.db", "/home/ubuntu/ray_results"
    with pytest.raises(UserError, match="an sqlite file on this node's local disk.*2 machines"):
        check_shared_locations(local_db, "s3://b/w2s", {"ip-10-0-0-1", "ip-10-0-0-2"}, False, MOUNTS)
    with pytest.raises(UserError, match="--storage-path /home/ubuntu/ray_results: a local directory"):
        check_shared_locations("http://127.0.0.1:5000", local_dir, {"head"}, True, MOUNTS)
    # shared filesystems, cloud storage, or every node on one machine are fine
    check_shared_locations("sqlite:////mnt/efs/mlflow.db", "/mnt/gcs/w2s", {"a", "b"}, True, MOUNTS)
    check_shared_locations("http://127.0.0.1:5000", "gs://b/w2s", {"a", "b"}, True, MOUNTS)
    check_shared_locations(local_db, local_dir, {"one-machine"}, False, MOUNTS)


@pytest.mark.parametrize("uri, fs_type, path", [
    ("s3://team-bucket/w2s?region=us-west-2", "S3FileSystem", "team-bucket/w2s"),
    ("gs://team-bucket/w2s", "GcsFileSystem", "team-bucket/w2s"),
])
def test_cloud_uris_resolve_offline(uri, fs_type, path):
    fs, inner = resolve_filesystem(uri)
    assert type(fs).__name__ == fs_type and inner == path


def test_the_cache_on_a_bucket_is_not_a_local_directory():
    cache = ArtifactCache("gs://team-bucket/w2s/cache")
    assert isinstance(cache.fs, pafs.GcsFileSystem) and not cache.is_local
    assert cache.root == "team-bucket/w2s/cache"
