"""The fused ``dino`` trial (``vectorize: K``): K (student, teacher) pairs of one architecture, each
with its own lr, weight decay, teacher momentum, init seeds, loss parameters and seed, trained on
the same batches and the same crops.

Each member is a :class:`~trainables.dino.loop.DinoRun` built from its stand-alone parameters
(``DinoParams.member_params``), so it has what its unfused trial has: its teacher (EMA, copied or
frozen per ``teacher_mode``), its loss with its own centre, its optimiser and schedule, its probes.
The trial draws each update's batch and crops once, from member 0's data stream (its ``seed``:
batch order, crops, supervised targets), and every active member takes its step on them in turn
(the loop forward of :mod:`trainables.training.fused`; no vmap). Since an unfused trial's crops
follow its ``seed`` alone (``seed_data_stream``), member k equals its unfused trial with member
0's seed (tests/test_dino_fused.py).

As in the fused ``distill`` trial, the report holds every member's metrics under ``probes`` (a
member that left keeps its last ones) and the best over them at the top level; members a scheduler
stops (``stops``) and members whose loss became non-finite leave the step, the others go on.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from trainables.data import DatasetSplits
from trainables.dino.loop import DinoRun, seed_data_stream
from trainables.runtime.rng import RngState
from trainables.dino.params import DinoParams
from trainables.runtime.epochs import Checkpointed, EpochMeans, FusedEpochs
from trainables.runtime.member_stops import stops_reader
from trainables.runtime.session import Session
from trainables.runtime.trainable import TrialContext, get_trainable


class FusedDino(FusedEpochs):
    """The members of one fused dino trial, the shared data path, one epoch and the reports."""

    def __init__(self, p: DinoParams, data: DatasetSplits, session: Session,
                 stops: Callable[[int | None], set[int]] | None = None):
        members_p = p.member_params()
        self.runs = [DinoRun(mp, data, session) for mp in members_p]
        self.first = first = self.runs[0]
        seed_data_stream(members_p[0].seed)  # each run started its own stream; the trial's is member 0's
        self.session = session
        self.epochs, self.total_steps = first.epochs, first.total_steps
        self.stops = stops or (lambda epoch: set())
        defn = get_trainable("dino")
        self.metric, self.mode_max = defn.metric, defn.mode == "max"
        self.active = list(range(len(self.runs)))
        self.progress: dict[str, Any] = {"epoch": 0, "step": 0, "active": list(self.active), "diverged": [],
                                         "members": [r.progress for r in self.runs]}
        self.last: dict[str, Any] = {"metrics": [{} for _ in self.runs]}

    # -- checkpoint ---------------------------------------------------------------------------------

    def checkpointed(self) -> Checkpointed:
        """Each member's checkpoint entries under ``member<k>.``, and the data stream's generator state."""
        stateful: dict[str, Any] = {"rng": RngState()}
        records: dict[str, dict[str, Any]] = {"last": self.last}
        for k, run in enumerate(self.runs):
            own = run.checkpointed()
            stateful.update({f"member{k}.{name}": obj for name, obj in own.stateful.items() if name != "rng"})
            records.update({f"member{k}.{name}": rec for name, rec in own.records.items()})
        return Checkpointed(stateful, self.progress, records=records)

    def resumed(self) -> None:
        """After a restore: the members' counters and the active set as the checkpoint had them."""
        for run, saved in zip(self.runs, self.progress["members"]):
            run.progress.update(saved)
        self.progress["members"] = [r.progress for r in self.runs]
        self.active = list(self.progress["active"])

    def drop(self, stopped: set[int]) -> None:
        self.active = [k for k in self.active if k not in stopped]
        self.progress["active"] = list(self.active)

    # -- training ---------------------------------------------------------------------------------

    def train_epoch(self, epoch: int) -> dict[int, dict[str, torch.Tensor]]:
        """One epoch of every active member on the shared batches and crops; each member's mean statistics."""
        active = [self.runs[k] for k in self.active]
        means = {k: EpochMeans() for k in self.active}
        for run in active:
            run.start_epoch()
        for group in self.first.update_groups(epoch):
            if self.progress["step"] >= self.total_steps:  # n_steps: stop mid-epoch
                break
            views = [self.first.views(idx) for idx in group]  # one draw for every member
            for k, run in zip(self.active, active):
                means[k].add(run.step(epoch, group, views))
            self.progress["step"] += 1
        for run in active:
            run.end_epoch(epoch)
            run.progress["epoch"] = epoch + 1
        return {k: m.means() for k, m in means.items()}

    def member_metrics(self, k: int, epoch: int, stats: dict[str, float]) -> dict[str, Any]:
        return self.runs[k].epoch_metrics(epoch, stats)

    @property
    def num_epochs(self) -> int:
        return self.epochs

    @property
    def active_members(self) -> list[int]:
        return self.active


def train_dino_fused(p: DinoParams, data: DatasetSplits, session: Session, ctx: TrialContext) -> dict[str, Any]:
    """Train the members of fused trial ``p`` on ``data`` (on ``session.device``), reporting every
    epoch; resumes from ``session.restore()``. Returns the last report."""
    stops = stops_reader(ctx.sweep_name) if ctx.sweep_name else None
    return FusedDino(p, data, session, stops).run(ctx.checkpoint_every)
