"""One driver per sweep: a lock in the sweep folder, taken before Ray starts and before anything
else of the sweep is written, held until the driver exits.

* Local storage: ``fcntl.flock`` on ``<storage>/<name>/w2s_driver.lock``. The kernel releases it
  when the driver's process ends, however it ends (a SIGKILLed driver included), so a stale lock
  cannot block a later run; the file holds the holder's host and PID, so a second driver is
  refused with them. A driver deletes the file when it lets go (after checking, on taking it, that
  it locked the file that is there, so a deleted file is never locked twice), so a driver that
  finds the file with a holder's details in it knows that holder died holding it and says it took
  the lock over. Over NFS this relies on the server's lock manager (NFSv4 has one).
* Object storage (``s3://``): a conditional write (``If-None-Match: *``) of the lock object through
  boto3; see :func:`_s3_acquire`. Other object stores (``gs://``) get no lock: the ``running``
  status file is the only guard there (docs/reliability.md says so).
"""
from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from orchestrator.errors import UserError
from orchestrator.store.layout import LOCK_FILE
from orchestrator.store.storage import join


def proc_start_time(pid: int) -> int | None:
    """The process's start time (clock ticks after boot, from ``/proc/<pid>/stat``), which tells a
    process from a later one that reuses its PID; None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    try:  # the command name (field 2) may hold spaces and parentheses: split after its last ')'
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def same_process(pid: int, start_time: int | None) -> bool:
    """Whether ``pid`` is still the process that had ``start_time`` (any process when None)."""
    now = proc_start_time(pid)
    return now is not None and (start_time is None or now == start_time)


def holder_info() -> dict[str, Any]:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "pid_start": proc_start_time(pid), "since": time.time()}


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "a driver whose details are not written yet"
    since = holder.get("since")
    when = f", since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}" if since else ""
    return f"driver pid {holder.get('pid', '?')} on host {holder.get('host', '?')}{when}"


def _parse(text: str | bytes | None) -> dict[str, Any] | None:
    try:
        value = json.loads(text) if text else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


@dataclass
class SweepLock:
    """A held lock; :meth:`release` (or leaving the ``with`` block) gives it back."""

    name: str
    path: str
    previous: dict[str, Any] | None = None  # the last holder, when it died holding the lock
    _release: Callable[[], None] | None = field(default=None, repr=False)

    def release(self) -> None:
        if self._release is not None:
            release, self._release = self._release, None
            release()

    def took_over(self) -> str | None:
        """One line when the lock was taken over from a driver that died holding it."""
        if not self.previous:
            return None
        return (f"took over the lock of sweep {self.name} from {_describe(self.previous)}, which is no longer "
                "running (killed?)")

    def __enter__(self) -> "SweepLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def refusal(name: str, holder: dict[str, Any] | None, where: str) -> UserError:
    return UserError(f"sweep {name} is already running ({_describe(holder)}; lock {where}); two drivers on one sweep "
                     f"would corrupt its state. Wait for it, or stop it (Ctrl-C) and then --resume {name}")


def acquire_sweep_lock(out_dir: str, name: str) -> SweepLock:
    """Take the sweep's lock or raise a one-line :class:`UserError` (exit 2) naming the driver that
    holds it. Never waits."""
    if "://" not in out_dir or out_dir.startswith("file://"):
        return _local_acquire(out_dir.removeprefix("file://"), name)
    if out_dir.startswith("s3://"):
        return _s3_acquire(out_dir, name)
    return SweepLock(name, join(out_dir, LOCK_FILE))  # no lock on this store; see the module docstring


def _local_acquire(out_dir: str, name: str) -> SweepLock:
    import fcntl

    directory = os.path.abspath(os.path.expanduser(out_dir))
    path = os.path.join(directory, LOCK_FILE)
    created = not os.path.isdir(directory)
    while True:
        try:
            os.makedirs(directory, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by Ray's processes (PEP 446)
        except OSError as exc:
            raise UserError(f"--storage-path {os.path.dirname(directory)} is not writable "
                            f"({type(exc).__name__}: {exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = None
            for _ in range(20):  # the holder writes its details right after locking
                holder = _parse(os.pread(fd, 4096, 0))
                if holder:
                    break
                time.sleep(0.05)
            os.close(fd)
            raise refusal(name, holder, path) from None
        try:  # the holder we waited for may have deleted the file on release: lock the current one
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    previous = _parse(os.pread(fd, 4096, 0))
    payload = json.dumps(holder_info()).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, payload, 0)

    def release() -> None:
        """Delete the file while still holding it (a later acquirer checks it locked the file
        that is there), and the sweep folder if this run created it and left nothing else."""
        try:
            os.unlink(path)
            if created:
                os.rmdir(directory)  # fails, as it should, unless empty
        except OSError:
            pass
        finally:
            os.close(fd)  # releases the flock

    return SweepLock(name, path, previous, release)


def _s3_client_and_key(uri: str):
    """A boto3 client for the bucket of ``uri`` (honouring pyarrow's ``endpoint_override`` and
    ``scheme`` query parameters, as the tests' moto server uses) and the lock object's key."""
    from urllib.parse import parse_qs, urlparse

    import boto3

    parsed = urlparse(uri)
    query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
    endpoint = query.get("endpoint_override") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
        "AWS_ENDPOINT_URL")
    if endpoint and "://" not in endpoint:
        endpoint = f"{query.get('scheme', 'https')}://{endpoint}"
    client = boto3.client("s3", endpoint_url=endpoint or None, region_name=query.get("region") or None)
    key = "/".join(p for p in (parsed.path.strip("/"), LOCK_FILE) if p)
    return client, parsed.netloc, key


# A driver on object storage refreshes its lock object this often; one not refreshed for
# STALE_AFTER_S belongs to a dead driver and is taken over.
HEARTBEAT_S = 30.0
STALE_AFTER_S = 120.0


def _s3_acquire(out_dir: str, name: str) -> SweepLock:
    """``PutObject`` with ``If-None-Match: *`` creates the lock object only if there is none (S3 and
    most compatible stores have supported it since 2024); a thread refreshes it every
    ``HEARTBEAT_S``. A lock object older than ``STALE_AFTER_S`` (its driver died: no PID can be
    checked on another host) is deleted and the conditional write tried once more, so of two
    drivers taking over at once only one wins."""
    import threading

    from botocore.exceptions import ClientError

    client, bucket, key = _s3_client_and_key(out_dir)
    where = f"s3://{bucket}/{key}"
    previous = None
    for attempt in range(2):
        body = json.dumps(holder_info()).encode()
        try:
            client.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")
            break
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code not in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                raise UserError(f"--storage-path: cannot write the sweep's lock {where} ({code}: {exc})") from None
        try:
            current = client.get_object(Bucket=bucket, Key=key)
            holder = _parse(current["Body"].read())
            age = time.time() - current["LastModified"].timestamp()
        except ClientError:  # deleted in between: try again
            holder, age = None, 0.0
            continue
        if attempt == 1 or age < STALE_AFTER_S:
            raise refusal(name, holder, where)
        previous = holder or {}
        client.delete_object(Bucket=bucket, Key=key)
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                client.put_object(Bucket=bucket, Key=key, Body=json.dumps(holder_info()).encode())
            except Exception:  # noqa: BLE001 - a missed refresh is retried next time
                pass

    thread = threading.Thread(target=heartbeat, name="w2s-sweep-lock", daemon=True)
    thread.start()

    def release() -> None:
        stop.set()
        try:
            client.delete_object(Bucket=bucket, Key=key)
        except Exception:  # noqa: BLE001 - then it goes stale after STALE_AFTER_S
            pass

    return SweepLock(name, where, previous, release)
