"""The host-sync detector itself (trainables/runtime/sync_check.py): every Python spelling of a
device-to-host sync is caught with its op and this file's line, the sync-free rewrites are not,
raising mode raises, and the Tensor methods it wraps are put back."""
import numpy as np
import pytest
import torch

from trainables.runtime.sync_check import HostSyncError, SyncCheck, sync_reason

X = torch.arange(24.0).view(6, 4) - 11.5
MASK = X > 0
ZERO = torch.zeros(())

SYNCING = {
    "item": (lambda: X.sum().item(), "aten._local_scalar_dense.default"),
    "float": (lambda: float(X.sum()), "aten._local_scalar_dense.default"),
    "if_tensor": (lambda: 1 if X.sum() > 0 else 0, "aten._local_scalar_dense.default"),
    "bool_any": (lambda: bool(MASK.any()), "aten._local_scalar_dense.default"),
    "bool_mask_read": (lambda: X[MASK], "aten.index.Tensor"),
    "bool_rows": (lambda: X[MASK[:, 0]], "aten.index.Tensor"),
    "bool_mask_write": (lambda: X.clone().__setitem__(MASK, ZERO), "aten.index_put_.default"),
    "nonzero": (lambda: MASK.nonzero(), "aten.nonzero.default"),
    "where_one_arg": (lambda: torch.where(MASK), "aten.nonzero.default"),
    "masked_select": (lambda: torch.masked_select(X, MASK), "aten.masked_select.default"),
    "unique": (lambda: torch.unique(X), "aten._unique2.default"),
    "unique_consecutive": (lambda: torch.unique_consecutive(X), "aten.unique_consecutive.default"),
    "repeat_interleave": (lambda: torch.repeat_interleave(torch.arange(3)), "aten.repeat_interleave.Tensor"),
    "equal": (lambda: torch.equal(X, X), "aten.equal.default"),
    "tolist": (lambda: X.tolist(), "Tensor.tolist"),
    "numpy": (lambda: X.numpy(), "Tensor.numpy"),
    "torch_tensor": (lambda: torch.tensor(0.5), "aten.lift_fresh.default"),
}

SYNC_FREE = {
    "masked_fill": lambda: X.masked_fill(MASK, 0.0),
    "where_three_args": lambda: torch.where(MASK, X, 0.0),
    "long_index": lambda: X[torch.arange(3)],
    "repeat_interleave_sized": lambda: torch.repeat_interleave(X, torch.full((6,), 2), dim=0, output_size=12),
    "fill": lambda: torch.full((), 0.5),
    "reductions": lambda: (X.sum(), MASK.sum(), X.max(dim=0).values, X.argmax(), X.topk(2).values),
}


@pytest.mark.parametrize("spelling", sorted(SYNCING))
def test_each_spelling_of_a_sync_is_recorded_with_its_op_and_line(spelling):
    fn, op = SYNCING[spelling]
    with SyncCheck() as check:
        fn()
    assert [s.op for s in check.syncs] == [op]
    assert "test_sync_check.py:" in check.syncs[0].where


@pytest.mark.parametrize("rewrite", sorted(SYNC_FREE))
def test_the_sync_free_rewrites_are_not_flagged(rewrite):
    with SyncCheck() as check:
        SYNC_FREE[rewrite]()
    assert check.syncs == [], check.report()


def test_raising_mode_stops_at_the_first_sync_and_names_it():
    with pytest.raises(HostSyncError, match=r"aten\._local_scalar_dense.*test_sync_check\.py:\d+"):
        with SyncCheck(raise_on_sync=True):
            X.sum().item()


def test_host_methods_are_restored_and_work_after_the_check():
    with SyncCheck():
        pass
    assert "tolist" not in torch.Tensor.__dict__ and "numpy" not in torch.Tensor.__dict__
    assert X[:1, :2].tolist() == [[-11.5, -10.5]]
    np.testing.assert_array_equal(X.numpy(), np.arange(24.0).reshape(6, 4) - 11.5)


def test_device_only_ignores_host_tensors_but_not_the_cpu_default():
    # On a GPU, ops on CPU tensors are host bookkeeping, not syncs; on the CPU they are all there is.
    with SyncCheck(device_only=True) as host:
        X.sum().item(), X[MASK], X.tolist()
    with SyncCheck() as default:
        X.sum().item()
    assert host.syncs == [] and len(default.syncs) == 1


def test_copies_across_the_host_boundary_are_judged_by_direction():
    # No GPU needed: sync_reason only reads devices, so a meta tensor stands in for a device tensor.
    dev, host = torch.empty(2, device="meta"), torch.empty(2)
    to_copy, copy_ = torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default
    assert "device-to-host" in sync_reason(to_copy, (dev,), {"device": torch.device("cpu")})
    assert "device-to-host" in sync_reason(copy_, (host, dev), {})
    assert "blocking host-to-device" in sync_reason(to_copy, (host,), {"device": torch.device("meta")})
    assert sync_reason(to_copy, (host,), {"device": torch.device("meta"), "non_blocking": True}) is None
    assert sync_reason(to_copy, (dev,), {"dtype": torch.float16}) is None  # a cast stays where it is
