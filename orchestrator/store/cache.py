"""Content-addressed artifact cache for expensive, shareable products: trained teachers, teacher
logits, embeddings.

An entry lives at ``<root>/<kind>/<key>/`` where ``key`` is a SHA-256 of the recipe that made it
(canonical JSON plus a format version). The root is a local path or any URI pyarrow's filesystems
understand (``s3://``, ``gs://``), so every node of a cluster sees the same entries.

Guarantees:

* **Atomic publish.** An entry is built in a private scratch directory and becomes visible only
  when its ``MANIFEST.json`` (file sizes and SHA-256 checksums) is written, last. On a local disk the
  whole directory is renamed into place; on object stores the manifest is the commit marker. A
  reader never trusts a directory without a valid manifest, so an interrupted write is invisible.
* **Verified reads.** Checksums are checked on every read. A corrupt entry logs a warning, is
  moved aside and is rebuilt.
* **One builder.** Builders of the same key serialise on a lock (``fcntl`` on local disks, a Ray
  named actor across nodes), and the losers of the race read the winner's entry.
* **Resumable builds.** Beside the scratch directory a build gets a work folder,
  ``<kind>/.work-<key>/`` on the building machine, that outlives a failed or interrupted build and
  is removed once the entry is published. A stage trained in the build (a teacher, a Sel-CL stage)
  checkpoints there (``trainables/runtime/stages.py``), so the next build of that key resumes it.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import pyarrow.fs as pafs

from orchestrator.store.secrets import blank
from trainables.core.digest import sha256_file
from trainables.core.stage_work import stage_work

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
MANIFEST = "MANIFEST.json"
WORK_PREFIX = ".work-"  # a build's work folder, kept until its entry is published


class CacheCorrupt(RuntimeError):
    pass


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def recipe_key(kind: str, recipe: dict[str, Any]) -> str:
    payload = canonical_json({"kind": kind, "format": CACHE_FORMAT_VERSION, "recipe": recipe})
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


@dataclass
class CacheEntry:
    kind: str
    key: str
    path: str  # a local directory holding the entry's files
    meta: dict[str, Any]
    hit: bool

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    rebuilt_corrupt: int = 0
    builds: list[str] = field(default_factory=list)


def resolve_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
    return pafs.FileSystem.from_uri(uri)


class ArtifactCache:
    def __init__(self, root: str, local_mirror: str | None = None):
        self.root_uri = root
        self.fs, self.root = resolve_filesystem(root)
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)
        self.local_mirror = local_mirror or os.path.join(tempfile.gettempdir(), "w2s-sweep-cache")
        self.stats = CacheStats()

    # -- paths -----------------------------------------------------------------------------
    def _entry_dir(self, kind: str, key: str) -> str:
        return f"{self.root}/{kind}/{key}"

    def __getstate__(self):  # pyarrow filesystems are re-created on unpickle in workers
        return {"root_uri": self.root_uri, "local_mirror": self.local_mirror}

    def __setstate__(self, state):
        self.__init__(state["root_uri"], state["local_mirror"])

    # -- reading ---------------------------------------------------------------------------
    def lookup(self, kind: str, key: str) -> CacheEntry | None:
        """The verified entry, or ``None`` if it is absent. A corrupt entry is quarantined and
        reported as absent, so the caller rebuilds it."""
        entry_dir = self._entry_dir(kind, key)
        try:
            manifest = self._read_manifest(entry_dir)
        except FileNotFoundError:
            return None
        except CacheCorrupt as exc:
            self._quarantine(kind, key, str(exc))
            return None
        try:
            local = entry_dir if self.is_local else self._download(kind, key, entry_dir, manifest)
            self._verify(local, manifest)
        except CacheCorrupt as exc:
            self._quarantine(kind, key, str(exc))
            return None
        return CacheEntry(kind, key, local, manifest.get("meta", {}), hit=True)

    def _read_manifest(self, entry_dir: str) -> dict[str, Any]:
        path = f"{entry_dir}/{MANIFEST}"
        info = self.fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(path)
        try:
            with self.fs.open_input_stream(path) as f:
                manifest = json.loads(f.read().decode())
            if not isinstance(manifest.get("files"), dict):
                raise ValueError("no file table")
        except (ValueError, UnicodeDecodeError) as exc:
            raise CacheCorrupt(f"manifest {path} is unreadable: {exc}") from exc
        return manifest

    def _verify(self, local_dir: str, manifest: dict[str, Any]) -> None:
        for name, expected in manifest["files"].items():
            path = os.path.join(local_dir, name)
            if not os.path.exists(path):
                raise CacheCorrupt(f"{path} is missing")
            if os.path.getsize(path) != expected["size"] or sha256_file(path) != expected["sha256"]:
                raise CacheCorrupt(f"{path} does not match its checksum")

    def _download(self, kind: str, key: str, entry_dir: str, manifest: dict[str, Any]) -> str:
        local = os.path.join(self.local_mirror, kind, key)
        if os.path.isdir(local):
            try:
                self._verify(local, manifest)
                return local
            except CacheCorrupt:
                shutil.rmtree(local, ignore_errors=True)
        scratch = f"{local}.dl-{uuid.uuid4().hex[:8]}"
        os.makedirs(scratch)
        for name in manifest["files"]:
            pafs.copy_files(f"{entry_dir}/{name}", os.path.join(scratch, name),
                            source_filesystem=self.fs, destination_filesystem=pafs.LocalFileSystem())
        with contextlib.suppress(OSError):
            os.replace(scratch, local)
        shutil.rmtree(scratch, ignore_errors=True)
        return local

    def _quarantine(self, kind: str, key: str, reason: str) -> None:
        log.warning("cache entry %s/%s is corrupt (%s); it will be recomputed", kind, key, reason)
        self.stats.rebuilt_corrupt += 1
        entry_dir = self._entry_dir(kind, key)
        aside = f"{self.root}/{kind}/.corrupt-{key}-{int(time.time())}"
        try:
            self.fs.move(entry_dir, aside)
        except OSError:
            with contextlib.suppress(OSError):
                self.fs.delete_dir(entry_dir)

    # -- writing ---------------------------------------------------------------------------
    def get_or_create(self, kind: str, recipe: dict[str, Any],
                      build: Callable[[str], dict[str, Any] | None]) -> CacheEntry:
        """Return the entry for ``recipe``, calling ``build(scratch_dir)`` to make it if absent.
        ``build`` writes its files into ``scratch_dir`` and returns JSON-able metadata."""
        key = recipe_key(kind, recipe)
        entry = self.lookup(kind, key)
        if entry is not None:
            self.stats.hits += 1
            return entry
        with self._lock(kind, key):
            entry = self.lookup(kind, key)  # someone else may have built it while we waited
            if entry is not None:
                self.stats.hits += 1
                return entry
            self.stats.misses += 1
            self.stats.builds.append(f"{kind}/{key}")
            return self._build(kind, key, recipe, build)

    def _build(self, kind: str, key: str, recipe: dict[str, Any],
               build: Callable[[str], dict[str, Any] | None]) -> CacheEntry:
        scratch_parent = f"{self.root}/{kind}" if self.is_local else os.path.join(self.local_mirror, kind)
        os.makedirs(scratch_parent, exist_ok=True)
        scratch = tempfile.mkdtemp(prefix=f".build-{key}-", dir=scratch_parent)
        # Kept when the build fails, so a stage trained in it (a teacher) resumes from its checkpoint
        # there; made by the first stage that checkpoints, so a build without one leaves nothing behind.
        work = os.path.join(scratch_parent, f"{WORK_PREFIX}{key}")
        try:
            with stage_work(work):
                meta = build(scratch) or {}
            files = {}
            for name in sorted(os.listdir(scratch)):
                path = os.path.join(scratch, name)
                if os.path.isfile(path):
                    files[name] = {"size": os.path.getsize(path), "sha256": sha256_file(path)}
            manifest = {"kind": kind, "key": key, "recipe": blank(recipe), "meta": meta, "files": files,
                        "created": time.time(), "format": CACHE_FORMAT_VERSION}
            entry_dir = self._entry_dir(kind, key)
            if self.is_local:
                with open(os.path.join(scratch, MANIFEST), "w") as f:
                    json.dump(manifest, f, indent=1, default=str)
                    f.flush()
                    os.fsync(f.fileno())
                if os.path.exists(entry_dir):  # a quarantine left nothing, but be safe
                    shutil.rmtree(entry_dir)
                os.replace(scratch, entry_dir)
                local = entry_dir
            else:
                for name in files:
                    pafs.copy_files(os.path.join(scratch, name), f"{entry_dir}/{name}",
                                    source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)
                with self.fs.open_output_stream(f"{entry_dir}/{MANIFEST}") as f:  # commit marker, last
                    f.write(json.dumps(manifest, default=str).encode())
                local = os.path.join(self.local_mirror, kind, key)
                shutil.rmtree(local, ignore_errors=True)
                os.replace(scratch, local)
            shutil.rmtree(work, ignore_errors=True)  # published: nothing left to resume
            return CacheEntry(kind, key, local, meta, hit=False)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    @contextlib.contextmanager
    def _lock(self, kind: str, key: str) -> Iterator[None]:
        if self.is_local:
            lock_dir = f"{self.root}/{kind}"
            os.makedirs(lock_dir, exist_ok=True)
            with open(f"{lock_dir}/.{key}.lock", "w") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
            return
        with _ray_named_lock(f"w2s-cache-{kind}-{key}"):
            yield

    # -- housekeeping ----------------------------------------------------------------------
    def size_bytes(self) -> int:
        selector = pafs.FileSelector(self.root, recursive=True, allow_not_found=True)
        return sum(i.size or 0 for i in self.fs.get_file_info(selector) if i.type == pafs.FileType.File)


@contextlib.contextmanager
def _ray_named_lock(name: str) -> Iterator[None]:
    """A cluster-wide mutex: a detached Ray actor per key. Without Ray, no locking is possible
    on an object store, and the last writer wins (both wrote identical content)."""
    import ray

    if not ray.is_initialized():
        yield
        return

    @ray.remote(num_cpus=0, max_concurrency=64)
    class _Lock:
        def __init__(self):
            import threading

            self._lock = threading.Lock()

        def acquire(self) -> bool:
            return self._lock.acquire(timeout=3600)

        def release(self) -> None:
            self._lock.release()

    actor = _Lock.options(name=name, namespace="w2s-sweep", get_if_exists=True,
                          lifetime="detached").remote()
    ray.get(actor.acquire.remote())
    try:
        yield
    finally:
        ray.get(actor.release.remote())
