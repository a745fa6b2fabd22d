"""Resuming a sweep after a crash, and what a second run of the same ``--name`` does.

* ``<storage>/<name>/w2s_status.json`` says whether the sweep is ``running`` (with the driver's
  host and pid), ``finished``, ``failed``, ``stalled`` or ``interrupted``.
* The finished-trials ledger (:mod:`trainables.runtime.ledger`), written by :class:`FinishedLedger` in the
  driver, guarantees that a trial that ended is never trained again after a restore.
* Re-running ``run_sweep.py SPACE --name NAME`` when ``NAME`` exists: an unfinished sweep with the
  same resolved search space resumes automatically; a finished one is reported and left alone;
  a different search space under the same name is an error (it would mix two experiments).
* Child runs that Tune lost in the crash (trials started after its last snapshot and then
  re-created under new ids by the searcher) are closed and archived (MLflow soft delete), so the
  experiment shows exactly one child run per trial.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from typing import Any

from ray.tune import Callback

from orchestrator.errors import UserError
from orchestrator.store.layout import STATUS_FILE, read_saved_spec, sweep_dir
from orchestrator.store.secrets import REDACTED, is_secret_key
from orchestrator.store.storage import join, read_text, write_text
from trainables.runtime.ledger import ledger_dir, record_finished

TAG_LOST = "lost_in_crash"


def write_status(out_dir: str, status: str, **extra: Any) -> None:
    payload = {"status": status, "updated": time.time(), "host": socket.gethostname(), "pid": os.getpid(), **extra}
    write_text(join(out_dir, STATUS_FILE), json.dumps(payload, indent=1))


def read_status(out_dir: str) -> dict[str, Any] | None:
    text = read_text(join(out_dir, STATUS_FILE))
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _driver_alive(status: dict[str, Any]) -> bool:
    """Whether the driver recorded as running is alive on this host (a SIGKILLed one is not)."""
    if status.get("status") != "running" or status.get("host") != socket.gethostname():
        return False
    pid = int(status.get("pid", 0))
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return "run_sweep" in cmdline


def check_not_running(out_dir: str, name: str) -> None:
    status = read_status(out_dir)
    if status and _driver_alive(status):
        raise UserError(f"sweep {name} is already running (driver pid {status['pid']} on this host); two drivers "
                        "on one sweep would corrupt its state. Wait for it, or stop it (Ctrl-C) and then "
                        f"--resume {name}")


def first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    """The first key (dotted) whose value differs, as ``key: old -> new``; None when equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            diff = first_difference(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
            if diff:
                return diff
        return None
    if a == b:
        return None
    if is_secret_key(prefix):  # a changed credential: say where, not what
        return f"{prefix}: {REDACTED} -> {REDACTED}"
    return f"{prefix}: {a!r} -> {b!r}"


def existing_sweep_action(out_dir: str, name: str, spec, saved_spec) -> str:
    """What a new run named like an existing sweep should do: ``resume`` or ``finished``.
    ``saved_spec`` is the existing sweep's resolved spec (None when there is nothing saved)."""
    diff = first_difference(saved_spec.resolved_dict(), spec.resolved_dict())
    if diff:
        raise UserError(f"--name {name}: a sweep of that name already exists under {os.path.dirname(out_dir)} with a "
                        f"different search space (first difference: {diff}). Resume it as it was with --resume "
                        f"{name}, or choose another --name")
    check_not_running(out_dir, name)
    status = read_status(out_dir) or {}
    return "finished" if status.get("status") == "finished" else "resume"


class FinishedLedger(Callback):
    """Records every trial that ends (not errored ones: those are retried on resume)."""

    def __init__(self, storage_path: str, sweep: str):
        self.directory = ledger_dir(storage_path, sweep)

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        record_finished(self.directory, trial.trial_id, last, "diverged" if last.get("diverged") else "ended")


def archive_lost_runs(tracker, sweep: str, known_trial_ids: set[str], roles=("trial",)) -> list[str]:
    """Close and soft-delete child runs still RUNNING whose trial Tune no longer knows."""
    from orchestrator.store.tracking import TAG_OUTCOME, TAG_ROLE, TAG_SWEEP, TAG_TRIAL

    lost = []
    for role in roles:
        for run in tracker.find_runs(**{TAG_SWEEP: sweep, TAG_ROLE: role}):
            trial_id = run.data.tags.get(TAG_TRIAL)
            if run.info.status == "RUNNING" and trial_id and trial_id not in known_trial_ids:
                tracker.client.set_tag(run.info.run_id, TAG_OUTCOME, TAG_LOST)
                tracker.finish(run.info.run_id, "KILLED")
                tracker.client.delete_run(run.info.run_id)
                lost.append(trial_id)
    return lost


class SweepInterrupted(UserError):
    exit_code = 130


def tune_was_interrupted(results) -> bool:
    """True if ``Tuner.fit()`` returned because it was interrupted (Ctrl-C, SIGUSR1 from the
    watchdog) with trials neither finished nor errored."""
    analysis = getattr(results, "_experiment_analysis", None)
    trials = getattr(analysis, "trials", None) or []
    return any(t.status not in ("TERMINATED", "ERROR") for t in trials)


def sweep_callbacks(storage_path: str, sweep: str) -> list[Callback]:
    """The reliability callbacks of every Tuner of a sweep (main and reference runs)."""
    from orchestrator.run.watchdog import Heartbeat

    return [Heartbeat(), FinishedLedger(storage_path, sweep)]


class _StaleCheckpointNoise(logging.Filter):
    """After a restore, Tune's snapshot can list checkpoints that the killed run had already
    deleted (``num_to_keep``); Tune then logs a traceback when it fails to delete them again.
    Nothing is lost (the newer checkpoints exist), so that becomes one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, FileNotFoundError) and "Error handling checkpoint" in str(record.msg):
            record.msg, record.args, record.exc_info, record.exc_text = (
                "a restored trial's experiment state listed an old checkpoint the crashed run had already "
                "deleted (%s); nothing is lost", (exc,), None, None)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def fit_watched(tuner, spec, name: str, plan=None):
    """``tuner.fit()`` under the watchdog; a stalled or interrupted fit raises instead of letting
    the sweep go on to report a half-run experiment."""
    from orchestrator.run.watchdog import watchdog_for

    noise = _StaleCheckpointNoise()
    tune_log = logging.getLogger("ray.tune.execution.tune_controller")
    tune_log.addFilter(noise)
    watch = SigintWatch()
    try:
        with watchdog_for(spec, name, plan=plan) as dog:
            results = tuner.fit()
    finally:
        tune_log.removeFilter(noise)
    dog.raise_if_aborted()
    if watch.interrupted() or tune_was_interrupted(results):
        raise SweepInterrupted(f"interrupted; the sweep's state is saved: resume it with --resume {name}")
    return results


def _raise_sigint(signum, frame) -> None:
    import signal

    signal.raise_signal(signal.SIGINT)


def term_as_interrupt():
    """SIGTERM (``kill``, a scheduler's stop, ``docker stop``) behaves as Ctrl-C: the signal is
    raised again as SIGINT, which Tune handles during its run (trials stop, state saved) and which
    is a KeyboardInterrupt elsewhere; either way the sweep ends ``interrupted`` with exit 130,
    resumable. ``ray.init`` installs Ray's own SIGTERM handler (which aborts the process), so the
    sweep calls this again after starting Ray. Returns the undo (the CLI also runs in-process, in
    tests)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    before = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _raise_sigint)
    return lambda: signal.signal(signal.SIGTERM, before) if before is not None else None


class SigintWatch:
    """Whether a Ctrl-C (SIGINT) stopped ``Tuner.fit()``. Tune's results cannot say: its cleanup
    marks the running trials TERMINATED and the ungenerated ones are in no list. But Tune installs
    its own SIGINT handler for the run and, when the signal comes, puts back the one it found
    (``ray.tune.tune._setup_signal_catching``); so the handler found before ``fit()`` being in
    place after it means the run was interrupted. Only where Tune installs one: the main thread,
    without ``TUNE_DISABLE_SIGINT_HANDLER``."""

    def __init__(self) -> None:
        import signal
        import threading

        self.active = (threading.current_thread() is threading.main_thread()
                       and not int(os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0") or 0))
        self.before = signal.getsignal(signal.SIGINT) if self.active else None

    def interrupted(self) -> bool:
        """Also puts the handler found before ``fit()`` back: Tune leaves its own in place after a
        run that was not interrupted, and a Ctrl-C after the run (reference runs, the report) would
        then only set Tune's stale flag and be lost."""
        import signal

        if not self.active:
            return False
        interrupted = signal.getsignal(signal.SIGINT) is self.before
        if self.before is not None:  # None: a handler not set from Python, which cannot be put back
            signal.signal(signal.SIGINT, self.before)
        return interrupted


def action_for_name(storage_path: str, name: str, spec) -> str:
    """``fresh`` (no sweep of that name), ``resume`` or ``finished``; see the module docstring."""
    previous = read_saved_spec(sweep_dir(storage_path, name))
    if previous is None:
        return "fresh"
    return existing_sweep_action(sweep_dir(storage_path, name), name, spec, previous.spec)
