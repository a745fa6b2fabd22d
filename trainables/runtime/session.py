"""Where a training loop reports to.

A training loop is written once against :class:`Session` and runs unchanged

* directly inside a Ray Tune function trainable (one worker: :class:`TuneSession`),
* on every rank of a Ray Train ``TorchTrainer`` started from a Tune trainable (DDP: :class:`TrainSession`),
* in-process with no Ray at all (tests, benchmarks, teacher preparation: :class:`LocalSession`).

Checkpoints are plain dicts saved with ``torch.save`` as ``state.pt`` in a checkpoint directory.
"""
from __future__ import annotations

import math
import os
import sys
import tempfile
import warnings
from typing import Any

import torch
import torch.distributed as dist

CHECKPOINT_FILE = "state.pt"
CORRUPT_SUFFIX = ".corrupt"  # a checkpoint folder renamed so, as the resume check advises, is skipped


class TrialDiverged(RuntimeError):
    """The loss became NaN or infinite; the trial cannot continue. The runner turns it into a
    final ``diverged`` report (see :func:`trainables.runtime.runner.diverged_result`), not a trial error,
    so Tune neither retries it nor counts it as a failure of the sweep."""

    def __init__(self, message: str, epoch: int | None = None):
        super().__init__(message)
        self.epoch = epoch


def current_trial_id() -> str | None:
    """The Tune trial this process serves: a Tune function trainable's own, or, on a rank of the
    trial's Ray Train worker group, the id in the Train run's name (``train-<trial id>``, see
    trainables/runtime/runner.py). None outside a trial (the driver, a test without Ray)."""
    if "ray" not in sys.modules:
        return None
    # Outside a trial Ray answers None with a UserWarning, which the driver's terminal would show.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import ray.train

            name = ray.train.get_context().get_experiment_name()
            if name and name.startswith("train-"):
                return name.removeprefix("train-")
        except Exception:  # noqa: BLE001 - not inside a Train worker
            pass
        try:
            from ray import tune

            return tune.get_context().get_trial_id()
        except Exception:  # noqa: BLE001 - not inside a Tune trial
            return None


# Result key set to 1.0 on a trial's last report when its loss diverged.
DIVERGED = "diverged"


def save_state(directory: str, state: dict[str, Any]) -> None:
    tmp = os.path.join(directory, CHECKPOINT_FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, os.path.join(directory, CHECKPOINT_FILE))


def load_state(directory: str) -> dict[str, Any]:
    path = os.path.join(directory, CHECKPOINT_FILE)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt checkpoint
        raise RuntimeError(f"checkpoint {path} is unreadable or corrupt ({type(exc).__name__}: {exc})") from exc


def state_file_problem(path: str) -> str | None:
    """None if ``path`` is a readable ``torch.save`` file, else what is wrong with it. Checks the
    zip container and every member's CRC, which catches truncation and bit rot without unpickling
    (or trusting) the contents. For checks before Ray starts (resume, a checkpoint to start from)."""
    import zipfile

    if not os.path.exists(path):
        return "does not exist"
    if os.path.isdir(path):
        return "is a directory, not a checkpoint file"
    if os.path.getsize(path) == 0:
        return "is empty"
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError) as exc:
        return f"is not a readable torch checkpoint ({exc})"
    if bad is not None:
        return f"is corrupt (checksum mismatch in {bad})"
    return None


# Key of a restored state saying it is not the checkpoint Tune asked for (the trial's first report
# carries it, and the MLflow child run gets it as the tag ``w2s.checkpoint_note``).
RESTORE_NOTE = "checkpoint_note"


def restore_local(directory: str) -> dict[str, Any] | None:
    """Load the checkpoint in ``directory``. If its state is gone (a corrupt ``state.pt`` set aside
    by the resume check, or a folder moved away), fall back to the newest other readable
    checkpoint of the same trial, or to a fresh start, and say so (printed, and as
    :data:`RESTORE_NOTE` in the returned state; None for a fresh start says it by itself)."""
    if os.path.exists(os.path.join(directory, CHECKPOINT_FILE)):
        return load_state(directory)
    parent = os.path.dirname(directory.rstrip("/"))
    name = os.path.basename(directory.rstrip("/"))
    siblings = sorted(d for d in (os.listdir(parent) if os.path.isdir(parent) else [])
                      if d.startswith("checkpoint_") and not d.endswith(CORRUPT_SUFFIX) and d != name
                      and os.path.exists(os.path.join(parent, d, CHECKPOINT_FILE)))
    for sibling in reversed(siblings):
        try:
            state = load_state(os.path.join(parent, sibling))
        except RuntimeError:
            continue
        note = f"checkpoint {name} has no readable state; resumed from {sibling} (epoch {state.get('progress', {}).get('epoch', '?')})"
        print(note, flush=True)
        return {**state, RESTORE_NOTE: note}
    print(f"checkpoint {name} has no readable state and the trial has no other; it starts over", flush=True)
    return None


