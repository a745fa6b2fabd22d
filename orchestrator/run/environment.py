"""Every environment variable the sweep reads, in one list, checked when the command starts.

A bad value (``W2S_PROGRESS_INTERVAL_S=abc``) would otherwise surface minutes later, after Ray has
started, as a traceback (exit 4). :func:`check_environment` runs first thing in the command line
and turns it into one line, exit 2, naming the variable, its value and what is accepted. The table
in README.md ("Environment variables") lists the same variables; a test keeps them in step.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Callable, Mapping
from urllib.parse import urlparse

from orchestrator.errors import UserError

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def _positive_seconds(value: str) -> str | None:
    try:
        x = float(value)
    except ValueError:
        return "a number of seconds > 0, e.g. 30"
    if not math.isfinite(x) or x <= 0:
        return "a finite number of seconds > 0, e.g. 30"
    return None


def _positive_int(value: str) -> str | None:
    return None if re.fullmatch(r"\s*[0-9]+\s*", value) and int(value) >= 1 else "a whole number ≥ 1, e.g. 4"


def _int_flag(value: str) -> str | None:
    return None if re.fullmatch(r"\s*-?[0-9]+\s*", value) else "an integer: 0 (off) or 1 (on)"


def _switch(value: str) -> str | None:
    return None if value.strip().lower() in _TRUE + _FALSE else f"one of {', '.join(_TRUE)} (on) or 0, false, no, off (off)"


def _modules(value: str) -> str | None:
    names = [m.strip() for m in value.split(",") if m.strip()]
    bad = [m for m in names if not _MODULE.fullmatch(m)]
    return None if not bad else f"comma-separated Python module names, e.g. mylab.losses,mylab.data ({bad[0]!r} is not one)"


def _directory(value: str) -> str | None:
    path = os.path.expanduser(value)
    if value and os.path.exists(path) and not os.path.isdir(path):
        return "a directory (this path is a file)"
    return None


def _existing_directory(value: str) -> str | None:
    return None if not value or os.path.isdir(os.path.expanduser(value)) else "an existing directory"


def _not_a_directory(value: str) -> str | None:
    return "the path of a KEY=VALUE file (this is a directory)" if value and os.path.isdir(os.path.expanduser(value)) else None


def _http_url(value: str) -> str | None:
    parsed = urlparse(value)
    return None if not value or parsed.scheme in ("http", "https") and parsed.hostname else "an http(s):// URL, e.g. https://huggingface.co"


def _tracking_uri(value: str) -> str | None:
    ok = not value or value.startswith("sqlite:///") or (urlparse(value).scheme in ("http", "https") and urlparse(value).hostname)
    return None if ok else "sqlite:///ABS/PATH/mlflow.db or an http(s):// MLflow server"


def _storage(value: str) -> str | None:
    return "a path or an s3:// / gs:// URI without a query string" if "?" in value else None


def _ray_address(value: str) -> str | None:
    if not value.strip():
        return None
    return None if address_problem(value) is None else "auto, HOST:PORT or ray://HOST:PORT"


def address_problem(address: str) -> str | None:
    """Why ``address`` is no Ray address ``ray.init`` takes, or None."""
    if address in ("auto", "local"):
        return None
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return "expected auto, HOST:PORT or ray://HOST:PORT"
    return None


@dataclass(frozen=True)
class EnvVar:
    name: str
    meaning: str
    check: Callable[[str], str | None] | None  # value -> what is accepted, when the value is not


# Every variable the driver or its trials read (orchestrator/, trainables/). Ray's own variables
# that the sweep only sets defaults for are listed where the driver reads them back.
VARIABLES: tuple[EnvVar, ...] = (
    EnvVar("W2S_PLUGINS", "the modules to import in the driver and every worker (your trainables, losses, models, datasets)",
           _modules),
    EnvVar("W2S_DATA_ROOT", "the folder where downloadable datasets live (default ~/.cache/w2s-sweep/data)", _directory),
    EnvVar("W2S_OFFLINE", "the offline switch: on, no downloads at all (weights, datasets); fail fast instead", _switch),
    EnvVar("HF_HUB_OFFLINE", "Hugging Face's offline switch, which the sweep treats as W2S_OFFLINE", _switch),
    EnvVar("HF_ENDPOINT", "the Hugging Face Hub mirror to download weights from", _http_url),
    EnvVar("W2S_PROGRESS_INTERVAL_S", "the seconds between progress lines: the driver's, and those of a cached stage "
           "in training, such as a teacher (default 30)", _positive_seconds),
    EnvVar("RAY_ADDRESS", "the Ray cluster to run on when --address is not given (set by `ray job submit`)", _ray_address),
    EnvVar("W2S_MLFLOW_URI", "the MLflow tracking URI with --address, when --mlflow-uri is not given", _tracking_uri),
    EnvVar("W2S_STORAGE_PATH", "the storage path with --address, when --storage-path is not given", _storage),
    EnvVar("W2S_CLUSTER_ENV", "the cluster's env file (default ~/.w2s/cluster.env)", _not_a_directory),
    EnvVar("RAY_TMPDIR", "the local Ray's temp dir (default: a private /tmp/w2s-ray-* per sweep)", _existing_directory),
    EnvVar("RAY_AUTH_MODE", "Ray's authentication mode (token: a cluster with token authentication)", None),
    EnvVar("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "the seconds between Ray Train's worker health checks (the sweep's default 0.2)",
           _positive_seconds),
    EnvVar("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "Ray Train's spot preemption watcher switch (0 on a local Ray)", _int_flag),
    EnvVar("TUNE_DISABLE_SIGINT_HANDLER", "Tune's switch to not catch Ctrl-C (with 1 the sweep cannot tell an interrupt)",
           lambda v: _int_flag(v) if v.strip() else None),
    EnvVar("OMP_NUM_THREADS", "the CPU threads per trial (default: the trial's cpus_per_worker)", _positive_int),
    EnvVar("PYTHONPATH", "the import path, handed on to the workers of a local Ray after the repository", None),
)


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """One line, exit 2, for the first variable whose value is not accepted."""
    environ = os.environ if environ is None else environ
    for var in VARIABLES:
        value = environ.get(var.name)
        if value is None or var.check is None:
            continue
        accepted = var.check(value)
        if accepted is not None:
            raise UserError(f"environment variable {var.name}={value!r} is not accepted: expected {accepted}. "
                            f"{var.name} is {var.meaning}; fix or unset it")
