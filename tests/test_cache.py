"""The content-addressed artifact cache: one build, verified reads, atomic publish, corruption."""
import json
import logging
import multiprocessing as mp
import os

import pytest

from orchestrator.store.cache import MANIFEST, ArtifactCache, recipe_key


def write_payload(text):
    def build(d):
        with open(os.path.join(d, "payload.txt"), "w") as f:
            f.write(text)
        return {"length": len(text)}

    return build


def test_build_once_then_hit(tmp_path):
    cache = ArtifactCache(str(tmp_path))
    first = cache.get_or_create("thing", {"a": 1}, write_payload("hello"))
    second = cache.get_or_create("thing", {"a": 1}, write_payload("SHOULD NOT BUILD"))
    assert not first.hit and second.hit
    assert open(second.file("payload.txt")).read() == "hello"
    assert second.meta == {"length": 5}
    assert cache.stats.misses == 1 and cache.stats.hits == 1


def test_key_depends_on_recipe_content_not_order():
    assert recipe_key("k", {"a": 1, "b": 2}) == recipe_key("k", {"b": 2, "a": 1})
    assert recipe_key("k", {"a": 1}) != recipe_key("k", {"a": 2})
    assert recipe_key("k", {"a": 1}) != recipe_key("other", {"a": 1})


def test_interrupted_build_leaves_nothing_readable(tmp_path):
    cache = ArtifactCache(str(tmp_path))

    def crash(d):
        with open(os.path.join(d, "payload.txt"), "w") as f:
            f.write("half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        cache.get_or_create("thing", {"a": 1}, crash)
    assert cache.lookup("thing", recipe_key("thing", {"a": 1})) is None
    assert not any(n.startswith(".build-") for n in os.listdir(tmp_path / "thing"))
    entry = cache.get_or_create("thing", {"a": 1}, write_payload("whole"))
    assert not entry.hit and open(entry.file("payload.txt")).read() == "whole"


def test_corrupt_file_is_detected_and_rebuilt(tmp_path, caplog):
    cache = ArtifactCache(str(tmp_path))
    entry = cache.get_or_create("thing", {"a": 1}, write_payload("hello"))
    with open(entry.file("payload.txt"), "w") as f:
        f.write("hellO")  # same size, different bytes
    with caplog.at_level(logging.WARNING):
        again = cache.get_or_create("thing", {"a": 1}, write_payload("rebuilt"))
    assert not again.hit and open(again.file("payload.txt")).read() == "rebuilt"
    assert "is corrupt" in caplog.text and cache.stats.rebuilt_corrupt == 1


def test_corrupt_manifest_is_detected(tmp_path):
    cache = ArtifactCache(str(tmp_path))
    entry = cache.get_or_create("thing", {"a": 1}, write_payload("hello"))
    with open(os.path.join(entry.path, MANIFEST), "w") as f:
        f.write("{not json")
    assert cache.lookup("thing", entry.key) is None


def _race(root, barrier, out):
    cache = ArtifactCache(root)
    barrier.wait()

    def build(d):
        with open(os.path.join(d, "payload.txt"), "w") as f:
            f.write(str(os.getpid()))
        return {}

    entry = cache.get_or_create("thing", {"a": 1}, build)
    out.put((entry.hit, open(entry.file("payload.txt")).read()))


def test_concurrent_builders_build_exactly_once(tmp_path):
    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(tmp_path), barrier, out)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert sum(not hit for hit, _ in results) == 1
    assert len({payload for _, payload in results}) == 1


def test_manifest_records_checksums(tmp_path):
    cache = ArtifactCache(str(tmp_path))
    entry = cache.get_or_create("thing", {"a": 1}, write_payload("hello"))
    manifest = json.load(open(os.path.join(entry.path, MANIFEST)))
    assert manifest["files"]["payload.txt"]["size"] == 5
    assert len(manifest["files"]["payload.txt"]["sha256"]) == 64
