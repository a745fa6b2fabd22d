"""The MLflow tracking URI: its default, its normal form and the check that it can be reached, in
a module of their own that imports neither MLflow nor Ray nor torch, so the command line resolves
where a sweep goes (and takes the sweep's lock) in a second. :mod:`orchestrator.store.tracking`
re-exports them."""
from __future__ import annotations

import os
from urllib.parse import urlparse

from orchestrator.errors import UserError
from orchestrator.store.secrets import mask_uri, mask_uris_in_text


def default_tracking_uri(cwd: str | None = None) -> str:
    return "sqlite:///" + os.path.abspath(os.path.join(cwd or os.getcwd(), "mlflow.db"))


def normalise_tracking_uri(uri: str | None, cwd: str | None = None) -> str:
    """An absolute tracking URI. Relative sqlite paths and bare ``.db`` paths become absolute,
    because Ray trials run in other working directories."""
    if not uri:
        return default_tracking_uri(cwd)
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https", "databricks", "postgresql", "mysql", "mssql"):
        return uri
    if parsed.scheme == "sqlite":
        path = uri[len("sqlite:///"):]
        if not path.startswith("/"):
            path = os.path.abspath(os.path.join(cwd or os.getcwd(), path))
        return "sqlite:///" + path
    if parsed.scheme in ("", "file") and uri.endswith(".db"):
        return "sqlite:///" + os.path.abspath(uri.removeprefix("file://"))
    raise UserError(f"--mlflow-uri {mask_uri(uri)!r}: use an sqlite:///path/to/mlflow.db file or an http(s):// MLflow "
                    "server (MLflow 3.13+ refuses the ./mlruns file store)")


def artifact_root_for(uri: str) -> str | None:
    if uri.startswith("sqlite:///"):
        db = uri[len("sqlite:///"):]
        return "file://" + os.path.join(os.path.dirname(db), "mlartifacts")
    return None


def check_tracking_uri(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, before Ray starts, when the tracking store cannot be reached or written."""
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as resp:  # noqa: S310
                if resp.status >= 400:
                    raise OSError(f"HTTP {resp.status}")
        except (OSError, urllib.error.URLError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UserError(f"the MLflow server at {mask_uri(uri)} is unreachable ({mask_uris_in_text(str(reason))}). Start it (for example "
                            f"`mlflow server --host 127.0.0.1 --port {parsed.port or 5000}`), open the SSH port "
                            "forward to the head node, or pass --mlflow-uri sqlite:///ABS/PATH/mlflow.db") from None
    elif parsed.scheme == "sqlite":
        db = uri[len("sqlite:///"):]
        directory = os.path.dirname(db) or "."
        if not os.path.isdir(directory):
            raise UserError(f"--mlflow-uri {mask_uri(uri)}: the directory {directory} does not exist")
        if not os.access(directory, os.W_OK) or (os.path.exists(db) and not os.access(db, os.W_OK)):
            raise UserError(f"--mlflow-uri {mask_uri(uri)}: {db} is not writable")
