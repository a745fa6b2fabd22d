"""Running a sweep on a Ray cluster (``--address``): where the MLflow and storage defaults come
from, how the code reaches every node, and the checks that stop a multi-node sweep from writing
its results to one node's local disk.

* **Defaults.** ``cluster.yaml`` writes ``~/.w2s/cluster.env`` on every node (``deploy/
  configure_node.sh``): the bucket path and the head's MLflow server. With ``--address`` and no
  flag, ``run_sweep.py`` takes ``$W2S_MLFLOW_URI`` / ``$W2S_STORAGE_PATH`` from the environment
  first (``ray job submit --runtime-env-json`` can set them), then from that file. Without
  ``--address`` neither is read, so local runs and the test suite stay hermetic.
* **Code.** The driver ships its own top-level packages (``orchestrator``, ``trainables``) to
  every worker with ``runtime_env["py_modules"]``, so a node added by the autoscaler, or one
  whose copy of the repository is stale, still runs exactly the driver's code.
* **Shared locations.** Trials on other machines write checkpoints, caches and results to
  ``--storage-path`` themselves, and a resumed sweep (or the head's MLflow UI) must find the
  runs of the last one. A local path or an sqlite file is only right when every node can see
  it: all nodes on one machine, or a network filesystem. Otherwise it is refused up front.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from orchestrator.errors import UserError

CLUSTER_ENV_VAR = "W2S_CLUSTER_ENV"
DEFAULT_CLUSTER_ENV = "~/.w2s/cluster.env"
MLFLOW_URI_VAR = "W2S_MLFLOW_URI"
STORAGE_PATH_VAR = "W2S_STORAGE_PATH"
MULTI_HOST_VAR = "W2S_MULTI_HOST"  # "1" in the env file of a cluster.yaml node: it scales out to other machines
# The port the head's MLflow server listens on (127.0.0.1 only). cluster.yaml passes it to
# deploy/configure_node.sh, deploy/start_mlflow.sh reads it back; tests/test_cluster_config.py
# checks that the YAML files, the scripts and the README agree on it.
DEFAULT_MLFLOW_PORT = 5000

# Filesystem types whose files every node of a cluster can see.
NETWORK_FILESYSTEMS = {"nfs", "nfs4", "efs", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "cephfs", "ceph",
                       "glusterfs", "9p", "virtiofs"}


@dataclass
class Locations:
    mlflow_uri: str
    storage_path: str
    origins: dict[str, str] = field(default_factory=dict)  # "mlflow" / "storage" -> where the value came from


def cluster_env_path(environ: Mapping[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    return os.path.expanduser(environ.get(CLUSTER_ENV_VAR) or DEFAULT_CLUSTER_ENV)


def read_env_file(path: str) -> dict[str, str]:
    """``KEY=VALUE`` lines; ``#`` comments, blank lines, ``export`` and surrounding quotes allowed."""
    values: dict[str, str] = {}
    with open(path) as f:
        for raw in f:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            key, sep, value = line.removeprefix("export ").partition("=")
            if not sep:
                raise UserError(f"{path}: expected KEY=VALUE lines (got {line!r})")
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            values[key.strip()] = value
    return values


