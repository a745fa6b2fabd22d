"""Credentials never reach MLflow, a report file or the printed output (docs/reliability.md,
"Credentials never reach MLflow"): the key matcher (credential-like names in any case or separator
style; none of the project's own keys), URI password masking, the redaction of every writer, and a
small real sweep with planted credentials whose MLflow store and report files are searched for them."""
import glob
import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from orchestrator.store.secrets import (REDACTED, blank, is_secret_key, key_words, mask_uri, mask_uris_in_text,
                                        redact, redact_artifact, redact_yaml_text)
from tests.conftest import REPO

SPACES = os.path.join(REPO, "search_spaces")

# --- the matcher ---------------------------------------------------------------------------------

POSITIVES = [
    # the tester's report
    "apiToken", "hf-token", "private_key_pem", "pwd", "auth_header", "student_kwargs.api_token",
    # every case and separator style
    "api_token", "API_TOKEN", "ApiToken", "api-token", "api.token", "HFToken", "hfToken", "HF_TOKEN",
    "MLFLOW_TRACKING_TOKEN", "AWS_SECRET_ACCESS_KEY", "aws_access_key_id", "client_secret", "clientSecret",
    "db.password", "DB_PASSWORD", "dbPassword", "mysecret", "passwd", "PWD", "passphrase",
    "credential", "credentials", "gcp.credentials.file", "auth", "Authorization", "bearer", "cookie",
    "api_key", "apiKey", "apikey", "API-KEY", "hfKey", "ssh_key", "ssh.private_key", "private_key", "privateKey",
    "wandb_api_keys", "loss_params.private_key", "spec.params.client_kwargs.pwd", "x/y/token",
]


@pytest.mark.parametrize("key", POSITIVES)
def test_credential_like_keys_in_any_style_are_secret(key):
    assert is_secret_key(key), key_words(key)


@pytest.mark.parametrize("key", ["tokenizer", "num_tokens", "monkey", "key", "keep", "checkpoint.keep", "author",
                                 "authors", "keys_per_class", "teacher_views", "view_seed", "metric", "passes",
                                 "bypass", "session", "keyframe_rate", "teacher_cache_id",
                                 "rows.key"])  # a recipe table's column
def test_words_that_only_contain_the_letters_are_not(key):
    assert not is_secret_key(key), key_words(key)


def test_keys_split_into_words_on_every_separator_and_camel_case():
    assert key_words("student_kwargs.apiToken") == ["student", "kwargs", "api", "token"]
    assert key_words("HFToken-v2/x") == ["hf", "token", "v", "2", "x"]
    assert key_words("private_key_pem") == ["private", "key", "pem"]


def _walk_keys(obj, prefix=""):
    if isinstance(obj, dict):
        for key, value in obj.items():
            full = f"{prefix}.{key}" if prefix else str(key)
            yield full
            yield str(key)
            yield from _walk_keys(value, full)
    elif isinstance(obj, list):
        for value in obj:
            yield from _walk_keys(value, prefix)


def project_keys(tmp_dir: str) -> set[str]:
    """Every key the project itself uses: each key of each search-space file (raw, and parsed with
    every default written out), every field of every parameter model of the trainables, losses and
    models, and every metric a trainable reports."""
    from pydantic import BaseModel

    from orchestrator.reports.export import complete_params
    from orchestrator.space.spec import load_spec
    from orchestrator.store.tracking import flatten
    from tests.seed_data import local_data_overrides
    from trainables.runtime.trainable import TRAINABLES, get_trainable

    keys: set[str] = set()
    for path in sorted(glob.glob(os.path.join(SPACES, "**", "*.yaml"), recursive=True)):
        with open(path) as f:
            keys |= set(_walk_keys(yaml.safe_load(f)))
        if os.sep + "recipes" + os.sep in path:
            continue
        spec = load_spec(path, local_data_overrides(path, tmp_dir))
        keys |= set(flatten(spec.resolved_dict(), "spec"))
        keys |= set(flatten(complete_params(spec.trainable, spec.fixed_config())))
        keys |= set(spec.domains)
    import importlib
    import pkgutil

    import trainables

    for info in pkgutil.walk_packages(trainables.__path__, "trainables."):
        try:
            module = importlib.import_module(info.name)
        except Exception:  # noqa: BLE001 - optional dependencies
            continue
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, BaseModel):
                keys |= set(value.model_fields)
    for name in TRAINABLES.names():
        trainable = get_trainable(name)
        if trainable.train_loop.__module__.startswith("tests."):
            continue  # test plugins (another test may have registered them) plant credentials on purpose
        keys |= set(trainable.metrics_doc) | {trainable.metric}
        keys |= set(flatten(trainable.params_model().model_dump(mode="json")))
    return keys


