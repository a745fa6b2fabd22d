"""A local Ray that Ray's own address discovery can find, even with other Ray instances on the
machine (two sweeps on one workstation, several developers on one server).

Ray Train's ``PlacementGroupCleaner`` (a detached actor that frees a worker group's placement
group when its controller dies, for example when ASHA stops a trial) calls the State API without
an address. With a local ``ray.init()`` nothing records the address, so the State API scans for
running GCS processes and fails with "Found multiple active Ray instances" as soon as there is a
second one; every early-stopped DDP trial then leaks its placement group and the sweep can
dead-lock (observed here: the watchdog test on a shared machine). So the sweep gives its local Ray
a temp dir of its own (``RAY_TMPDIR``, inherited by every Ray process it starts) and writes the GCS
address where discovery looks first, inside that dir, where no other Ray reads it.

A SIGKILLed driver leaves its local Ray behind (a dozen processes and the temp dir). So the driver
records, in the sweep folder (``w2s_local_ray.json``), its temp dir and the Ray processes it
started, and the next run of the same sweep, holding the sweep's lock, stops those of a dead driver
and removes the dir (:func:`clean_up_dead_driver`).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import tempfile
import time

TEMP_PREFIX = "w2s-ray-"
_own_dir: str | None = None  # the temp dir prepare_local_ray created in this process


def prepare_local_ray() -> str | None:
    """Before ``ray.init()`` of a local Ray: a private ``RAY_TMPDIR`` (unless the user set one,
    which is then theirs to keep private). Returns the dir it created."""
    if os.environ.get("RAY_TMPDIR"):
        return None
    # Short and under /tmp: Ray puts unix sockets under it, and their paths are length-limited.
    global _own_dir
    own = tempfile.mkdtemp(prefix=TEMP_PREFIX, dir="/tmp" if os.path.isdir("/tmp") else None)
    os.environ["RAY_TMPDIR"] = own
    _own_dir = own
    return own


def publish_address(own_dir: str | None) -> None:
    """After ``ray.init()``: record the GCS address in the private temp dir."""
    if not own_dir:
        return
    import ray

    try:
        from ray._private.utils import write_ray_address  # what `ray start` does; private but stable

        write_ray_address(ray.get_runtime_context().gcs_address)
    except Exception:  # noqa: BLE001 - without it only the leak protection above is lost
        pass
    print(f"  local Ray: temp dir {own_dir} (logs in {own_dir}/ray/session_latest/logs)", flush=True)


def stop_local_ray(keep_dir: bool) -> None:
    """At the driver's exit: shut down the local Ray this process started (what Ray's own ``atexit``
    handler would do next), then remove its private temp dir, unless ``keep_dir``.

    The dir holds nothing the sweep needs after a clean exit (Ray's sockets, session logs, runtime
    env files: about 3.5 MB for the quickstart), and /tmp is often memory; a driver that exits
    through an error or an interrupt keeps it for its Ray logs (the next run of the same sweep
    removes it, :func:`clean_up_dead_driver`). Nothing is removed for a Ray this process did not
    start: a cluster, or a ``RAY_TMPDIR`` the user set (which is how to keep the logs)."""
    if _own_dir is None:
        return
    import ray

    ray.shutdown()
    if not keep_dir:
        shutil.rmtree(_own_dir, ignore_errors=True)


def _ray_processes_of(own_dir: str) -> list[tuple[int, int | None, str]]:
    """(pid, start time, command) of this user's processes of the local Ray whose temp dir is
    ``own_dir``: they inherited ``RAY_TMPDIR=own_dir`` (workers too) or name the dir on their
    command line. The dir's name is random (``mkdtemp``), so no other Ray matches."""
    from orchestrator.store.lock import proc_start_time

    env_entry = f"RAY_TMPDIR={own_dir}".encode() + b"\0"
    on_cmdline = re.compile(re.escape(own_dir.encode()) + rb"(?=[/\0\s=:,;'\"]|$)")
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read() + b"\0"
        except OSError:  # gone, or another user's
            continue
        if (b"\0" + env_entry) in (b"\0" + environ) or on_cmdline.search(cmdline):
            found.append((pid, proc_start_time(pid), cmdline.replace(b"\0", b" ").decode(errors="replace")[:200]))
    return found


