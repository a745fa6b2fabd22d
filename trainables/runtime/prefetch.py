"""Prepare the next training batches while the GPU runs the current step.

The per-step augmentation (kornia's policies draw their parameters on the host and copy them to
the device; timm's mixup draws lambda with numpy) is host work between kernel launches. Run in
series with the step it leaves the GPU idle, and its host-to-device copies from pageable memory
wait for the stream they are issued on to drain. :func:`prefetched` moves that work to a
background thread issuing on its own CUDA stream: the copies then wait for the side stream only,
the training stream never waits for the host, and the batch is handed over with an event (the
training stream waits on it, on the device) plus ``record_stream`` so the allocator does not reuse
its memory early. PyTorch releases the GIL inside its kernels and copies, so the two threads
interleave.

On the CPU (and with ``depth`` 0) it is plain ``map``: the same batches in the same order
(``threaded=True`` runs the thread and queue there too, without streams, for tests).
"""
from __future__ import annotations

import contextlib
import queue
import threading
from typing import Any, Callable, Iterable, Iterator, TypeVar

import torch

T = TypeVar("T")
_END = object()


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v)


def prefetched(make: Callable[[Any], T], items: Iterable[Any], device: torch.device, depth: int = 2,
               threaded: bool | None = None) -> Iterator[T]:
    """``make(item)`` for each item, in order, computed up to ``depth`` items ahead on a side
    thread and CUDA stream when ``device`` is a GPU. Exceptions in ``make`` surface here."""
    cuda = device.type == "cuda"
    if not (cuda if threaded is None else threaded) or depth <= 0:
        yield from map(make, items)
        return
    if cuda and device.index is None:  # the thread starts on device 0: name the caller's device
        device = torch.device("cuda", torch.cuda.current_device())
    stream = torch.cuda.Stream(device) if cuda else None
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            if cuda:
                torch.cuda.set_device(device)
            with torch.cuda.stream(stream) if cuda else contextlib.nullcontext():
                for item in items:
                    out = make(item)
                    done = torch.cuda.Event() if cuda else True
                    if cuda:
                        done.record(stream)
                    if not put((out, done)):
                        return
        except BaseException as exc:  # handed to the consumer, which raises it
            put((exc, None))
            return
        put((_END, None))

    thread = threading.Thread(target=work, name="batch-prefetch", daemon=True)
    thread.start()
    try:
        main = torch.cuda.current_stream(device) if cuda else None
        while True:
            out, done = ready.get()
            if out is _END:
                return
            if done is None:
                raise out
            if cuda:
                main.wait_event(done)
                for tensor in _tensors(out):
                    tensor.record_stream(main)
            yield out
    finally:
        stop.set()
        thread.join()
