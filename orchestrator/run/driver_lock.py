"""The driver's hold on its sweep: the sweep lock (:mod:`orchestrator.store.lock`) and the clean-up
after a SIGKILLed previous driver (:mod:`orchestrator.run.local_ray`). Cheap to import: the command
line takes the lock before it imports torch and Ray, so a second driver is refused in a second or
two."""
from __future__ import annotations

import os
from contextlib import contextmanager

from orchestrator.run.local_ray import clean_up_dead_driver
from orchestrator.run.options import SweepOptions, say
from orchestrator.store.layout import sweep_dir
from orchestrator.store.lock import acquire_sweep_lock


@contextmanager
def sweep_lock(opts: SweepOptions, name: str):
    """Held around everything a driver does to sweep ``name``, from before its first write to the
    sweep folder and before Ray starts to its exit (normal, error, Ctrl-C): a second driver on the
    same sweep is refused at once (exit 2), naming the first. Taking it also cleans up after a
    SIGKILLed previous driver (its lock, its local Ray's processes and temp dir)."""
    out_dir = sweep_dir(opts.storage_path, name)
    created = _missing_folders(out_dir)
    lock = acquire_sweep_lock(out_dir, name)
    try:
        for line in (lock.took_over(), clean_up_dead_driver(out_dir)):
            if line:
                say(line if line.startswith(" ") else f"  {line}")
        yield lock
    finally:
        lock.release()
        _remove_if_empty(created)


def _missing_folders(out_dir: str) -> list[str]:
    """The local folders the lock file will create, innermost first (none on object storage)."""
    if "://" in out_dir:
        return []
    missing, path = [], os.path.abspath(out_dir)
    while not os.path.exists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


def _remove_if_empty(folders: list[str]) -> None:
    """A sweep refused before it wrote anything leaves no folders behind (only empty ones go)."""
    for folder in folders:
        if not os.path.isdir(folder):
            continue  # the lock's own release removed it
        try:
            os.rmdir(folder)
        except OSError:
            return
