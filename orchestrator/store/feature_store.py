"""Array tables in the artifact cache: weak-teacher logits and strong-model embeddings, computed
once per (model, weights, dataset, transform) and shared by every trial, node and later sweep.

A table entry is an :class:`~orchestrator.store.cache.ArtifactCache` entry holding one Arrow IPC file
(``table.arrow``, uncompressed so it memory-maps). Columns are 1-D arrays or, for 2-D arrays such
as logits and embeddings, ``fixed_size_list<float32>[D]`` columns, one row per sample. Everything
the artifact cache guarantees carries over: the content-hash key, the atomic publish (a reader
never sees a half-written table), the SHA-256 check on every read (a corrupt table is moved aside,
logged as a warning and recomputed) and one builder per key across processes and nodes, with the
entry living under the sweep's storage path (a local path, ``s3://`` or ``gs://``).

Trials get the store as ``TrialContext.artifacts`` and call :meth:`FeatureStore.get_or_create_table`
(or :meth:`FeatureStore.get_or_create_sharded_table` for a pass computed by several workers);
they never import this module.
"""
from __future__ import annotations

import contextlib
import json
import os
import uuid
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from orchestrator.store.cache import ArtifactCache, CacheEntry, resolve_filesystem

TABLE_FILE = "table.arrow"


class TableWriter:
    """Streams record batches into the entry's Arrow IPC file while a pass runs, so a pass over
    50,000 images never holds more than one batch of outputs in extra memory."""

    def __init__(self, path: str, fs: pafs.FileSystem | None = None):
        self.path = path
        # None: a local file. A staged shard goes through the store's filesystem (s3/gs), so a
        # worker on another node writes where the assembling process reads.
        self._fs = fs
        self._sink: pa.NativeFile | None = None
        self._writer: pa.ipc.RecordBatchFileWriter | None = None
        self._schema: pa.Schema | None = None
        self.rows = 0

    def write(self, **columns: np.ndarray | Any) -> None:
        """Append rows: every keyword is a column, all with the same number of rows."""
        arrays, lengths = {}, set()
        for name, values in columns.items():
            values = _numpy(values)
            lengths.add(len(values))
            arrays[name] = _to_arrow(values)
        if len(lengths) != 1:
            raise ValueError(f"columns of one batch differ in length: {sorted(lengths)}")
        self.append(pa.RecordBatch.from_pydict(arrays))

    def append(self, batch: pa.RecordBatch) -> None:
        """Append a record batch as it is (a staged shard's batch, copied into the whole table)."""
        if self._writer is None:
            self._schema = batch.schema
            self._sink = pa.OSFile(self.path, "wb") if self._fs is None else self._fs.open_output_stream(self.path)
            self._writer = pa.ipc.new_file(self._sink, self._schema)
        elif batch.schema != self._schema:
            raise ValueError(f"batch schema {batch.schema} differs from the table's {self._schema}")
        self._writer.write_batch(batch)
        self.rows += batch.num_rows

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
            self._writer = None


def _numpy(values) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, without importing torch here
        values = values.detach().cpu().numpy()
    return np.ascontiguousarray(values)


def _to_arrow(values: np.ndarray) -> pa.Array:
    if values.ndim == 1:
        return pa.array(values)
    if values.ndim == 2:
        flat = pa.array(values.reshape(-1))
        return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
    raise ValueError(f"table columns are 1-D or 2-D arrays, got shape {values.shape}")


def read_table_file(path: str) -> dict[str, np.ndarray]:
    """All columns of an IPC table as numpy arrays; fixed-size-list columns become 2-D."""
    table = pa.ipc.open_file(pa.memory_map(path, "r")).read_all()  # buffers keep the map alive
    out: dict[str, np.ndarray] = {}
    for name in table.column_names:
        column = table.column(name)
        if pa.types.is_fixed_size_list(column.type):
            width = column.type.list_size
            parts = [chunk.flatten().to_numpy(zero_copy_only=False).reshape(-1, width) for chunk in column.chunks]
            out[name] = np.concatenate(parts) if parts else np.empty((0, width), dtype=np.float32)
        else:
            out[name] = np.array(column.to_numpy())  # a writable copy, like the 2-D columns
    return out


@dataclass
class TableEntry:
    """A verified table entry: ``columns()`` reads it, ``meta`` is what the builder returned."""

    entry: CacheEntry

    @property
    def key(self) -> str:
        return self.entry.key

    @property
    def hit(self) -> bool:
        return self.entry.hit

    @property
    def meta(self) -> dict[str, Any]:
        return self.entry.meta

    def columns(self) -> dict[str, np.ndarray]:
        return read_table_file(self.entry.file(TABLE_FILE))


