"""MLflow tracking: one parent run per sweep, one nested child run per trial.

All writes happen in the sweep driver process (a Tune callback), so a sqlite store has a single
writer and trials never fall back to a throw-away per-trial ``mlflow.db`` under Ray's temp dir.
Runs are found again by tags (``w2s.sweep``, ``w2s.role``, ``w2s.trial_id``), which is what makes a
resumed sweep reuse its parent and child runs instead of duplicating them.

Every write goes through :class:`RedactingClient`, which drops credential-like parameters, tags and
metric names, blanks credential-like keys in logged dicts, texts and files, and masks URI passwords
(:mod:`orchestrator.store.secrets`), whoever the caller is.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from orchestrator.store.secrets import (blank, filter_params, is_secret_key, mask_uri, mask_uris_in_text,  # noqa: F401
                                       redact, redact_artifact)
from orchestrator.store.tracking_uri import (artifact_root_for, check_tracking_uri, default_tracking_uri,  # noqa: F401
                                            normalise_tracking_uri)
from trainables.runtime.ledger import AUTO_FILLED
from trainables.runtime.runner import unpack_config
from trainables.runtime.session import DIVERGED

log = logging.getLogger(__name__)

TAG_SWEEP = "w2s.sweep"
TAG_ROLE = "w2s.role"  # parent | trial | reproduce | control
TAG_TRIAL = "w2s.trial_id"
TAG_PROBE = "w2s.probe"  # a fused / vectorised trial's member index, on its own child run
TAG_OUTCOME = "w2s.outcome"
TAG_DIVERGENCE = "w2s.divergence"
TAG_CHECKPOINT_NOTE = "w2s.checkpoint_note"  # a trial resumed from an older checkpoint than its latest (corrupt)
TAG_DATASET_DIGEST = "w2s.dataset_digest"
PARENT_TAG = "mlflow.parentRunId"
NOTE_TAG = "mlflow.note.content"  # the run's description in the MLflow UI
GIT_COMMIT_TAG = "mlflow.source.git.commit"  # shown by the MLflow UI as the run's source version
# Logged every report and so present at every step: a resumed trial finds its last logged epoch in
# its history. (``epoch`` itself is not a metric: the step of every point is the epoch.)
STEP_METRIC = "trial_time_s"
# Reported every epoch but not a measurement of it: the step, which MLflow keeps as each point's step.
NOT_METRICS = frozenset({"epoch"})
RESOLVED_CONFIG_FILE = "config.yaml"
# Param prefix of the trainable's constant metrics: a constant may share a parameter's name (w2s's
# ``n_train`` is a fraction as a parameter, a count as a metric) and MLflow params are write-once.
STATIC_PREFIX = "static."

# Tune's own bookkeeping fields: not metrics of the experiment.
TUNE_BOOKKEEPING = AUTO_FILLED


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, full))
        else:
            out[full] = value
    return out


def _param_value(v: Any) -> str:
    text = v if isinstance(v, str) else json.dumps(v, default=str)
    return text[:6000]


def complete_params(trainable: str, config: dict[str, Any]) -> dict[str, Any]:
    """Every parameter of a trial, the trainable's defaults included (what the trial actually ran);
    ``config`` itself when the params model refuses it (an unresolved ``${env:...}`` value)."""
    import copy

    from pydantic import ValidationError

    from trainables.runtime.trainable import get_trainable

    try:
        return get_trainable(trainable).params_model.model_validate(config).model_dump(mode="json")
    except (ValidationError, KeyError):
        return copy.deepcopy(config)


def trial_index(trial_id: str) -> str:
    """``t04`` for Tune's ``ab12c_00004``: the part of the id that says which trial it is."""
    tail = trial_id.rsplit("_", 1)[-1]
    return f"t{int(tail):02d}" if tail.isdigit() else trial_id


def short_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2g}" if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e3) else f"{value:.3g}"
    if isinstance(value, dict):  # a model entry {model: ..., ...} is named by its model
        return str(value.get("model", "{…}"))
    return str(value)


def short_key(key: str) -> str:
    """The last part of a dotted key (``loss_params.temperature`` -> ``temperature``)."""
    return key.rsplit(".", 1)[-1]


