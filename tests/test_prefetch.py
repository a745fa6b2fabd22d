"""The batch prefetcher's thread and queue (run here on the CPU; on a GPU it adds a side stream)."""
import threading

import pytest
import torch

from trainables.runtime.prefetch import prefetched

CPU = torch.device("cpu")


def test_the_thread_yields_every_item_in_order_and_runs_ahead_at_most_depth():
    made = []
    consumed = []

    def make(i):
        made.append(i)
        return torch.full((2,), float(i))

    for i, out in enumerate(prefetched(make, range(20), CPU, depth=2, threaded=True)):
        # the producer may be ahead by the queue (2), the item in hand (1) and one blocked put (1)
        assert len(made) - len(consumed) <= 4
        consumed.append(i)
        assert torch.equal(out, torch.full((2,), float(i)))
    assert consumed == list(range(20)) and made == list(range(20))


def test_an_error_in_the_producer_surfaces_in_the_consumer():
    def make(i):
        if i == 3:
            raise ValueError("bad batch 3")
        return i

    got = []
    with pytest.raises(ValueError, match="bad batch 3"):
        for out in prefetched(make, range(10), CPU, threaded=True):
            got.append(out)
    assert got == [0, 1, 2]


def test_leaving_early_stops_the_thread():
    before = threading.active_count()
    gen = prefetched(lambda i: i, range(1000), CPU, depth=2, threaded=True)
    assert next(gen) == 0
    gen.close()
    assert threading.active_count() == before


def test_on_the_cpu_by_default_it_is_map():
    assert list(prefetched(lambda i: i * i, range(5), CPU)) == [0, 1, 4, 9, 16]
