"""A CPU-runnable detector of device-to-host syncs in a training step.

``torch.cuda.set_sync_debug_mode`` only sees syncs on a GPU. :class:`SyncCheck` sees the *ops* that
would force one there: it is a ``TorchDispatchMode`` that watches every aten op a region runs and
records those that read a tensor's value on the host or whose output shape depends on the data
(the GPU must finish before the host can size the result). Which ops that is was found by running
the Python spellings under a dispatch mode in torch 2.14:

- ``.item()``, ``float(t)``, ``int(t)``, ``bool(t)``, ``if t:``  ->  ``aten._local_scalar_dense``
- ``t[mask]`` (bool mask), ``t[mask] = v``  ->  ``aten.index.Tensor`` / ``aten.index_put_`` with a bool index
- ``t.nonzero()``, ``torch.where(mask)``, ``torch.argwhere``  ->  ``aten.nonzero``
- ``torch.unique``  ->  ``aten._unique2``; ``unique_consecutive``; ``bincount``; ``masked_select``
- ``torch.repeat_interleave(repeats)`` without ``output_size``  ->  ``aten.repeat_interleave.Tensor``
- ``torch.equal``, ``torch.allclose``  ->  ops that return a Python bool
- ``t.cpu()``, ``t.to("cpu")`` of a device tensor  ->  ``aten._to_copy`` / ``aten.copy_`` to the CPU
- ``torch.tensor(x, device=d)`` -> ``aten.lift_fresh`` (and, on a GPU, a blocking host-to-device
  ``_to_copy``): a copy from pageable memory, which waits for the stream (``scalar_like`` fills instead)

``tolist()`` and ``numpy()`` of a CPU tensor dispatch no op at all, so the mode wraps those two
methods while it is active. Dispatch modes are per thread: ops on a side thread (the prefetcher)
are not watched, though the two wrapped methods, being process-wide, are.

On a GPU, ops on CPU tensors are host work, not syncs: ``SyncCheck(device_only=True)`` ignores
them. On the CPU every tensor is a host tensor, so the default watches all of them; code that
keeps host-side bookkeeping in tensors (a mask built with ``torch.arange``) shows up there, and is
better written in plain Python.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

aten = torch.ops.aten

# Ops that sync whatever their arguments (their result is a host value or data-sized).
ALWAYS_SYNC = {
    aten._local_scalar_dense.default: "reads a tensor's value on the host (.item(), float(), bool(), if t:)",
    aten.is_nonzero.default: "reads a tensor's truth value on the host (bool(t))",
    aten.nonzero.default: "data-dependent shape (nonzero / torch.where(mask) / argwhere)",
    aten.masked_select.default: "data-dependent shape (masked_select)",
    aten._unique.default: "data-dependent shape (unique)",
    aten._unique2.default: "data-dependent shape (unique)",
    aten.unique_dim.default: "data-dependent shape (unique)",
    aten.unique_consecutive.default: "data-dependent shape (unique_consecutive)",
    aten.unique_dim_consecutive.default: "data-dependent shape (unique_consecutive)",
    aten.bincount.default: "data-dependent shape (bincount: its length is the max value + 1)",
    aten.equal.default: "returns a host bool (torch.equal)",
    aten.allclose.default: "returns a host bool (torch.allclose)",
    aten._linalg_check_errors.default: "reads the LAPACK info on the host (a linalg error check)",
    aten.lift_fresh.default: "a tensor from Python data (torch.tensor): on a GPU a blocking host-to-device copy",
}
BOOL_INDEX = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
REPEAT_INTERLEAVE = {aten.repeat_interleave.Tensor, aten.repeat_interleave.self_Tensor}
COPIES = {aten._to_copy.default, aten.copy_.default}
HOST_METHODS = ("tolist", "numpy")

# Frames of these packages are machinery, not the code that asked for the sync.
_SKIP = (os.path.dirname(torch.__file__), os.path.abspath(__file__))


@dataclass(frozen=True)
class HostSync:
    op: str
    reason: str
    where: str  # "file:line in function" of the innermost frame outside torch

    def __str__(self) -> str:
        return f"{self.op} at {self.where}: {self.reason}"


class HostSyncError(RuntimeError):
    pass


def _tensors(*trees: Any) -> list[torch.Tensor]:
    return [t for t in tree_leaves(list(trees)) if isinstance(t, torch.Tensor)]


def sync_reason(func, args: tuple, kwargs: dict) -> str | None:
    """Why ``func(*args, **kwargs)`` forces a device-to-host sync, or None when it does not."""
    if func in ALWAYS_SYNC:
        return ALWAYS_SYNC[func]
    if func in BOOL_INDEX:
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        if any(t is not None and t.dtype in (torch.bool, torch.uint8) for t in indices):
            return "boolean-mask indexing: data-dependent shape (use masked_fill / torch.where)"
        return None
    if func in REPEAT_INTERLEAVE:
        if kwargs.get("output_size") is None:
            return "data-dependent shape (repeat_interleave without output_size)"
        return None
    if func in COPIES:
        if func is aten.copy_.default:
            source, target, non_blocking = args[1], args[0].device, args[2] if len(args) > 2 else False
        else:
            source, target = args[0], kwargs.get("device") or args[0].device
            non_blocking = kwargs.get("non_blocking", False)
        source_host, target_host = source.device.type == "cpu", torch.device(target).type == "cpu"
        if target_host and not source_host:
            return "device-to-host copy (.cpu() / .to('cpu'))"
        if source_host and not target_host and not non_blocking:
            return "blocking host-to-device copy (pageable memory waits for the stream; non_blocking from pinned)"
    return None


def caller(skip: tuple[str, ...] = _SKIP) -> str:
    """The innermost stack frame outside torch and this module, as ``file:line in function`` (frames
    walked directly: no source lines read, so a region with many syncs stays fast)."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = os.path.abspath(frame.f_code.co_filename)
        if not filename.startswith(skip):
            return f"{os.path.relpath(filename)}:{frame.f_lineno} in {frame.f_code.co_name}"
        frame = frame.f_back
    return "<unknown>"