def child_run_name(label: str, config: dict[str, Any], keys: list[str], limit: int = 80) -> str:
    """A child run's name that tells trials apart in MLflow's run list, where names are cut at a
    few dozen characters: ``t04 lr=0.046 temperature=4`` (the trial and its searched values)."""
    from trainables.core.config import get_dotted

    parts = [label]
    for key in keys:
        value = get_dotted(config, key)
        if value is not None and not is_secret_key(key):
            parts.append(f"{short_key(key)}={short_value(value)}")
    return " ".join(parts)[:limit]


def git_commit(root: str) -> str | None:
    """The repository's HEAD commit (``+dirty`` when files changed), None outside a git checkout."""
    import subprocess

    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def numeric_metrics(result: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in result.items():
        if key in TUNE_BOOKKEEPING or key.startswith("config/"):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[key] = float(value)
    return out


_warned_secret_keys: set[str] = set()


def mlflow_client(uri: str, timeout_s: float = 30.0):
    """An ``MlflowClient`` for ``uri``. On a brand-new sqlite file, the first client of each
    process creates and migrates the schema; two processes doing it at once (two drivers started
    together) make one fail with "table ... already exists" or "database is locked", or even break
    each other's migration. So for sqlite the creation is serialised between this machine's
    processes (an ``flock`` on a file in the temp dir named after the database) and retried, with a
    short backoff, for creators outside this code (``mlflow ui``)."""
    from mlflow.tracking import MlflowClient

    if not uri.startswith("sqlite:"):
        return MlflowClient(tracking_uri=uri)
    import fcntl
    import hashlib
    import tempfile

    key = hashlib.sha1(uri.encode()).hexdigest()[:16]
    try:
        fd = os.open(os.path.join(tempfile.gettempdir(), f"w2s-mlflow-init-{key}.lock"), os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:  # another user's file: go on with the retries alone
        fd = None
    deadline, delay = time.monotonic() + timeout_s, 0.1
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        while True:
            try:
                client = MlflowClient(tracking_uri=uri)
                client._tracking_client.store  # noqa: B018 - built lazily in some versions: build it here
                return client
            except Exception as exc:  # noqa: BLE001 - sqlalchemy or MlflowException, both wrapping the race
                if time.monotonic() > deadline:
                    raise
                log.debug("MLflow store at %s not ready (%s); retrying", uri, (str(exc).splitlines() or [""])[0])
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
    finally:
        if fd is not None:
            os.close(fd)


class RedactingClient:
    """An ``MlflowClient`` whose writes never carry credentials: params, tags and metrics with
    credential-like names are dropped, URI passwords in their values masked; logged dicts, texts
    and files have credential-like keys' values blanked (:mod:`orchestrator.store.secrets`)."""

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name):
        return getattr(self._client, name)

    def create_run(self, experiment_id, *args, tags=None, **kwargs):
        return self._client.create_run(experiment_id, *args, tags=redact(tags) if tags else tags, **kwargs)

    def log_param(self, run_id, key, value, *args, **kwargs):
        if not is_secret_key(key):
            return self._client.log_param(run_id, key, _masked(value), *args, **kwargs)
        return None

    def set_tag(self, run_id, key, value, *args, **kwargs):
        if not is_secret_key(key):
            self._client.set_tag(run_id, key, _masked(value), *args, **kwargs)

    def log_metric(self, run_id, key, *args, **kwargs):
        if not is_secret_key(key):
            return self._client.log_metric(run_id, key, *args, **kwargs)
        return None

    def log_batch(self, run_id, metrics=(), params=(), tags=(), **kwargs):
        from mlflow.entities import Param, RunTag

        metrics = [m for m in metrics if not is_secret_key(m.key)]
        params = [Param(p.key, _masked(p.value)) for p in params if not is_secret_key(p.key)]
        tags = [RunTag(t.key, _masked(t.value)) for t in tags if not is_secret_key(t.key)]
        return self._client.log_batch(run_id, metrics=metrics, params=params, tags=tags, **kwargs)

    def log_dict(self, run_id, dictionary, artifact_file, *args, **kwargs):
        return self._client.log_dict(run_id, blank(dictionary), artifact_file, *args, **kwargs)

    def log_text(self, run_id, text, artifact_file, *args, **kwargs):
        text = redact_artifact(str(artifact_file), text.encode()).decode()
        return self._client.log_text(run_id, text, artifact_file, *args, **kwargs)

    def log_artifact(self, run_id, local_path, artifact_path=None):
        import tempfile

        with tempfile.TemporaryDirectory(prefix="w2s-redacted-") as tmp:
            return self._client.log_artifact(run_id, _redacted_copy(local_path, tmp), artifact_path)

    def log_artifacts(self, run_id, local_dir, artifact_path=None):
        import tempfile

        with tempfile.TemporaryDirectory(prefix="w2s-redacted-") as tmp:
            copy = os.path.join(tmp, "files")
            for root, _, files in os.walk(local_dir):
                target = os.path.join(copy, os.path.relpath(root, local_dir))
                os.makedirs(target, exist_ok=True)
                for fname in files:
                    _redacted_copy(os.path.join(root, fname), target)
            return self._client.log_artifacts(run_id, copy, artifact_path)


def _masked(value: Any) -> Any:
    return mask_uris_in_text(value) if isinstance(value, str) else value


def _redacted_copy(path: str, directory: str) -> str:
    """``path`` copied into ``directory`` through :func:`redact_artifact`; the copy's path."""
    with open(path, "rb") as f:
        data = redact_artifact(os.path.basename(path), f.read())
    out = os.path.join(directory, os.path.basename(path))
    with open(out, "wb") as f:
        f.write(data)
    return out


class Tracker:
    """Driver-side MLflow access for one sweep."""

    def __init__(self, uri: str, experiment: str):
        self.uri = uri
        self.experiment_name = experiment
        self._client = None
        self.experiment_id: str | None = None

    @property
    def client(self):
        if self._client is None:
            self._client = RedactingClient(mlflow_client(self.uri))
        return self._client

    def ensure_experiment(self, attempts: int = 5) -> str:
        """The experiment's id, creating it if needed. Two creators at once (two drivers, a driver
        and ``mlflow ui``) converge on one experiment: the loser of the creation race reads the
        winner's back."""
        for attempt in range(attempts):
            exp = self.client.get_experiment_by_name(self.experiment_name)
            if exp is not None:
                if exp.lifecycle_stage == "deleted":
                    self.client.restore_experiment(exp.experiment_id)
                self.experiment_id = exp.experiment_id
                return self.experiment_id
            artifact_root = artifact_root_for(self.uri)
            location = f"{artifact_root}/{self.experiment_name}" if artifact_root else None
            try:
                self.experiment_id = self.client.create_experiment(self.experiment_name, artifact_location=location)
                return self.experiment_id
            except Exception:  # noqa: BLE001 - lost a creation race (or sqlite was busy): read it back
                if attempt == attempts - 1:
                    raise
                time.sleep(0.1 * (attempt + 1))
        raise AssertionError("unreachable")

    def find_runs(self, **tags: str) -> list:
        flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        return self.client.search_runs([self.experiment_id], filter_string=flt, max_results=10_000)

    def parent_run(self, sweep: str, spec_dict: dict[str, Any], spec_text: str | None,
                   tags: dict[str, str] | None = None) -> tuple[str, bool]:
        """(run id, reused) of the sweep's parent run; reused on resume. The spec is logged as
        artifacts, not as params: as params it filled the runs table with dozens of ``spec.*``
        columns. Its description becomes the run's description; ``tags`` (git commit, dataset
        digest) are set on it."""
        existing = self.find_runs(**{TAG_SWEEP: sweep, TAG_ROLE: "parent"})
        if existing:
            run_id = existing[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id, True
        extra = {k: v for k, v in (tags or {}).items() if v}
        if spec_dict.get("description"):
            extra[NOTE_TAG] = str(spec_dict["description"])
        run = self.client.create_run(self.experiment_id, run_name=sweep,
                                     tags={TAG_SWEEP: sweep, TAG_ROLE: "parent", **extra})
        run_id = run.info.run_id
        self.log_params(run_id, {"trainable": spec_dict.get("trainable"), "metric": spec_dict.get("metric"),
                                 "mode": spec_dict.get("mode")})
        self.client.log_dict(run_id, spec_dict, "spec/resolved_spec.json")
        if spec_text is not None:
            self.client.log_text(run_id, spec_text, "spec/search_space.yaml")
        return run_id, False

    def note_checkpoint_repair(self, sweep: str, trial_id: str, note: str) -> None:
        """Tag the trial's child run (when it has one) with what the resume did to its checkpoint."""
        for run in self.find_runs(**{TAG_SWEEP: sweep, TAG_TRIAL: trial_id}):
            self.add_checkpoint_note(run.info.run_id, note)

    def add_checkpoint_note(self, run_id: str, note: str) -> None:
        """Add ``note`` to what the run's checkpoint tag already says. A resumed trial's run can get
        two notes: the resume check setting a corrupt state aside, then the trial saying which
        checkpoint it went on from (another one when Tune's saved state had not recorded the
        trial's checkpoints yet). The second must not hide the first."""
        before = self.client.get_run(run_id).data.tags.get(TAG_CHECKPOINT_NOTE, "")
        if note in before:
            return
        self.client.set_tag(run_id, TAG_CHECKPOINT_NOTE, (f"{before}; then {note}" if before else note)[:5000])

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        params, dropped = filter_params(params)
        new = sorted(set(dropped) - _warned_secret_keys)
        if new:
            _warned_secret_keys.update(new)
            log.warning("not logged to MLflow, the names look like credentials: %s", ", ".join(new))
        items = [Param(k[:250], _param_value(v)) for k, v in params.items()]
        for start in range(0, len(items), 100):
            try:
                self.client.log_batch(run_id, params=items[start:start + 100])
            except Exception as exc:  # noqa: BLE001 - a resumed run already holds these params
                log.debug("params not re-logged on %s: %s", run_id, exc)

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k[:250], float(v), now, int(step or 0)) for k, v in metrics.items() if k not in NOT_METRICS]
        for start in range(0, len(items), 500):
            self.client.log_batch(run_id, metrics=items[start:start + 500])

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)


