"""Timestamps of a DDP trial's phases, for bench/overhead.py's breakdown of where a 2-worker trial's
time goes (driver, Train controller and every rank write to one file).

Off unless ``W2S_TRIAL_PHASES`` names a directory: then each :func:`mark` appends one JSON line
``{"run", "phase", "t", "pid", "rank"}`` to ``<dir>/phases.jsonl``. A local Ray's processes inherit
the sweep's environment, so setting it in the sweep's environment reaches all of them. The
lines are short single ``write`` calls on a file opened for appending, so processes writing at
once do not interleave within a line.
"""
from __future__ import annotations

import json
import os
import time

PHASES_ENV = "W2S_TRIAL_PHASES"


def enabled() -> bool:
    return bool(os.environ.get(PHASES_ENV))


def mark(run: str, phase: str, rank: int | None = None, t: float | None = None) -> None:
    """Record that ``run`` (the Train run name, ``train-<trial id>``) reached ``phase`` at ``t``
    (now by default); a no-op unless the environment asks for it."""
    folder = os.environ.get(PHASES_ENV)
    if not folder:
        return
    line = json.dumps({"run": run, "phase": phase, "t": time.time() if t is None else t, "pid": os.getpid(),
                       "rank": rank}) + "\n"
    # One os.write on an O_APPEND descriptor: concurrent writers append whole lines
    fd = os.open(os.path.join(folder, "phases.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def process_start_time() -> float:
    """When this process was created (a Ray worker may be a pre-started idle one, older than the trial)."""
    import psutil

    return psutil.Process().create_time()
