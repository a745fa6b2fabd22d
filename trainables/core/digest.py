"""Content digests of files, for cache keys that name a file by what it holds, not where it is."""
from __future__ import annotations

import functools
import hashlib
import os


def sha256_file(path: str) -> str:
    """Hex SHA-256 of a file's bytes, streamed."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@functools.lru_cache(maxsize=128)
def _memo(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def file_digest(path: str) -> str:
    """SHA-256 of ``path``, memoised on (path, size, mtime): checkpoints are hashed once per process
    even when every candidate trial config names them."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    st = os.stat(path)
    return _memo(path, st.st_size, st.st_mtime_ns)
