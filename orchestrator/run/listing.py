"""``run_sweep.py list``: the sweeps under a storage path, so that ``report``, ``compare`` and
``--resume`` can be given a name without digging for its timestamp.

A sweep is a folder holding a saved search space (``layout.SPEC_FILE``). Its state comes from its
status file (``resume.read_status``): a status of ``running`` whose driver is gone (killed, the
machine rebooted) is shown as ``interrupted``, which is what ``--resume`` will treat it as. Its
trials are its Tune trial folders, and the best metric is read from each trial's last result line
(``result.json``), so it is there for an interrupted sweep as well as a finished one.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

import yaml

from orchestrator.errors import UserError
from orchestrator.reports.rows import fmt, render_table
from orchestrator.run.resume import _driver_alive, read_status
from orchestrator.store import layout
from orchestrator.store.storage import join, read_text

TRIAL_PREFIX = "trial_"  # orchestrator/run/tuner.py names every trial's folder so
RESULT_FILE = "result.json"  # Tune's per-trial results, one JSON line per report


@dataclass
class SweepEntry:
    name: str
    state: str
    trials: int
    metric: str
    best: float | None
    updated: float | None


def _folders(fs, path: str) -> list[str]:
    from pyarrow import fs as pafs

    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError:
        return []
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)


def _last_line(fs, path: str) -> dict | None:
    try:
        with fs.open_input_stream(path) as f:
            lines = f.read().decode(errors="replace").strip().splitlines()
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None


def _metric_and_mode(text: str) -> tuple[str, str]:
    """The search metric and mode from a saved search space, read as plain YAML: listing must not
    fail on a space whose plugin is not importable here (the report would need it, the list not)."""
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        raw = {}
    return str(raw.get("metric", "?")), str(raw.get("mode", "max"))


def sweep_entry(fs, root: str, storage_path: str, name: str) -> SweepEntry | None:
    out_dir = join(storage_path, name)
    text = read_text(join(out_dir, layout.SPEC_FILE))
    if text is None:
        return None
    metric, mode = _metric_and_mode(text)
    status = read_status(out_dir) or {}
    state = status.get("status", "unknown")
    if state == "running" and not _driver_alive(status):
        state = "interrupted"  # the driver that wrote "running" is gone (SIGKILL, reboot)
    trials = [d for d in _folders(fs, f"{root}/{name}") if d.startswith(TRIAL_PREFIX)]
    values = []
    for trial in trials:
        last = _last_line(fs, f"{root}/{name}/{trial}/{RESULT_FILE}") or {}
        value = last.get(metric)
        if isinstance(value, (int, float)) and not last.get("diverged") and math.isfinite(value):
            values.append(float(value))
    best = (max(values) if mode == "max" else min(values)) if values else None
    return SweepEntry(name, state, len(trials), metric, best, status.get("updated"))


def list_sweeps(storage_path: str) -> list[SweepEntry]:
    """Every sweep under ``storage_path``, newest first."""
    from orchestrator.store.cache import resolve_filesystem

    fs, root = resolve_filesystem(storage_path)
    entries = [e for name in _folders(fs, root) if (e := sweep_entry(fs, root, storage_path, name))]
    return sorted(entries, key=lambda e: -(e.updated or 0.0))


def format_sweeps(entries: list[SweepEntry]) -> str:
    body = [[e.name, e.state, str(e.trials), f"{e.metric} {fmt(e.best)}" if e.best is not None else f"{e.metric} -",
             time.strftime("%Y-%m-%d %H:%M", time.localtime(e.updated)) if e.updated else "-"] for e in entries]
    return render_table(["sweep", "state", "trials", "best", "updated"], body)


def print_sweeps(storage_path: str, say=print) -> None:
    from orchestrator.store.cache import resolve_filesystem

    fs, root = resolve_filesystem(storage_path)
    from pyarrow import fs as pafs

    if fs.get_file_info(root).type == pafs.FileType.NotFound:
        raise UserError(f"--storage-path {storage_path} does not exist (pass the --storage-path the sweeps ran with)")
    entries = list_sweeps(storage_path)
    if not entries:
        say(f"no sweeps under {storage_path}")
        return
    say(format_sweeps(entries))
    say(f"{len(entries)} sweep{'' if len(entries) == 1 else 's'} under {storage_path}; run_sweep.py report NAME rebuilds one's report, "
        "--resume NAME goes on with an interrupted one")