class FeatureStore(ArtifactCache):
    """The artifact cache plus array tables. A drop-in for ``ArtifactCache`` (same root layout)."""

    def get_or_create_table(self, kind: str, recipe: dict[str, Any],
                            build: Callable[[TableWriter], dict[str, Any] | None]) -> TableEntry:
        """The table for ``recipe``; if absent, ``build(writer)`` computes it by calling
        ``writer.write(column=array, ...)`` batch by batch and returns JSON-able metadata."""

        def build_entry(scratch: str) -> dict[str, Any]:
            writer = TableWriter(os.path.join(scratch, TABLE_FILE))
            try:
                meta = dict(build(writer) or {})
            finally:
                writer.close()
            if writer.rows == 0:
                raise ValueError(f"the {kind} table builder wrote no rows")
            meta["rows"] = writer.rows
            return meta

        return TableEntry(self.get_or_create(kind, recipe, build_entry))

    def get_or_create_sharded_table(self, kind: str, recipe: dict[str, Any], shards: int,
                                    run: Callable[[TableShards], dict[str, Any] | None]) -> TableEntry:
        """The table for ``recipe``; if absent, ``run(staging)`` has ``shards`` workers compute it
        (shard ``i`` writes its rows, in order, to ``staging.writer(i)`` and marks them done with
        ``staging.finish(i, writer, meta)``) and returns the entry's metadata. The shards are then
        copied in shard order into one table: the file one process writing every row in that order
        makes, under the same key and lock as :meth:`get_or_create_table`. It is published through
        the artifact cache's atomic publish only when every shard finished; a failed or missing
        shard raises and publishes nothing. The staging area is removed either way."""
        if shards < 1:
            raise ValueError(f"shards: must be at least 1, got {shards}")

        def build_entry(scratch: str) -> dict[str, Any]:
            staging = TableShards(self.root_uri, f"{self.root}/{kind}/.shards-{uuid.uuid4().hex[:12]}")
            writer = TableWriter(os.path.join(scratch, TABLE_FILE))
            try:
                meta = dict(run(staging) or {})
                for i in range(shards):
                    staging.meta(i)  # every shard finished, or nothing is assembled
                for i in range(shards):
                    for batch in staging.batches(i):
                        writer.append(batch)
            finally:
                writer.close()
                staging.remove()
            if writer.rows == 0:
                raise ValueError(f"the {kind} table's shards wrote no rows")
            meta["rows"] = writer.rows
            return meta

        return TableEntry(self.get_or_create(kind, recipe, build_entry))


class TableShards:
    """The staging area of a table computed in shards by other processes (a sharded feature pass):
    ``<root>/<kind>/.shards-<id>/`` on the store's filesystem, so workers on any node reach it.
    Shard ``i`` writes ``shard-<i>.arrow`` through :meth:`writer`, then :meth:`finish` writes its
    ``shard-<i>.json`` marker, last: a shard without its marker did not finish. Picklable (it names
    the store by URI), so it travels to the workers."""

    def __init__(self, root_uri: str, path: str):
        self.root_uri, self.path = root_uri, path
        self.fs, _ = resolve_filesystem(root_uri)

    def __getstate__(self):
        return {"root_uri": self.root_uri, "path": self.path}

    def __setstate__(self, state):
        self.__init__(state["root_uri"], state["path"])

    def _file(self, shard: int, ext: str) -> str:
        return f"{self.path}/shard-{shard:05d}.{ext}"

    def writer(self, shard: int) -> TableWriter:
        self.fs.create_dir(self.path, recursive=True)
        return TableWriter(self._file(shard, "arrow"), self.fs)

    def finish(self, shard: int, writer: TableWriter, meta: dict[str, Any]) -> None:
        """Close the shard's table and mark it complete with its JSON-able ``meta``."""
        writer.close()
        with self.fs.open_output_stream(self._file(shard, "json")) as f:
            f.write(json.dumps({**meta, "rows": writer.rows}, default=str).encode())

    def meta(self, shard: int) -> dict[str, Any]:
        path = self._file(shard, "json")
        if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
            raise RuntimeError(f"shard {shard} did not finish (no {path}); the table is not published")
        with self.fs.open_input_stream(path) as f:
            return json.loads(f.read().decode())

    def batches(self, shard: int):
        if self.meta(shard)["rows"] == 0:
            return  # a shard with no batches (more shards than batches) wrote no file
        with self.fs.open_input_file(self._file(shard, "arrow")) as f:
            reader = pa.ipc.open_file(f)
            for i in range(reader.num_record_batches):
                yield reader.get_batch(i)

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.fs.delete_dir(self.path)