class SyncCheck(TorchDispatchMode):
    """Records (``raise_on_sync=False``) or raises :class:`HostSyncError` on every op that forces a
    device-to-host sync, with the op and the line that ran it::

        with SyncCheck() as check:
            step()
        assert not check.syncs, check.report()
    """

    def __init__(self, raise_on_sync: bool = False, device_only: bool = False):
        super().__init__()
        self.raise_on_sync, self.device_only = raise_on_sync, device_only
        self.syncs: list[HostSync] = []
        self._saved: dict[str, Any] = {}

    def found(self, op: str, reason: str) -> None:
        sync = HostSync(op, reason, caller())
        self.syncs.append(sync)
        if self.raise_on_sync:
            raise HostSyncError(str(sync))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        reason = sync_reason(func, args, kwargs)
        # a copy's direction already says whether it crosses to or from the host
        host_work = func not in COPIES and all(t.device.type == "cpu" for t in _tensors(args, kwargs))
        if reason is not None and not (self.device_only and host_work):
            self.found(str(func), reason)
        return func(*args, **kwargs)

    def _wrap(self, name: str):
        original = getattr(torch.Tensor, name)

        def method(tensor, *args, **kwargs):
            if not (self.device_only and tensor.device.type == "cpu"):
                self.found(f"Tensor.{name}", "copies a tensor's values to the host")
            return original(tensor, *args, **kwargs)

        return method

    def __enter__(self):
        # tolist / numpy dispatch nothing on a CPU tensor: wrapped so the mode sees them too
        for name in HOST_METHODS:
            self._saved[name] = torch.Tensor.__dict__.get(name)
            setattr(torch.Tensor, name, self._wrap(name))
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            for name, saved in self._saved.items():
                if saved is None:
                    delattr(torch.Tensor, name)
                else:
                    setattr(torch.Tensor, name, saved)
            self._saved.clear()

    def report(self) -> str:
        return "\n".join(str(s) for s in self.syncs) or "no host syncs"
