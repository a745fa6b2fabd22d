"""The checkpointed epoch loop every training loop shares: resume from the session's checkpoint, run
the remaining epochs, check the loss once per epoch, report every epoch and checkpoint every
``checkpoint_every`` epochs and at the last one.

A loop supplies what is particular to it: the objects its checkpoint holds (:class:`Checkpointed`),
one epoch of training (returning the epoch's mean training statistics, still on the device), and
what to report after it (evaluation, probes). The checkpoint is a plain dict, one entry per state
dict, then ``progress`` (at least ``epoch``: the epochs done), then any other plain dicts::

    {"model": ..., "optimizer": ..., "scheduler": ..., "progress": {"epoch": 4, ...}, ...}
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch

from trainables.runtime.session import RESTORE_NOTE, Session, check_finite


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


@dataclass
class Checkpointed:
    """What a checkpoint saves and a resume restores, by checkpoint key.

    ``stateful``: objects saved by ``state_dict()`` and restored by ``load_state_dict`` (models,
    optimisers, schedulers, losses); those named in ``optional`` are skipped on resume when the
    checkpoint has no (or an empty) entry for them. ``progress``: the loop's counters, updated in
    place on resume, so counters a checkpoint lacks keep their starting values. ``records``: other
    plain dicts (latest probe results, ...), replaced in place on resume.
    """

    stateful: dict[str, Stateful]
    progress: dict[str, Any] = field(default_factory=lambda: {"epoch": 0})
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    optional: tuple[str, ...] = ()

    def state(self) -> dict[str, Any]:
        return {**{name: obj.state_dict() for name, obj in self.stateful.items()},
                "progress": dict(self.progress), **{name: dict(rec) for name, rec in self.records.items()}}

    def load(self, saved: dict[str, Any]) -> None:
        for name, obj in self.stateful.items():
            if name in self.optional and not saved.get(name):
                continue
            obj.load_state_dict(saved[name])
        self.progress.update(saved["progress"])
        for name, rec in self.records.items():
            rec.clear()
            rec.update(saved[name])


class EpochMeans:
    """Per-step statistics summed on the device (no host sync), averaged at the end of the epoch."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0

    def add(self, stats: dict[str, torch.Tensor]) -> None:
        for key, value in stats.items():
            self.sums[key] = self.sums.get(key, 0.0) + value.detach()
        self.steps += 1

    def means(self, prefix: str = "train_") -> dict[str, torch.Tensor]:
        return {f"{prefix}{k}": v / max(self.steps, 1) for k, v in self.sums.items()}


def wants_checkpoint(epochs_done: int, epochs: int, every: int) -> bool:
    """A checkpoint after the last epoch, and after every ``every``-th (0: the last only)."""
    return epochs_done == epochs or (every > 0 and epochs_done % every == 0)


def run_epochs(session: Session, state: Checkpointed, epochs: int,
               train_epoch: Callable[[int], dict[str, torch.Tensor]],
               epoch_metrics: Callable[[int, dict[str, float]], dict[str, Any]],
               checkpoint_every: int = 0) -> dict[str, Any]:
    """Resume ``state`` from ``session.restore()`` if there is a checkpoint, then for each epoch
    left (0-based ``epoch`` from ``state.progress["epoch"]`` to ``epochs - 1``):

    1. ``train_epoch(epoch)``: the epoch's mean training statistics (device tensors: its steps
       need no host sync), which must include ``train_loss``; a non-finite loss (on any rank)
       raises :class:`TrialDiverged`;
    2. ``epoch_metrics(epoch, stats)``, with the statistics read back as floats: the metrics to report;
    3. ``progress["epoch"] = epoch + 1``, then ``session.report`` with a checkpoint of ``state``
       (rank 0 only) when :func:`wants_checkpoint`.

    Returns the last reported metrics ({} if no epoch was left)."""
    restored = session.restore()
    note = None
    if restored is not None:
        note = restored.pop(RESTORE_NOTE, None)
        state.load(restored)
    metrics: dict[str, Any] = {}
    for epoch in range(state.progress["epoch"], epochs):
        stats = train_epoch(epoch)
        check_finite(stats["train_loss"], f"epoch {epoch + 1}", session, epoch + 1)
        metrics = epoch_metrics(epoch, {k: float(v) for k, v in stats.items()})
        if note:  # once: the first report after resuming from an older checkpoint than Tune's
            metrics, note = {**metrics, RESTORE_NOTE: note}, None
        state.progress["epoch"] = epoch + 1
        checkpoint = None
        if wants_checkpoint(epoch + 1, epochs, checkpoint_every) and session.is_main:
            checkpoint = state.state()
        session.report(metrics, checkpoint=checkpoint)
    return metrics


