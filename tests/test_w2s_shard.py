"""The w2s_probe feature pass sharded over Ray Train workers (``resources.workers: N``): the same
Arrow tables as one process, each shard on its own worker, nothing published when a shard fails,
and the plan saying so. The sharded runs use a local Ray of two CPUs (two 1-CPU workers)."""
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from orchestrator.store.feature_store import TABLE_FILE, FeatureStore
from trainables.runtime.trainable import TrialContext
from trainables.w2s_probe.features import shard_batches
from trainables.w2s_probe.prepare import prepare_w2s

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Digits, both models trained here (the shards load them from the cache): 1797 images in 18
# batches of 100, the last one short, so the two shards are 9 + 9 batches of unequal rows.
DIGITS = {"dataset": "digits", "pretrain_split": {"weak": 0.06, "strong": 0.3},
          "weak": {"model": "linear", "train": {"epochs": 2, "lr": 0.05}},
          "strong": {"model": "cnn", "train": {"epochs": 1, "lr": 0.05}},
          "feature_batch_size": 100}


def _ctx(root: str, **kw) -> TrialContext:
    return TrialContext(artifacts=FeatureStore(root), worker_resources={"CPU": 1.0, "GPU": 0.0}, **kw)


def _table_bytes(store: FeatureStore, kind: str, key: str) -> bytes:
    with open(os.path.join(store.root, kind, key, TABLE_FILE), "rb") as f:
        return f.read()


def test_shards_split_the_batches_contiguously_and_evenly():
    assert [shard_batches(18, 2, i) for i in range(2)] == [(0, 9), (9, 18)]
    assert [shard_batches(10, 4, i) for i in range(4)] == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert [shard_batches(2, 3, i) for i in range(3)] == [(0, 1), (1, 2), (2, 2)]  # a shard may get none


@pytest.mark.slow
def test_two_workers_write_the_tables_one_process_writes(local_ray, tmp_path, one_torch_thread):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    single = prepare_w2s({**DIGITS, "workers": 1}, set(), _ctx(one))
    sharded = prepare_w2s({**DIGITS, "workers": 2}, set(), _ctx(two))
    assert sharded["feature_shards"] == 2 and "feature_shards" not in single
    # the same recipe (workers is not part of it), so the same keys: either reuses the other's entry
    assert (sharded["weak_key"], sharded["strong_key"]) == (single["weak_key"], single["strong_key"])
    assert sharded["feature_passes"] == 2 and sharded["model_trainings"] == 2  # each model trained once
    a, b = FeatureStore(one), FeatureStore(two)
    for kind, role in (("w2s_logits", "weak"), ("w2s_features", "strong")):
        key = single[f"{role}_key"]
        ta = pa.ipc.open_file(pa.py_buffer(_table_bytes(a, kind, key))).read_all()
        tb = pa.ipc.open_file(pa.py_buffer(_table_bytes(b, kind, key))).read_all()
        assert tb.num_rows == ta.num_rows == 1797
        assert tb.schema == ta.schema
        assert tb.equals(ta), kind  # same rows, same order, same values
        np.testing.assert_array_equal(tb.column("index").to_numpy(), np.arange(1797))
        meta_a = a.lookup(kind, key).meta
        meta = b.lookup(kind, key).meta
        assert meta["rows"] == 1797 and meta["sharded"] == 2
        if role == "weak":
            assert meta["acc_all"] == pytest.approx(meta_a["acc_all"])
        # each shard ran on its own Train worker process, over its own contiguous rows
        shards = meta["shards"]
        assert [s["shard"] for s in shards] == [0, 1]
        assert [s["span"] for s in shards] == [[0, 900], [900, 1797]]
        assert shards[0]["pid"] != shards[1]["pid"]
        assert os.getpid() not in {s["pid"] for s in shards}
    # nothing is left in the staging area
    assert not [d for k in ("w2s_logits", "w2s_features") for d in os.listdir(os.path.join(b.root, k))
                if d.startswith(".shards-")]


def test_a_failed_shard_publishes_nothing(tmp_path):
    """Shard 0 finishes, shard 1 writes rows and then fails: the build raises, no entry is
    published, and the staging area is gone."""
    store = FeatureStore(str(tmp_path))

    def run(staging):
        w = staging.writer(0)
        w.write(index=np.arange(3), values=np.ones((3, 2), np.float32))
        staging.finish(0, w, {"shard": 0})
        w = staging.writer(1)
        w.write(index=np.arange(3, 5), values=np.ones((2, 2), np.float32))
        raise RuntimeError("shard 1 failed")

    with pytest.raises(RuntimeError, match="shard 1 failed"):
        store.get_or_create_sharded_table("t", {"r": 1}, 2, run)
    from orchestrator.store.cache import recipe_key
    key = recipe_key("t", {"r": 1})
    assert store.lookup("t", key) is None
    # no entry, no scratch build, no staged shard: only the builders' lock file
    assert [d for d in os.listdir(os.path.join(store.root, "t")) if not d.endswith(".lock")] == []

    def run_missing(staging):  # returns, but shard 1 never marked itself done
        w = staging.writer(0)
        w.write(index=np.arange(3), values=np.ones((3, 2), np.float32))
        staging.finish(0, w, {"shard": 0})
        staging.writer(1).write(index=np.arange(3, 5), values=np.ones((2, 2), np.float32))
        return {}

    with pytest.raises(RuntimeError, match="shard 1 did not finish"):
        store.get_or_create_sharded_table("t", {"r": 1}, 2, run_missing)
    assert store.lookup("t", key) is None
    assert [d for d in os.listdir(os.path.join(store.root, "t")) if not d.endswith(".lock")] == []

    def run_ok(staging):
        for i, rows in enumerate((np.arange(3), np.arange(3, 5))):
            w = staging.writer(i)
            w.write(index=rows, values=np.stack([rows, rows], 1).astype(np.float32))
            staging.finish(i, w, {"shard": i})
        return {"note": "ok"}

    entry = store.get_or_create_sharded_table("t", {"r": 1}, 2, run_ok)
    np.testing.assert_array_equal(entry.columns()["index"], np.arange(5))
    assert entry.meta == {"note": "ok", "rows": 5}