def record_local_ray(out_dir: str) -> None:
    """After ``ray.init()`` of a local Ray: write this driver and its Ray's temp dir and processes
    to the sweep folder, for :func:`clean_up_dead_driver`. Nothing for a Ray this driver did not
    start (a cluster, a user's ``RAY_TMPDIR``)."""
    from orchestrator.store.layout import LOCAL_RAY_FILE
    from orchestrator.store.lock import holder_info
    from orchestrator.store.storage import join, write_text

    if not _own_dir or not os.path.isdir("/proc"):
        return
    processes = [{"pid": pid, "start": start, "cmd": cmd} for pid, start, cmd in _ray_processes_of(_own_dir)]
    # A driver that leads its process group (started from a shell, or with start_new_session) passes
    # the group to every process it and its Ray start: the clean-up also stops that group's members.
    group = os.getpgid(0) if os.getpgid(0) == os.getpid() else None
    payload = {"driver": holder_info(), "temp_dir": _own_dir, "processes": processes, "group": group}
    try:
        write_text(join(out_dir, LOCAL_RAY_FILE), json.dumps(payload, indent=1))
    except Exception:  # noqa: BLE001 - without it only the clean-up after a kill is lost
        pass


def clean_up_dead_driver(out_dir: str, grace_s: float = 3.0) -> str | None:
    """Before Ray starts, holding the sweep's lock: if the sweep's last driver on this host died
    (SIGKILL) and left its local Ray, stop those processes (only those still the same processes:
    same PID and start time, or naming that Ray's own temp dir) and remove the temp dir. Returns
    the one line to print, or None when there was nothing to do."""
    from orchestrator.store.layout import LOCAL_RAY_FILE
    from orchestrator.store.lock import same_process
    from orchestrator.store.storage import join, read_text, write_text

    path = join(out_dir, LOCAL_RAY_FILE)
    try:
        record = json.loads(read_text(path) or "null")
    except Exception:  # noqa: BLE001 - unreadable: nothing known to clean
        return None
    if not isinstance(record, dict) or not os.path.isdir("/proc"):
        return None
    driver = record.get("driver") or {}
    if driver.get("host") != socket.gethostname():
        return None  # another machine's processes: not ours to stop
    if same_process(int(driver.get("pid", 0)), driver.get("pid_start")) and driver.get("pid") != os.getpid():
        return None  # still alive (we hold the lock, so it is not running this sweep any more)
    temp_dir = str(record.get("temp_dir") or "")
    if os.path.basename(temp_dir.rstrip("/")).startswith(TEMP_PREFIX):
        later = {pid: (start, cmd) for pid, start, cmd in _ray_processes_of(temp_dir)}
    else:
        temp_dir, later = "", {}
    targets = {p["pid"] for p in record.get("processes", [])
               if isinstance(p, dict) and same_process(int(p.get("pid", 0)), p.get("start"))}
    targets |= set(later)
    group = record.get("group")
    if isinstance(group, int) and group == driver.get("pid"):
        # processes the dead driver's group still holds (Ray workers started after the record, helper
        # processes); only those started after the driver, so a recycled group id is left alone
        targets |= set(_group_members(group, driver.get("pid_start")))
    targets.discard(os.getpid())
    # a zombie is gone already, only not yet reaped (seen for a second or two after a driver's
    # exit, its parent gone too): nothing to stop, and not a leftover to report
    stopped = _stop({pid for pid in targets if _exists(pid)}, grace_s)
    removed = False
    if temp_dir and os.path.isdir(temp_dir):
        shutil.rmtree(temp_dir, ignore_errors=True)
        removed = not os.path.exists(temp_dir)
    write_text(path, "null")  # cleaned: a later run has nothing to do
    if not stopped and not removed:
        return None
    parts = ([f"stopped {stopped} leftover local Ray process(es)"] if stopped else []) + (
        [f"removed its Ray temp dir {temp_dir}"] if removed else [])
    return f"  the sweep's previous driver (pid {driver.get('pid', '?')}) is gone: " + " and ".join(parts)


def _stop(pids: set[int], grace_s: float) -> int:
    """SIGTERM, then SIGKILL after ``grace_s`` for those still there. Returns how many were signalled."""
    from orchestrator.store.lock import proc_start_time, same_process

    signalled = {}
    for pid in pids:
        start = proc_start_time(pid)
        try:
            os.kill(pid, signal.SIGTERM)
            signalled[pid] = start
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + grace_s
    alive = set(signalled)
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = {pid for pid in alive if _exists(pid)}
    for pid in alive:
        if not same_process(pid, signalled[pid]):
            continue
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + 5.0  # a SIGKILLed process still takes a moment to go
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = {pid for pid in alive if _exists(pid)}
    return len(signalled)


def _group_members(pgid: int, not_before) -> list[int]:
    """Live processes of process group ``pgid`` that started at or after ``not_before`` (a
    /proc start time; None: no check)."""
    from orchestrator.store.lock import proc_start_time

    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) != pgid or fields[0] == b"Z":
            continue
        start = proc_start_time(int(entry))
        if not_before is None or (start is not None and start >= not_before):
            members.append(int(entry))
    return members


def _exists(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"  # a zombie is gone already
    except (OSError, IndexError):
        return False