class FusedEpochs:
    """The epoch loop of a fused trial (``vectorize: K``; distill's FusedRun, dino's FusedDino):
    :func:`run_epochs` for K members that leave one by one. After each epoch every member's loss
    is checked (one host sync; summed over DDP ranks, since a rank's own loss can be finite): a
    non-finite one leaves, reported diverged, the others go on. Each report holds every member's
    latest metrics (trainables/runtime/vectorize.py); after it, the members a scheduler stopped on
    that epoch leave (``stops(epoch)`` waits for its decision: trainables/runtime/member_stops.py).

    A fused trial provides ``session``, ``stops``, ``metric``, ``mode_max``, ``progress`` (with
    ``epoch``, ``active``, ``diverged``), ``last`` (``{"metrics": [per member]}``) and:"""

    session: Session
    stops: Callable[[int | None], set[int]]
    metric: str
    mode_max: bool
    progress: dict[str, Any]
    last: dict[str, Any]

    @property
    def num_epochs(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def active_members(self) -> list[int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def checkpointed(self) -> Checkpointed:  # pragma: no cover - abstract
        raise NotImplementedError

    def resumed(self) -> None:
        """After a restore, before training: the members' state as the checkpoint's progress has it."""

    def train_epoch(self, epoch: int) -> dict[int, dict[str, torch.Tensor]]:  # pragma: no cover - abstract
        """One epoch of the active members: each one's mean statistics (``train_loss`` among them)."""
        raise NotImplementedError

    def member_metrics(self, k: int, epoch: int, stats: dict[str, float]) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError

    def drop(self, members: set[int]) -> None:  # pragma: no cover - abstract
        """``members`` leave the step; ``progress["active"]`` follows."""
        raise NotImplementedError

    def sum_over_ranks(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def agree(self, chosen: set[int]) -> set[int]:
        """Rank 0's ``chosen`` on every rank (one process: itself)."""
        return set(chosen)

    def run(self, checkpoint_every: int = 0) -> dict[str, Any]:
        from trainables.runtime.vectorize import diverged_member_metrics, members_report

        state = self.checkpointed()
        restored = self.session.restore()
        note = None
        if restored is not None:
            note = restored.pop(RESTORE_NOTE, None)
            state.load(restored)
            self.resumed()
            # Stops decided after the checkpoint was written (a retried trial's mailbox still has
            # them); no wait: no report of this process is pending a decision.
            self.drop(self.agree(self.stops(None) if self.session.is_main else set()))
        epochs, report = self.num_epochs, {}
        for epoch in range(self.progress["epoch"], epochs):
            if not self.active_members:
                break
            stats = self.train_epoch(epoch)
            losses = self.sum_over_ranks(torch.stack([s["train_loss"].float() for s in stats.values()])).tolist()
            diverged = set()
            for (k, s), loss in zip(stats.items(), losses):
                if math.isfinite(loss):
                    self.last["metrics"][k] = self.member_metrics(k, epoch, {n: float(v) for n, v in s.items()})
                else:
                    diverged.add(k)
                    self.last["metrics"][k] = diverged_member_metrics(epoch, self.metric, self.mode_max)
            self.drop(diverged)
            self.progress.update(epoch=epoch + 1, diverged=sorted(set(self.progress["diverged"]) | diverged))
            report = members_report(self.last["metrics"], self.progress["epoch"])
            if note:  # once: the first report after resuming from an older checkpoint than Tune's
                report, note = {**report, RESTORE_NOTE: note}, None
            checkpoint = None
            if wants_checkpoint(epoch + 1, epochs, checkpoint_every) and self.session.is_main:
                checkpoint = state.state()
            self.session.report(report, checkpoint=checkpoint)
            # A scheduler's decisions on this report: the stopped members leave before the next
            # epoch (rank 0 reads them; every rank drops the same ones). None after the last.
            if epoch + 1 < epochs:
                self.drop(self.agree(self.stops(epoch + 1) if self.session.is_main else set()))
        return report
