"""cluster.yaml and cluster-gcp.yaml, checked offline: Ray's own schema validation (what `ray up`
runs first), the shell commands they run, and their agreement with what run_sweep.py defaults to
and what the README tells users."""
import copy
import os
import re
import subprocess

import jsonschema
import pytest
import yaml

from orchestrator.run.cluster import DEFAULT_MLFLOW_PORT, resolve_locations, validate_cluster_yaml
from orchestrator.run.resources import DRIVER_RESOURCE
from tests.conftest import REPO

CONFIGS = {"cluster.yaml": "s3", "cluster-gcp.yaml": "gs"}
COMMAND_KEYS = ["initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands"]
REMOTE_REPO = "~/w2s-sweep"


def load(name):
    with open(os.path.join(REPO, name)) as f:
        return yaml.safe_load(f)


def commands(config):
    return [c for key in COMMAND_KEYS for c in config.get(key, [])]


def write(tmp_path, config, name="broken.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.parametrize("name", CONFIGS)
def test_valid_for_rays_cluster_launcher(name):
    prepared = validate_cluster_yaml(os.path.join(REPO, name))
    config = load(name)
    # Every command list is spelled out, so none of the provider's default commands (which
    # install a nightly Ray wheel) is merged in by `ray up`.
    assert all(key in config for key in COMMAND_KEYS)
    assert prepared["head_setup_commands"] == config["setup_commands"] + config["head_setup_commands"]
    assert prepared["worker_start_ray_commands"] == config["worker_start_ray_commands"]


@pytest.mark.parametrize("name", CONFIGS)
def test_broken_copies_fail_with_rays_errors(name, tmp_path):
    config = load(name)
    typo = copy.deepcopy(config)
    typo["available_node_types"][config["head_node_type"]]["min_wokers"] = 0
    with pytest.raises(jsonschema.ValidationError, match="'min_wokers' was unexpected"):
        validate_cluster_yaml(write(tmp_path, typo))

    too_many = copy.deepcopy(config)
    worker = next(t for t in config["available_node_types"] if t != config["head_node_type"])
    too_many["available_node_types"][worker]["min_workers"] = config["max_workers"] + 1
    with pytest.raises(ValueError, match="max_workers` is smaller than the sum of `min_workers`"):
        validate_cluster_yaml(write(tmp_path, too_many))

    no_head = copy.deepcopy(config)
    no_head["head_node_type"] = "hed"
    with pytest.raises(ValueError, match="`head_node_type` must be one of `available_node_types`"):
        validate_cluster_yaml(write(tmp_path, no_head))

    bad_resources = copy.deepcopy(config)
    bad_resources["available_node_types"][config["head_node_type"]]["resources"][DRIVER_RESOURCE] = 0.5
    with pytest.raises(jsonschema.ValidationError, match="0.5 is not of type 'integer'"):
        validate_cluster_yaml(write(tmp_path, bad_resources))


@pytest.mark.parametrize("name", CONFIGS)
def test_every_command_is_valid_shell(name):
    for command in commands(load(name)):
        proc = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
        assert proc.returncode == 0, f"{name}: {command!r}: {proc.stderr}"
    scripts = {m for c in commands(load(name)) for m in re.findall(rf"{REMOTE_REPO}/(deploy/\S+\.sh)", c)}
    assert scripts == {"deploy/configure_node.sh", "deploy/start_mlflow.sh"}
    for script in scripts:
        proc = subprocess.run(["bash", "-n", os.path.join(REPO, script)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


def configure_command(config):
    line = next(c for c in config["setup_commands"] if "configure_node.sh" in c)
    return line.replace(REMOTE_REPO, REPO)


@pytest.mark.parametrize("name, scheme", CONFIGS.items())
def test_node_settings_are_what_run_sweep_uses(name, scheme, tmp_path):
    """Run the config's own configure_node.sh line (bucket filled in) and read the file it
    writes the way run_sweep.py --address does."""
    config = load(name)
    env_file = tmp_path / "cluster.env"
    env = {**os.environ, "W2S_CLUSTER_ENV": str(env_file)}
    shipped = subprocess.run(["bash", "-c", configure_command(config)], env=env, capture_output=True, text=True)
    assert shipped.returncode == 2 and "still names the placeholder bucket" in shipped.stderr

    command = configure_command(config).replace("YOUR-BUCKET", "team-bucket")
    done = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    where = resolve_locations(None, None, "auto", environ={"W2S_CLUSTER_ENV": str(env_file)}, cwd=str(tmp_path))
    assert where.mlflow_uri == f"http://127.0.0.1:{DEFAULT_MLFLOW_PORT}"
    assert where.storage_path == f"{scheme}://team-bucket/w2s"
    assert f"--mlflow-port {DEFAULT_MLFLOW_PORT}" in command


def test_configure_node_rejects_bad_input(tmp_path):
    env = {**os.environ, "W2S_CLUSTER_ENV": str(tmp_path / "cluster.env")}
    script = os.path.join(REPO, "deploy", "configure_node.sh")
    for args, message in [(["/data/w2s"], "must be s3://BUCKET/PREFIX or gs://BUCKET/PREFIX"),
                          (["s3://b/w2s?region=x"], "no query string"),
                          (["s3://b/w2s", "--mlflow-port", "http"], "must be a number")]:
        proc = subprocess.run(["bash", script, *args], env=env, capture_output=True, text=True)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not os.path.exists(tmp_path / "cluster.env")


@pytest.mark.parametrize("name", CONFIGS)
def test_mlflow_and_ray_are_private_and_authenticated(name):
    config = load(name)
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    ray_starts = [c for c in starts if "ray start" in c]
    assert len(ray_starts) == 2 and all("RAY_AUTH_MODE=token ray start" in c for c in ray_starts)
    assert "--dashboard-host=127.0.0.1" in ray_starts[0]
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert any("deploy/start_mlflow.sh" in c for c in config["head_start_ray_commands"])
    with open(os.path.join(REPO, "deploy", "start_mlflow.sh")) as f:
        script = f.read()
    assert 'mlflow server --host 127.0.0.1 --port "$port"' in script and "0.0.0.0" not in script
    assert f"-p {DEFAULT_MLFLOW_PORT}" in " ".join(open(os.path.join(REPO, name)).read().split())


@pytest.mark.parametrize("name", CONFIGS)
def test_no_credentials_in_the_config(name):
    with open(os.path.join(REPO, name)) as f:
        text = f.read()
    assert not re.search(r"AKIA[0-9A-Z]{16}|BEGIN [A-Z ]*PRIVATE KEY|aws_secret|password|ssh_private_key", text, re.I)
    assert "auth_token:" in text  # the token travels as a file the user generated, not in the YAML


@pytest.mark.parametrize("name", CONFIGS)
def test_drivers_on_the_head_workers_on_spot(name):
    config = load(name)
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"][DRIVER_RESOURCE] >= 1
    spot = lambda t: ("InstanceMarketOptions" in t["node_config"]  # noqa: E731
                      or t["node_config"].get("scheduling", {}).get("provisioningModel") == "SPOT")
    assert not spot(head)
    default_workers = [t for n, t in config["available_node_types"].items() if t.get("max_workers", 0) > 0
                       and n != config["head_node_type"]]
    assert default_workers and all(spot(t) for t in default_workers)


@pytest.mark.parametrize("name", CONFIGS)
def test_images_match_the_pinned_ray_and_requirements_are_installed(name):
    config = load(name)
    with open(os.path.join(REPO, "requirements.txt")) as f:
        pinned = re.search(r"^ray\[[^\]]*\]==(\S+)$", f.read(), re.M).group(1)
    for key in ("head_image", "worker_image"):
        assert config["docker"][key].startswith(f"rayproject/ray:{pinned}-py311")
    assert f"pip install -q -r {REMOTE_REPO}/requirements.txt" in config["setup_commands"]
    assert config["file_mounts"][REMOTE_REPO] == "."


def test_readme_and_docs_agree_with_the_configs():
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    with open(os.path.join(REPO, "docs", "cluster.md")) as f:
        docs = f.read()
    section = readme.split("## Running on a cluster", 1)[1].split("\n## ", 1)[0]
    for text in ("ray up cluster.yaml", f"ray attach cluster.yaml -p {DEFAULT_MLFLOW_PORT}",
                 f"http://127.0.0.1:{DEFAULT_MLFLOW_PORT}", "ray job submit", "ray down cluster.yaml"):
        assert text in section, text
    for name in CONFIGS:  # every instance type of the configs is priced in the docs
        for node_type in load(name)["available_node_types"].values():
            machine = node_type["node_config"].get("InstanceType") or node_type["node_config"]["machineType"]
            assert f"`{machine}`" in docs, machine