def test_none_of_the_projects_own_keys_is_flagged(tmp_path):
    keys = project_keys(str(tmp_path))
    assert len(keys) > 300, len(keys)  # the walk found the spaces and models
    flagged = sorted(k for k in keys if is_secret_key(k))
    assert flagged == []


# --- URIs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("uri, shown", [
    ("postgresql://user:s3cret@host/db", "postgresql://user:***@host/db"),
    ("postgresql+psycopg2://user:s3cret@host:5432/db?sslmode=require",
     "postgresql+psycopg2://user:***@host:5432/db?sslmode=require"),
    ("mysql://u:p%40ss@h:3306/mlflow", "mysql://u:***@h:3306/mlflow"),
    ("https://alice:pw@mlflow.example.com", "https://alice:***@mlflow.example.com"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("https://token@host/x", "https://token@host/x"),
    ("sqlite:////abs/mlflow.db", "sqlite:////abs/mlflow.db"),
    (None, None),
])
def test_uri_passwords_are_masked(uri, shown):
    assert mask_uri(uri) == shown


def test_uri_passwords_are_masked_inside_any_text():
    text = ("could not connect to postgresql://user:s3cret@host/db (and mysql://a:b@c:1/d); "
            "'http://x:y@z' and http://plain:80/")
    assert mask_uris_in_text(text) == ("could not connect to postgresql://user:***@host/db (and mysql://a:***@c:1/d); "
                                       "'http://x:***@z' and http://plain:80/")
    assert mask_uris_in_text("pw with an @: postgresql://u:p@ss@host/db") == "pw with an @: postgresql://u:***@host/db"


def test_tracking_uri_errors_mask_the_password():
    from orchestrator.errors import UserError
    from orchestrator.store.tracking import check_tracking_uri

    with pytest.raises(UserError) as err:
        check_tracking_uri("http://alice:s3cret@127.0.0.1:9", timeout_s=2)
    assert "s3cret" not in str(err.value) and "alice:***@127.0.0.1:9" in str(err.value)