def resolve_locations(mlflow_flag: str | None, storage_flag: str | None, address: str | None,
                      environ: Mapping[str, str] | None = None, cwd: str | None = None) -> Locations:
    """The tracking URI and storage path: an explicit flag wins; with ``--address`` the cluster's
    defaults come next (environment, then the cluster env file); then the local defaults."""
    from orchestrator.store.tracking_uri import normalise_tracking_uri

    environ = os.environ if environ is None else environ
    cwd = cwd or os.getcwd()
    cluster: dict[str, str] = {}
    env_file = cluster_env_path(environ)
    if address and os.path.isfile(env_file):
        cluster = read_env_file(env_file)

    def pick(flag: str | None, flag_name: str, var: str) -> tuple[str | None, str]:
        if flag:
            return flag, flag_name
        if address and environ.get(var):
            return environ[var], f"${var}"
        if address and cluster.get(var):
            return cluster[var], f"{var} in {env_file}"
        return None, ""

    mlflow, mlflow_from = pick(mlflow_flag, "--mlflow-uri", MLFLOW_URI_VAR)
    storage, storage_from = pick(storage_flag, "--storage-path", STORAGE_PATH_VAR)
    if storage is None:
        storage, storage_from = os.path.join(cwd, "ray_results"), "local default"
    if "?" in storage:
        # Results, caches and Train runs are joined as <storage>/<name>/...; a query would end up mid-path.
        raise UserError(f"{storage_from} {storage}: no query string in the storage URI; set the region or an "
                        "S3-compatible endpoint with AWS_DEFAULT_REGION / AWS_ENDPOINT_URL_S3 instead")
    if "://" not in storage:
        storage = os.path.abspath(os.path.join(cwd, os.path.expanduser(storage)))
    return Locations(mlflow_uri=normalise_tracking_uri(mlflow, cwd), storage_path=storage,
                     origins={"mlflow": mlflow_from or "local default", "storage": storage_from})


def declared_multi_host(environ: Mapping[str, str] | None = None) -> bool:
    """The cluster env file says the cluster scales out to other machines (cluster.yaml's does),
    even while only the head node is up."""
    path = cluster_env_path(environ)
    return os.path.isfile(path) and read_env_file(path).get(MULTI_HOST_VAR) == "1"


# -- code on every node ---------------------------------------------------------------------------
def code_packages(repo_root: str) -> list[str]:
    """The repository's top-level Python packages (directories with an ``__init__.py``)."""
    return [os.path.join(repo_root, name) for name in sorted(os.listdir(repo_root))
            if not name.startswith(".") and os.path.isfile(os.path.join(repo_root, name, "__init__.py"))]


def worker_runtime_env(env_vars: dict[str, str], address: str | None, repo_root: str) -> dict[str, Any]:
    """On a local Ray the workers import the code from the repository (``PYTHONPATH``). On a
    cluster the code is uploaded with the job (``py_modules``), so workers on other machines do
    not depend on a copy at the same path there."""
    if not address:
        return {"env_vars": dict(env_vars)}
    return {"env_vars": {k: v for k, v in env_vars.items() if k != "PYTHONPATH"},
            "py_modules": code_packages(repo_root)}


def connection_error_message(address: str, exc: Exception) -> str:
    """Ray reports a refused token and an absent cluster alike; say what to check for both."""
    message = (f"--address {address}: no Ray cluster answers there, or it refused this client ({exc}). "
               "Start one with `ray start --head` or `ray up cluster.yaml`, or omit --address for a local Ray")
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        message += (". A cluster with token authentication (cluster.yaml's) needs RAY_AUTH_MODE=token here, and "
                    "its token in RAY_AUTH_TOKEN or ~/.ray/auth_token")
    return message


PROBE_TIMEOUT_S = 5.0