@pytest.mark.slow
def test_a_failed_train_worker_publishes_nothing(local_ray, tmp_path, one_torch_thread):
    """A shard that fails in its Ray Train worker (here: the strong checkpoint is unreadable)
    fails the prepare and leaves neither an entry nor a staging area."""
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a state dict")
    params = {**DIGITS, "workers": 2, "pretrain_split": {"weak": 0.06, "strong": 0.0},
              "strong": {"model": "mlp", "checkpoint": str(bad)}}
    root = str(tmp_path / "store")
    with pytest.raises(Exception):
        prepare_w2s(params, {"weak"}, _ctx(root))
    kind_dir = os.path.join(root, "w2s_features")
    assert os.path.isdir(kind_dir)
    assert [d for d in os.listdir(kind_dir) if not d.endswith(".lock")] == []


def test_the_dry_run_says_how_the_feature_pass_is_sharded(tmp_path):
    space = os.path.join(REPO, "search_spaces", "w2s_digits_probe.yaml")
    out = subprocess.run([sys.executable, os.path.join(REPO, "run_sweep.py"), space, "--dry-run",
                          "--set", "resources.workers=2"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert ("prepare: weak logits / strong embeddings feature pass sharded 2 ways, a Ray Train TorchTrainer "
            "of 2 x (1 CPU, 0 GPU)") in out.stdout
    assert "trials train on 1 worker each" in out.stdout
    assert "trial shape: 1 worker: runs in the Tune trial process" in out.stdout


def test_a_shard_without_rows_adds_nothing(tmp_path):
    """More shards than batches: the empty shard is marked done with no file, and the table is the others'."""
    store = FeatureStore(str(tmp_path))

    def run(staging):
        w = staging.writer(0)
        w.write(index=np.arange(4), values=np.zeros((4, 3), np.float32))
        staging.finish(0, w, {})
        staging.finish(1, staging.writer(1), {})
        return {}

    entry = store.get_or_create_sharded_table("t", {"r": 2}, 2, run)
    np.testing.assert_array_equal(entry.columns()["index"], np.arange(4))
    assert entry.meta["rows"] == 4


def test_more_shards_than_the_machine_holds_is_refused_before_ray(run_cli):
    space = os.path.join(REPO, "search_spaces", "w2s_digits_probe.yaml")
    out = run_cli(space, "--dry-run", "--set", "resources.workers=64", timeout=300)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "resources.workers" in out.stderr and "sharded 64 ways needs 64 CPU" in out.stderr


@pytest.mark.slow
def test_a_sweep_with_two_workers_shards_its_feature_pass(run_cli, tmp_path):
    """The real path: the sweep's prepare task (holding no device) starts the 2-worker pass on the
    local Ray, the trials then train on one worker each from the sharded tables."""
    import json

    space = os.path.join(REPO, "search_spaces", "w2s_digits_probe.yaml")
    out = run_cli(space, "--set", "resources.workers=2", "--set", "params.strong.train.epochs=2",
                  "--set", "num_samples=1", "--set", "params.vectorize=1", "--name", "sharded", "--yes", timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "feature_shards=2" in out.stdout
    cache = tmp_path / "ray_results" / "cache"
    for kind in ("w2s_logits", "w2s_features"):
        (entry,) = [d for d in (cache / kind).iterdir() if not d.name.startswith(".")]
        meta = json.loads((entry / "MANIFEST.json").read_text())["meta"]
        assert meta["sharded"] == 2 and meta["rows"] == 1797
        assert len({s["pid"] for s in meta["shards"]}) == 2


def test_workers_shards_the_prepare_and_each_trial_runs_on_one():
    from orchestrator.space.spec import load_spec, parse_spec

    path = os.path.join(REPO, "search_spaces", "w2s_digits_probe.yaml")
    spec = load_spec(path, overrides=["resources.workers=3"])
    assert spec.fixed_config()["workers"] == 1 and spec.workers_values() == [1]
    assert spec.prepare_config()["workers"] == 3
    with open(path) as f:
        text = f.read().replace("search:\n", "search:\n  workers: {choice: [1, 2]}\n", 1)
    with pytest.raises(Exception, match="search.workers: w2s_probe trials train on one worker each"):
        parse_spec(text, path)