def _tune_callback_base():
    from ray.tune import Callback

    return Callback


class MLflowTrialCallback(_tune_callback_base()):
    """Creates (or, on resume, finds) the child run of each trial and logs its params, per-epoch
    metrics, and outcome. Runs in the Tune driver; pickled with the experiment state for restore."""

    def __init__(self, uri: str, experiment: str, parent_run_id: str, sweep: str, budget_key: str,
                 role: str = "trial", keys: tuple[str, ...] = (), static: tuple[str, ...] = (),
                 trainable: str | None = None):
        self.uri = uri
        self.experiment = experiment
        self.parent_run_id = parent_run_id
        self.sweep = sweep
        self.role = role
        self.budget_key = budget_key
        # The searched keys (the child run's name shows their values), the metrics the trainable
        # declares constant over a trial (logged once, as params, instead of at every epoch), and
        # the trainable whose defaults complete a trial's config.
        self.keys = tuple(keys)
        self.static = frozenset(static)
        self.trainable = trainable
        self._static_logged: set[str] = set()
        self._tracker: Tracker | None = None
        self._runs: dict[str, str] = {}
        self._last: dict[str, dict[str, Any]] = {}
        # Highest step logged per trial. A trial resumed from a checkpoint (after a worker loss or a
        # driver crash) re-reports the epochs after that checkpoint; they are not logged twice.
        self._logged_step: dict[str, int] = {}

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_tracker"] = None
        return state

    def __setstate__(self, state):
        # Defaults for a callback pickled by an older version (a --resume of an older sweep).
        self.__dict__.update({"_logged_step": {}, "keys": (), "static": frozenset(), "trainable": None,
                              "_static_logged": set(), **state})

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            self._tracker = Tracker(self.uri, self.experiment)
            self._tracker.ensure_experiment()
        return self._tracker

    def _run_for(self, trial) -> str:
        run_id = self._runs.get(trial.trial_id)
        if run_id:
            return run_id
        from trainables.runtime.runner import CASE_KEY

        case = trial.config.get(CASE_KEY, {})
        existing = self.tracker.find_runs(**{TAG_SWEEP: self.sweep, TAG_TRIAL: trial.trial_id})
        if existing:
            run_id = existing[0].info.run_id
            self.tracker.client.update_run(run_id, status="RUNNING")
            history = self.tracker.client.get_metric_history(run_id, STEP_METRIC)
            if history:
                self._logged_step[trial.trial_id] = max(m.step for m in history)
        else:
            role = case.get("role", self.role)
            config = case.get("config", unpack_config(trial.config))
            label = f"{role}-{case['seed']}" if case else trial_index(trial.trial_id)
            run = self.tracker.client.create_run(
                self.tracker.experiment_id, run_name=child_run_name(label, config, list(self.keys)),
                tags={PARENT_TAG: self.parent_run_id, TAG_SWEEP: self.sweep, TAG_ROLE: role,
                      TAG_TRIAL: trial.trial_id})
            run_id = run.info.run_id
        # Also on a found run: a driver killed between creating it and logging them left it without.
        self.log_config(run_id, case.get("config", unpack_config(trial.config)))
        self._runs[trial.trial_id] = run_id
        return run_id

    def log_config(self, run_id: str, config: dict[str, Any], **extra: Any) -> None:
        """The trial's full resolved config (the trainable's defaults included) as params with
        dotted keys, and as ``config.yaml`` to re-read or diff it whole."""
        import yaml

        full = complete_params(self.trainable, config) if self.trainable else config
        self.tracker.log_params(run_id, {**flatten(full), **extra})
        try:
            self.tracker.client.log_text(run_id, yaml.safe_dump(full, sort_keys=True), RESOLVED_CONFIG_FILE)
        except Exception as exc:  # noqa: BLE001 - the params hold the same; an artifact store hiccup is not fatal
            log.warning("config.yaml not logged on %s: %s", run_id, exc)

    def split_static(self, run_id: str, metrics: dict[str, float]) -> dict[str, float]:
        """``metrics`` less the trainable's declared constants, which are logged once on the run
        as params ``static.<name>`` (MLflow params are write-once: written on the first report only)."""
        static = {STATIC_PREFIX + k: v for k, v in metrics.items() if k in self.static}
        if static and run_id not in self._static_logged:
            self.tracker.log_params(run_id, static)
            self._static_logged.add(run_id)
        return {k: v for k, v in metrics.items() if k not in self.static}

    def on_trial_start(self, iteration, trials, trial, **info):
        self._run_for(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self._run_for(trial)
        self._last[trial.trial_id] = result
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        if result.get("checkpoint_note"):
            self.tracker.add_checkpoint_note(run_id, str(result["checkpoint_note"]))
        if result.get(DIVERGED):
            # The sweep metric on this report is a rank-last sentinel for the searcher, not a measurement.
            self.tracker.log_metrics(run_id, {DIVERGED: 1.0}, step)
            self.tracker.client.set_tag(run_id, TAG_DIVERGENCE, str(result.get("divergence", ""))[:5000])
            return
        if step <= self._logged_step.get(trial.trial_id, -1):
            return
        self._logged_step[trial.trial_id] = step
        metrics = self.split_static(run_id, numeric_metrics(result))
        metrics[STEP_METRIC] = float(result.get("time_total_s", 0.0))
        self.tracker.log_metrics(run_id, metrics, step)

    def _close(self, trial, status: str, outcome: str) -> None:
        run_id = self._run_for(trial)
        self.tracker.client.set_tag(run_id, TAG_OUTCOME, outcome)
        self.tracker.finish(run_id, status)

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = self._last.get(trial.trial_id) or trial.last_result or {}
        from trainables.runtime.runner import unpack_config

        if last.get(DIVERGED):
            self._close(trial, "FAILED", "diverged")
            return
        budget = unpack_config(trial.config).get(self.budget_key)
        done = last.get("epoch")
        outcome = "stopped_early" if isinstance(budget, int) and isinstance(done, (int, float)) and done < budget \
            else "completed"
        self._close(trial, "FINISHED", outcome)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._close(trial, "FAILED", "error")
