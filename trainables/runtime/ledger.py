"""The finished-trials ledger: a durable record of every trial that ended (completed, stopped
early, diverged), written by the sweep driver the moment Tune reports the trial's end.

Tune's experiment snapshot, which ``Tuner.restore`` reads, is written at most every ~10 s, so a
driver killed shortly after a trial finished restores that trial as still running. Without the
ledger it would train again from its last checkpoint. With it, a restored trial that the ledger
knows replays its recorded final result and returns at once: a finished trial never trains twice.

One small JSON file per trial, ``<storage>/<sweep>/finished/<trial_id>.json``, on any filesystem
pyarrow understands (local, NFS, s3://, gs://), so trials on any node can read it.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

LEDGER_DIR = "finished"
FLOAT_TAG = "float"
# Filled in by Tune (or Train's report forwarding) on every result, the trial's config included; a
# replayed report must not set them, and they are not metrics of the experiment (the orchestrator's
# tracking and results table skip them too).
AUTO_FILLED = frozenset({
    "training_iteration", "time_this_iter_s", "time_total_s", "timestamp", "pid", "hostname", "node_ip",
    "time_since_restore", "iterations_since_restore", "done", "trial_id", "date", "experiment_tag",
    "experiment_id", "checkpoint_dir_name", "should_checkpoint", "checkpoint_path", "timesteps_total",
    "episodes_total", "timesteps_since_restore", "config",
})


def _fs(uri: str):
    import pyarrow.fs as pafs

    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    return pafs.FileSystem.from_uri(uri)


def ledger_dir(storage_path: str, sweep: str) -> str:
    return "/".join([storage_path.rstrip("/"), sweep, LEDGER_DIR])


def _jsonable(result: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in result.items():
        if key in AUTO_FILLED or isinstance(value, (dict, list)):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            value = {FLOAT_TAG: repr(value)}  # JSON has no spelling for nan and inf
        if isinstance(value, (int, float, str, bool, dict)) or value is None:
            out[key] = value
    return out


def _restore_floats(record: dict[str, Any]) -> dict[str, Any]:
    return {k: float(v[FLOAT_TAG]) if isinstance(v, dict) else v for k, v in record.items()}


def record_finished(directory: str, trial_id: str, result: dict[str, Any], outcome: str) -> None:
    fs, path = _fs(directory)
    fs.create_dir(path, recursive=True)
    payload = json.dumps({"trial_id": trial_id, "outcome": outcome, "result": _jsonable(result)})
    tmp = f"{path}/.{trial_id}.json.tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(payload.encode())
    fs.move(tmp, f"{path}/{trial_id}.json")


def finished_result(directory: str, trial_id: str) -> dict[str, Any] | None:
    """The recorded final result of ``trial_id``, or None if the ledger does not know it."""
    import pyarrow.fs as pafs

    fs, path = _fs(directory)
    file = f"{path}/{trial_id}.json"
    if fs.get_file_info(file).type == pafs.FileType.NotFound:
        return None
    try:
        with fs.open_input_stream(file) as f:
            record = json.loads(f.read().decode())
        return _restore_floats(record["result"])
    except (ValueError, KeyError, OSError):
        return None  # an unreadable record: the trial resumes from its checkpoint instead
