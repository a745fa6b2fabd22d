"""Array tables in the artifact cache: Arrow round trip, one build per recipe, atomic writes,
checksum-verified reads with recompute of corrupt entries."""
import logging
import os

import numpy as np
import pyarrow as pa
import pytest

from orchestrator.store.feature_store import TABLE_FILE, FeatureStore


def writes(values: np.ndarray, labels: np.ndarray, batch: int = 7, calls: list | None = None):
    def build(writer):
        if calls is not None:
            calls.append(1)
        for start in range(0, len(labels), batch):
            writer.write(index=np.arange(start, min(start + batch, len(labels))), label=labels[start:start + batch],
                         values=values[start:start + batch])
        return {"dim": values.shape[1]}

    return build


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    return rng.normal(size=(30, 5)).astype(np.float32), rng.integers(0, 3, size=30).astype(np.int64)


def test_round_trip_of_1d_and_2d_columns_across_batches(tmp_path, arrays):
    values, labels = arrays
    entry = FeatureStore(str(tmp_path)).get_or_create_table("feat", {"m": 1}, writes(values, labels))
    cols = entry.columns()
    np.testing.assert_array_equal(cols["values"], values)
    np.testing.assert_array_equal(cols["label"], labels)
    np.testing.assert_array_equal(cols["index"], np.arange(30))
    assert cols["values"].dtype == np.float32 and cols["values"].flags.writeable
    assert entry.meta == {"dim": 5, "rows": 30} and not entry.hit
    # a plain Arrow IPC file: readable by any Arrow client
    table = pa.ipc.open_file(os.path.join(entry.entry.path, TABLE_FILE)).read_all()
    assert table.schema.field("values").type == pa.list_(pa.float32(), 5)


def test_a_second_store_on_the_same_root_reads_and_never_builds(tmp_path, arrays):
    values, labels = arrays
    calls: list = []
    FeatureStore(str(tmp_path)).get_or_create_table("feat", {"m": 1}, writes(values, labels, calls=calls))
    again = FeatureStore(str(tmp_path))  # a later sweep, another process or node
    entry = again.get_or_create_table("feat", {"m": 1}, writes(values, labels, calls=calls))
    assert entry.hit and len(calls) == 1 and again.stats.hits == 1 and again.stats.misses == 0
    other = again.get_or_create_table("feat", {"m": 2}, writes(values, labels, calls=calls))
    assert not other.hit and len(calls) == 2  # a different recipe is a different table


def test_an_interrupted_pass_leaves_no_readable_table(tmp_path, arrays):
    values, labels = arrays
    store = FeatureStore(str(tmp_path))

    def crash(writer):
        writer.write(index=np.arange(3), label=labels[:3], values=values[:3])
        raise RuntimeError("node preempted mid-pass")

    with pytest.raises(RuntimeError):
        store.get_or_create_table("feat", {"m": 1}, crash)
    entry = store.get_or_create_table("feat", {"m": 1}, writes(values, labels))
    assert not entry.hit and len(entry.columns()["label"]) == 30


def test_a_corrupt_table_is_recomputed_with_a_warning(tmp_path, arrays, caplog):
    values, labels = arrays
    store = FeatureStore(str(tmp_path))
    entry = store.get_or_create_table("feat", {"m": 1}, writes(values, labels))
    path = os.path.join(entry.entry.path, TABLE_FILE)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the values
    open(path, "wb").write(bytes(data))
    calls: list = []
    with caplog.at_level(logging.WARNING):
        again = FeatureStore(str(tmp_path)).get_or_create_table("feat", {"m": 1}, writes(values, labels, calls=calls))
    assert "is corrupt" in caplog.text and calls == [1] and not again.hit
    np.testing.assert_array_equal(again.columns()["values"], values)


def test_a_builder_that_writes_nothing_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="wrote no rows"):
        FeatureStore(str(tmp_path)).get_or_create_table("feat", {"m": 1}, lambda writer: {})