def test_a_postgres_password_in_mlflow_uri_is_never_printed(run_cli, tmp_path):
    """The tester's case: the password must not be echoed in the error, nor in a dry run."""
    uri = "postgresql://user:s3cret-31337@127.0.0.1:9/db"
    args = ["search_spaces/quickstart.yaml", "--mlflow-uri", uri, "--storage-path", str(tmp_path / "rr")]
    proc = run_cli(*args, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode in (2, 4), out[-3000:]
    assert "s3cret-31337" not in out and "user:***@127.0.0.1:9/db" in out, out[-3000:]
    for log in re.findall(r"full traceback in (\S+)\)", out):
        assert "s3cret-31337" not in open(log).read()
    dry = run_cli(*args, "--dry-run", timeout=300)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "s3cret-31337" not in dry.stdout + dry.stderr and "mlflow: postgresql://user:***@127.0.0.1:9/db" in dry.stdout


def test_a_search_space_error_does_not_echo_a_credentials_value(run_cli, tmp_path):
    (tmp_path / "s.yaml").write_text("name: x\ntrainable: faulty\nparams:\n  api_token: {a: s3cretvalue}\n"
                                      "  client_kwargs: {pwd: [s3cret2, 2]}\n  lr: -1\n")
    proc = run_cli("s.yaml", "--dry-run", env={"W2S_PLUGINS": "tests.plugins.faults",
                                                "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")},
                   timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "s3cret" not in proc.stdout + proc.stderr
    assert "params.api_token: input should be a valid string (got '[redacted]')" in proc.stderr
    assert "(got -1)" in proc.stderr  # other values are still shown


def test_a_changed_credential_is_named_not_shown():
    from orchestrator.run.resume import first_difference

    diff = first_difference({"params": {"lr": 1, "hfToken": "old-s3cret"}}, {"params": {"lr": 1, "hfToken": "new"}})
    assert diff == "params.hfToken: [redacted] -> [redacted]"
    assert first_difference({"epochs": 2}, {"epochs": 3}) == "epochs: 2 -> 3"


# --- every writer --------------------------------------------------------------------------------


def test_report_files_have_credentials_blanked():
    payload = {"config": {"lr": 0.1, "api_token": "t0k", "client_kwargs": {"hf-token": "h", "endpoint":
                                                                             "postgresql://u:pw1@h/db"}}}
    out = json.loads(redact_artifact("best_config.json", json.dumps(payload).encode()))
    assert out == {"config": {"lr": 0.1, "api_token": REDACTED,
                              "client_kwargs": {"hf-token": REDACTED, "endpoint": "postgresql://u:***@h/db"}}}
    text = yaml.safe_dump({"params": payload["config"], "description": "best of x"}, sort_keys=False)
    redacted = redact_artifact("best_config.yaml", text.encode()).decode()
    assert yaml.safe_load(redacted)["params"] == out["config"]  # still valid YAML, values blanked
    assert redact_artifact("best_config.yaml", redacted.encode()).decode() == redacted  # idempotent
    csv_text = "trial_id,error\nt1,\"ValueError: api_token: t0k rejected by postgresql://u:pw1@h/db\"\n"
    assert "t0k" not in redact_artifact("results.csv", csv_text.encode()).decode()
    assert "pw1" not in redact_artifact("results.csv", csv_text.encode()).decode()
    png = b"\x89PNG\r\n\x1a\n api_token: t0k"
    assert redact_artifact("plots/x.png", png) == png  # binary files are built from redacted data
    assert blank([{"pwd": 1}]) == [{"pwd": REDACTED}] and redact([{"pwd": 1, "a": 2}]) == [{"a": 2}]
    assert redact_yaml_text('"apiToken": "x,y"') == "\"apiToken\": '[redacted]'"


def test_mlflow_files_metrics_and_values_are_redacted(tmp_path):
    from mlflow.entities import Metric, Param, RunTag

    from orchestrator.store.tracking import RedactingClient

    calls, uploaded = [], {}

    class Fake:
        def __getattr__(self, name):
            return lambda *a, **k: calls.append((name, a, k))

        def log_artifacts(self, run_id, local_dir, artifact_path=None):
            for root, _, files in os.walk(local_dir):
                for fname in files:
                    with open(os.path.join(root, fname), "rb") as f:
                        uploaded[os.path.relpath(os.path.join(root, fname), local_dir)] = f.read()

        def log_artifact(self, run_id, local_path, artifact_path=None):
            with open(local_path, "rb") as f:
                uploaded[os.path.basename(local_path)] = f.read()

    client = RedactingClient(Fake())
    client.log_batch("r", metrics=[Metric("val_acc", 1.0, 0, 0), Metric("hfToken", 2.0, 0, 0)],
                     params=[Param("uri", "postgresql://u:pw1@h/db")], tags=[RunTag("w2s.x", "http://a:pw2@b")])
    client.log_metric("r", "api_key", 1.0)
    client.set_tag("r", "note", "see postgresql://u:pw3@h/db")
    client.log_text("r", "pwd: pw4\n", "results/results_table.txt")
    (tmp_path / "up" / "sub").mkdir(parents=True)
    (tmp_path / "up" / "best_config.json").write_text(json.dumps({"auth_header": "pw5", "lr": 1}))
    (tmp_path / "up" / "sub" / "s.yaml").write_text("x:\n  private_key_pem: pw6\n")
    client.log_artifacts("r", str(tmp_path / "up"))
    client.log_artifact("r", str(tmp_path / "up" / "best_config.json"))
    blob = json.dumps([c[1:] for c in calls], default=str) + repr(uploaded)
    for planted in ("pw1", "pw2", "pw3", "pw4", "pw5", "pw6", "hfToken", "api_key"):
        assert planted not in blob, planted
    assert set(uploaded) == {"best_config.json", os.path.join("sub", "s.yaml")}
    assert json.loads(uploaded["best_config.json"]) == {"auth_header": REDACTED, "lr": 1}
    assert (tmp_path / "up" / "best_config.json").read_text().count("pw5") == 1  # the caller's file is untouched


def test_a_dry_run_prints_the_space_with_credentials_blanked(run_cli, tmp_path):
    (tmp_path / "space.yaml").write_text(PLANTED_SPACE)
    proc = run_cli("space.yaml", "--dry-run", env={"W2S_PLUGINS": "tests.plugins.faults", **PLANT_ENV,
                                                    "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")},
                   timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for value in PLANTED.values():
        assert value not in proc.stdout + proc.stderr, value


def test_a_literal_credential_in_a_space_is_refused_and_an_unset_variable_named(run_cli, tmp_path):
    env = {"W2S_PLUGINS": "tests.plugins.faults", "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    (tmp_path / "lit.yaml").write_text("name: x\ntrainable: faulty\nparams:\n  client_kwargs: {hfToken: hf_abc123}\n")
    proc = run_cli("lit.yaml", "--dry-run", env=env, timeout=300)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert ("params.client_kwargs.hfToken: a credential written into the search space would be saved with the sweep "
            "and in every trial's config; give it as ${env:NAME} (for example hfToken: ${env:HFTOKEN})") in proc.stderr
    assert "hf_abc123" not in proc.stderr + proc.stdout
    (tmp_path / "unset.yaml").write_text("name: x\ntrainable: faulty\nparams:\n  api_token: ${env:W2S_NOT_SET_1}\n"
                                         "search:\n  seed: {grid: [0, 1]}\n")
    proc = run_cli("unset.yaml", "--dry-run", env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "params.api_token: ${env:W2S_NOT_SET_1}: the environment variable W2S_NOT_SET_1 is not set" in proc.stderr


def test_env_references_resolve_in_the_trial_and_name_what_is_missing():
    from trainables.core.config import resolve_env_refs

    config = {"lr": 0.1, "client_kwargs": {"token": "${env:A_TOKEN}", "plain": "${env:}"}, "l": ["${env:B}"]}
    assert resolve_env_refs(config, {"A_TOKEN": "t", "B": "b"}) == {
        "lr": 0.1, "client_kwargs": {"token": "t", "plain": "${env:}"}, "l": ["b"]}
    with pytest.raises(ValueError, match=r"client_kwargs.token: \$\{env:A_TOKEN\} names an environment variable "
                                         r"that is not set where the trial runs"):
        resolve_env_refs(config, {"B": "b"})


# --- a real sweep --------------------------------------------------------------------------------

PLANTED = {"apiToken": "plant-1-apiToken", "hf-token": "plant-2-hftoken", "private_key_pem": "plant-3-pem",
           "pwd": "plant-4-pwd", "auth_header": "plant-5-auth", "endpoint": "plant-6-uripw",
           "api_token_a": "plant-7-searched-a", "api_token_b": "plant-8-searched-b"}

# Each credential is given as ${env:NAME}: the variables hold the planted values.
PLANT_ENV = {f"W2S_PLANT_{i}": value for i, value in enumerate(PLANTED.values())}
_REF = {key: "${env:W2S_PLANT_%d}" % i for i, key in enumerate(PLANTED)}

PLANTED_SPACE = f"""
name: secrets-e2e
trainable: faulty
params:
  epochs: 2
  client_kwargs:
    apiToken: {_REF['apiToken']}
    hf-token: {_REF['hf-token']}
    private_key_pem: {_REF['private_key_pem']}
    pwd: {_REF['pwd']}
    auth_header: {_REF['auth_header']}
    endpoint: {_REF['endpoint']}
search:
  api_token: {{grid: ['{_REF['api_token_a']}', '{_REF['api_token_b']}']}}   # quoted: '{{' opens a mapping in [ ]
resources: {{workers: 1, cpus_per_worker: 1, max_concurrent_trials: 2}}
control: {{enabled: false}}
"""

def files_holding(root, values):
    found = {}
    for dirpath, _, files in os.walk(root):
        for fname in files:
            path = os.path.join(dirpath, fname)
            with open(path, "rb") as f:
                data = f.read()
            hits = [v for v in values if v.encode() in data]
            if hits:
                found[os.path.relpath(path, root)] = hits
    return found


@pytest.mark.slow
def test_planted_credentials_reach_no_mlflow_store_report_or_output(tmp_path):
    (tmp_path / "space.yaml").write_text(PLANTED_SPACE)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "W2S_PLUGINS": "tests.plugins.faults", **PLANT_ENV,
           "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("RAY_TMPDIR", None)
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "run_sweep.py"), "space.yaml", "--name", "sec"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=900)
    finally:
        import signal

        try:
            os.killpg(proc.pid, signal.SIGKILL)  # what this sweep's local Ray left behind
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, out[-4000:]
    values = list(PLANTED.values())

    # The printed output.
    assert not [v for v in values if v in out], out[-4000:]
    assert "user:***@db.example.com" in out or "best config" in out

    # The whole MLflow store: the sqlite file's bytes and every artifact.
    assert os.path.exists(tmp_path / "mlflow.db") and os.path.isdir(tmp_path / "mlartifacts")
    assert files_holding(tmp_path / "mlflow.db", values) == {}
    assert files_holding(tmp_path / "mlartifacts", values) == {}
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("secrets-e2e")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 3  # the parent and two trials
    for run in runs:
        names = " ".join([*run.data.params, *run.data.tags, *run.data.metrics])
        for key in ("apiToken", "hf-token", "private_key_pem", "pwd", "auth_header", "api_token"):
            assert key not in names, (key, names)
    parent = next(r for r in runs if r.data.tags.get("w2s.role") == "parent")
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"best_config.json", "best_config.yaml", "results", "spec"} <= artifacts, artifacts

    # The sweep folder, every file of it (the saved space and Tune's trial configs hold the placeholders).
    sweep = tmp_path / "ray_results" / "sec"
    for name in ("best_config.json", "best_config.yaml", "results.csv", "results.parquet", "results_table.txt",
                 "w2s_status.json", "w2s_search_space.yaml"):
        assert (sweep / name).exists(), name
    assert files_holding(sweep, values) == {}
    assert "${env:W2S_PLANT_3}" in (sweep / "w2s_search_space.yaml").read_text()
    # ... and the values did reach the trials: the faulty trial refuses unresolved placeholders, and both finished.
    best = json.loads((sweep / "best_config.json").read_text())
    assert best["config"]["api_token"] == REDACTED and best["config"]["client_kwargs"]["pwd"] == REDACTED
    assert yaml.safe_load((sweep / "best_config.yaml").read_text())["params"]["client_kwargs"]["apiToken"] == REDACTED
    cache = tmp_path / "ray_results" / "cache"
    assert not cache.exists() or files_holding(cache, values) == {}
