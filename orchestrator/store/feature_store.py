"""Array tables in the artifact cache: weak-teacher logits and strong-model embeddings, computed
once per (model, weights, dataset, transform) and shared by every trial, node and later sweep.

A table entry is an :class:`~orchestrator.store.cache.ArtifactCache` entry holding one Arrow IPC file
(``table.arrow``, uncompressed so it memory-maps). Columns are 1-D arrays or, for 2-D arrays such
as logits and embeddings, ``fixed_size_list<float32>[D]`` columns, one row per sample. Everything
the artifact cache guarantees carries over: the content-hash key, the atomic publish (a reader
never sees a half-written table), the SHA-256 check on every read (a corrupt table is moved aside,
logged as a warning and recomputed) and one builder per key across processes and nodes, with the
entry living under the sweep's storage path (a local path, ``s3://`` or ``gs://``).

Trials get the store as ``TrialContext.artifacts`` and call :meth:`FeatureStore.get_or_create_table`;
they never import this module.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from orchestrator.store.cache import ArtifactCache, CacheEntry

TABLE_FILE = "table.arrow"


class TableWriter:
    """Streams record batches into the entry's Arrow IPC file while a pass runs, so a pass over
    50,000 images never holds more than one batch of outputs in extra memory."""

    def __init__(self, path: str):
        self.path = path
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
        batch = pa.RecordBatch.from_pydict(arrays)
        if self._writer is None:
            self._schema = batch.schema
            self._sink = pa.OSFile(self.path, "wb")
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