def probe_address(address: str, flag: str = "--address", timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Before anything is created (MLflow store, storage folder) and before ``ray.init``, which
    retries an unreachable address for minutes: one TCP connect to the address's port. ``auto``
    is left to Ray's own discovery, which fails fast."""
    import socket

    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return
    except (OSError, ValueError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (getattr(exc, "strerror", None) or str(exc))
    client = address.startswith("ray://")
    raise UserError(
        f"{flag} {address}: nothing answers at {host} port {port} ({reason}, after at most {timeout_s:g} s). Check "
        "that the cluster is up (`ray status` on its head node), that this is the head's "
        + ("Ray Client address (ray://HEAD:10001)" if client else "GCS address (HEAD:6379 by default; `auto` on a node)")
        + ", and that the port is open to this machine (firewall, SSH port forward); or omit --address for a local Ray")


# -- shared locations -----------------------------------------------------------------------------
def filesystem_type(path: str, mounts: str | None = None) -> str:
    """Type of the filesystem holding ``path`` (longest mount-point prefix in /proc/mounts)."""
    if mounts is None:
        try:
            with open("/proc/mounts") as f:
                mounts = f.read()
        except OSError:
            return ""
    path = os.path.realpath(path)
    best, fstype = "", ""
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        mount_point = parts[1].replace("\\040", " ")
        inside = path == mount_point or path.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, fstype = mount_point, parts[2]
    return fstype


def is_network_filesystem(path: str, mounts: str | None = None) -> bool:
    fstype = filesystem_type(path, mounts)
    return fstype in NETWORK_FILESYSTEMS or fstype.startswith("fuse.")


def check_shared_locations(mlflow_uri: str, storage_path: str, hosts: set[str], may_scale_out: bool,
                           mounts: str | None = None) -> None:
    """Refuse node-local locations when trials can run on more than one machine."""
    if len(hosts) <= 1 and not may_scale_out:
        return
    why = (f"{len(hosts)} machines in the cluster" if len(hosts) > 1
           else f"{MULTI_HOST_VAR}=1 in {cluster_env_path()}: the cluster scales out to other machines")
    if mlflow_uri.startswith("sqlite:///"):
        db = mlflow_uri[len("sqlite:///"):]
        if not is_network_filesystem(os.path.dirname(db), mounts):
            raise UserError(
                f"--mlflow-uri {mlflow_uri}: an sqlite file on this node's local disk, but trials run on "
                f"several machines ({why}). The runs would live only on this node: the head's MLflow UI "
                "would not show them, and a sweep resumed from another node would not find its parent run. "
                "Use the head node's MLflow server (the default on a cluster.yaml head, "
                f"http://127.0.0.1:{DEFAULT_MLFLOW_PORT}), or put the sqlite file on a shared filesystem (NFS/EFS)")
    if "://" not in storage_path and not is_network_filesystem(storage_path, mounts):
        raise UserError(
            f"--storage-path {storage_path}: a local directory, but trials run on several machines ({why}), "
            "and each would write its checkpoints, cache entries and results to its own disk. Use a bucket "
            "(s3://BUCKET/PREFIX or gs://BUCKET/PREFIX; the default on a cluster.yaml head) or a shared filesystem")


def check_cluster_locations(mlflow_uri: str, storage_path: str) -> None:
    """After connecting with ``--address``: the same check against the live cluster's machines."""
    import ray

    hosts = {n.get("NodeManagerHostname") or n.get("NodeManagerAddress") for n in ray.nodes() if n.get("Alive")}
    check_shared_locations(mlflow_uri, storage_path, hosts, declared_multi_host())


def origin_note(origins: dict[str, str], key: str) -> str:
    return f"  (from {origins[key]})" if origins.get(key) else ""


# -- cluster.yaml, checked offline ----------------------------------------------------------------
def validate_cluster_yaml(path: str) -> dict[str, Any]:
    """What `ray up` checks before it touches the cloud (it has no dry run): Ray's own
    ``prepare_config`` (provider defaults merged in) and ``validate_config`` (ray-schema.json,
    head_node_type, min/max workers). Raises Ray's error; returns the prepared config. Instance
    types, images, IAM and quotas are only checked by the cloud at `ray up`."""
    import copy

    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    with open(path) as f:
        config = yaml.safe_load(f)
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


if __name__ == "__main__":  # python -m orchestrator.run.cluster cluster.yaml [...]: check edited configs offline
    import sys

    for name in sys.argv[1:] or ["cluster.yaml"]:
        validate_cluster_yaml(name)
        with open(name) as f:
            left = sorted({p for p in ("YOUR-BUCKET", "YOUR-PROJECT-ID") if p in f.read()})
        print(f"{name}: valid for Ray's cluster launcher" + (f"; still to replace: {', '.join(left)}" if left else ""))