def unrecorded_checkpoint(trial_dir: str) -> dict[str, Any] | None:
    """The newest readable checkpoint in a trial's own folder, for a trial Tune restores without
    one. Tune records a trial's checkpoints in its experiment state, which it saves every 10 s or
    more (and after every ``keep`` checkpoints of a trial); a driver killed in between leaves
    checkpoints on disk that the resumed sweep does not know, and the trial would start over,
    losing epochs it completed. Newest by write time (a trial's state only moves forward, and a
    resumed trial may reuse older folder names); said as :data:`RESTORE_NOTE`. None: nothing there."""
    if not os.path.isdir(trial_dir):
        return None
    found = []
    for d in os.listdir(trial_dir):
        path = os.path.join(trial_dir, d, CHECKPOINT_FILE)
        if d.startswith("checkpoint_") and not d.endswith(CORRUPT_SUFFIX) and os.path.isfile(path):
            found.append((os.path.getmtime(path), d))
    for _, name in sorted(found, reverse=True):
        if state_file_problem(os.path.join(trial_dir, name, CHECKPOINT_FILE)) is not None:
            continue
        try:
            state = load_state(os.path.join(trial_dir, name))
        except RuntimeError:
            continue
        note = (f"the sweep's state recorded no checkpoint for this trial; resumed from {name} (epoch "
                f"{state.get('progress', {}).get('epoch', '?')}), found in its folder")
        print(note, flush=True)
        return {**state, RESTORE_NOTE: note}
    return None


def restore_checkpoint(ckpt) -> dict[str, Any] | None:
    """The state in a Tune/Train ``Checkpoint`` (None for no checkpoint)."""
    if ckpt is None:
        return None
    import pyarrow.fs as pafs

    if isinstance(ckpt.filesystem, pafs.LocalFileSystem):
        return restore_local(ckpt.path)
    with ckpt.as_directory() as d:
        return load_state(d)


class Session:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def __init__(self, device: torch.device | None = None):
        self.device = device or default_device()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def report(self, metrics: dict[str, Any], checkpoint: dict[str, Any] | None = None) -> None:
        raise NotImplementedError

    def restore(self) -> dict[str, Any] | None:
        """The state dict of the latest checkpoint to resume from, or ``None`` for a fresh start."""
        raise NotImplementedError

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def clean_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor):
            value = value.item()
        out[key] = value
    return out


class LocalSession(Session):
    """No Ray: keeps reported metrics in memory (and checkpoints on disk if a directory is given)."""

    def __init__(self, device: torch.device | None = None, checkpoint_dir: str | None = None):
        super().__init__(device)
        self.history: list[dict[str, Any]] = []
        self.checkpoint_dir = checkpoint_dir
        self.last_state: dict[str, Any] | None = None

    def report(self, metrics, checkpoint=None):
        self.history.append(clean_metrics(metrics))
        if checkpoint is not None:
            self.last_state = checkpoint
            if self.checkpoint_dir:
                os.makedirs(self.checkpoint_dir, exist_ok=True)
                save_state(self.checkpoint_dir, checkpoint)

    def restore(self):
        if self.checkpoint_dir and os.path.exists(os.path.join(self.checkpoint_dir, CHECKPOINT_FILE)):
            return load_state(self.checkpoint_dir)
        return None

    @property
    def last(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


class TuneSession(Session):
    """A single-worker trial running directly in the Tune function trainable: native Tune
    checkpoints, so PBT can clone them and ``Result.checkpoint`` is set."""

    def report(self, metrics, checkpoint=None):
        from ray import tune

        metrics = clean_metrics(metrics)
        if checkpoint is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            save_state(tmp, checkpoint)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

    def restore(self):
        from ray import tune

        ckpt = tune.get_checkpoint()
        if ckpt is None:
            trial_dir = _local_trial_dir()
            return unrecorded_checkpoint(trial_dir) if trial_dir else None
        return restore_checkpoint(ckpt)


def _local_trial_dir() -> str | None:
    """This Tune trial's folder in the sweep's storage when that is a local path, else None.
    Ray has no public accessor for it (``get_trial_dir`` is the node's working copy)."""
    try:
        import pyarrow.fs as pafs
        from ray.train._internal.session import get_session

        storage = get_session().storage
        if isinstance(storage.storage_filesystem, pafs.LocalFileSystem):
            return storage.trial_fs_path
    except Exception:  # noqa: BLE001 - an internal API: without it the trial starts as Tune says
        return None
    return None


class TrainSession(Session):
    """One rank of a Ray Train V2 worker group. Every rank calls ``report`` (it is a barrier);
    only rank 0 attaches the checkpoint."""

    def __init__(self):
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.local_rank = ctx.get_local_rank()
        super().__init__(ray.train.torch.get_device())

    def prepare_model(self, model):
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def report(self, metrics, checkpoint=None):
        import ray.train

        metrics = clean_metrics(metrics)
        if checkpoint is None or not self.is_main:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            save_state(tmp, checkpoint)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    def restore(self):
        import ray.train

        return restore_checkpoint(ray.train.get_checkpoint())


def check_finite(loss: torch.Tensor, where: str, session: Session | None = None, epoch: int | None = None) -> None:
    """Raise :class:`TrialDiverged` if ``loss`` is not finite on this rank or, with a distributed
    ``session``, on any rank, so that every rank stops at the same epoch (a rank that went on alone
    would wait forever in the next collective). Costs one host sync, so call it once per epoch on
    an accumulated value, not every step."""
    loss = torch.as_tensor(loss)
    value = float(loss)
    if session is not None and session.distributed:
        bad = torch.tensor([0.0 if math.isfinite(value) else 1.0], device=session.device)
        if float(session.all_reduce_sum(bad)) > 0 and math.isfinite(value):
            raise TrialDiverged(f"loss became non-finite on another rank at {where}", epoch)
    if not math.isfinite(value):
        raise TrialDiverged(f"loss became {value} at {where}", epoch)
