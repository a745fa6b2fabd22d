"""Files under ``--storage-path``: a local folder or an object store URI (s3://, gs://), through
pyarrow's filesystems."""
from __future__ import annotations

import os

from orchestrator.store.cache import resolve_filesystem


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def write_bytes(uri: str, data: bytes) -> None:
    fs, path = resolve_filesystem(uri)
    fs.create_dir(os.path.dirname(path), recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)


def read_bytes(uri: str) -> bytes | None:
    import pyarrow.fs as pafs

    fs, path = resolve_filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as f:
        return f.read()


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode())


def read_text(uri: str) -> str | None:
    data = read_bytes(uri)
    return None if data is None else data.decode()
