"""Fused trials: K students of one architecture trained in one step on the same batches.

A sweep's trials often differ only in values that leave the computation's shape alone (lr, weight
decay, momentum, temperature, loss weights, seed). A fused trial trains K such members together:
each batch is drawn, augmented and looked up in the teacher cache once, the students' forward
passes run as one batched computation, and one backward and one optimiser step update them all.

* **Forward** (:class:`FusedStudents`). ``vmap``: ``torch.func.vmap`` over ``functional_call``
  with the members' parameters held as one stacked leaf per parameter name, each member's
  parameter a view of its row: the forward reads the stack as it is (no copy per step), backward
  writes one gradient per stack, and each member's ``.grad`` is set to its row of it, so the
  members' own optimiser groups update their rows in place. Stacking each step instead cost a
  stack kernel per parameter name forward and, backward, an autograd node per member and name
  (K x 32 for resnet8x4): host work that a launch-bound GPU step pays for. Convolutions become
  one grouped convolution, matmuls one batched matmul. ``loop``: each member's forward in turn (what
  an unfused trial does, minus the shared batch work): on a CPU grouped convolutions are slower
  than K plain ones; when the members' activations together are large it runs each member's
  forward, loss and backward in turn (:meth:`FusedRun.member_by_member`). ``streams``: each
  member's whole step (its optimiser update included) a CUDA graph of its own, the members' graphs
  replayed on streams of their own (:mod:`trainables.training.member_graphs`); eager member by
  member on a CPU. ``auto``: streams on CUDA, vmap or loop there by batch size when the trial has
  DDP workers or ``compile`` (:func:`forward_mode`), loop on a CPU.
* **Batch-norm statistics** stay per member the same way: under vmap the running statistics are
  one stacked tensor per buffer and each member's buffer is a view of its row, so BN's in-place
  update inside the vmapped forward lands in every member's module without a copy. The members'
  batch norms run as one over K x C channels (:mod:`trainables.training.member_norm`), not as
  torch's vmap rule, which applies each member's affine in separate passes.
* **Loss and optimiser** are the members' own: member k's loss module (its own temperature and
  weights) scores member k's logits, the K losses are summed (members share no parameter, so the
  gradient of the sum is each member's own gradient), and one torch optimiser holds every member's
  parameter groups with that member's lr, weight decay and momentum; the schedule multiplies each
  group by the factor of its member's lr. A loss with a vectorised form scores all members in one
  computation; one with parameters or state of its own (DAPT's projectors, CRD's memory banks)
  has its members' modules held stacked as the students' are (:func:`loss_member_stack`). A
  member equals its unfused trial with the same seed and batch order (tests/test_fused.py).
* **Stopping members.** ``stops(epoch)`` (after every report but the last) names members a
  scheduler stopped, once it has decided on that epoch's report; they
  leave the step, which shrinks. A member whose loss became non-finite leaves it too, reported as
  diverged; the others go on.
* **compile** (the members' ``OptimConfig.compile``, any mode a single trial takes): the active
  members' forward (vmap or loop) and every member's loss run as one ``torch.compile``d function
  (:meth:`FusedRun.forward_losses`, static shapes); with ``reduce-overhead`` on CUDA its forward and
  backward replay as CUDA graphs, which is what a launch-bound fused step at a small batch lacks.
  It is rebuilt whenever the active set changes. The teacher lookup, the optimiser step and
  evaluation stay eager (on CUDA the optimiser already runs one fused kernel per parameter group).

Batch order, fixed views and per-step augmentation follow the trial's data seed (member 0's
seed): a member's own seed sets its initialisation (and its loss's), as in an unfused trial.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from trainables.data import DatasetSplits
from trainables.losses import DistillLoss, LossInputs
from trainables.runtime.engine import (autocast, build_optimizer, epoch_batches, evaluate, head_lr_groups, lr_factor,
                                       steps_per_epoch)
from trainables.runtime.epochs import Checkpointed, EpochMeans, FusedEpochs
from trainables.runtime.prefetch import prefetched
from trainables.runtime.session import Session
from trainables.training.batch_augment import BatchAugment
from trainables.training.classifier_loop import OptimConfig, TeacherSignal, compiled_forward
from trainables.training.member_graphs import MemberGraphs
from trainables.training.member_norm import fold_member_batch_norm, members_vmapped
from trainables.training.views import BatchViews, PlainViews

FORWARD_MODES = ("auto", "vmap", "loop", "streams")


# Per-member batch up to which ``auto`` picks vmap on CUDA where streams cannot run (DDP workers,
# or ``compile`` set). Measured on an H100 (resnet8x4, K = 16, bf16; bench/results/sweep_gpu.jsonl),
# vmap against sequential trials: 1.9-2.3x at batch 64, 1.49x at 128, 1.05x at 256, 0.41-0.61x at
# 512, where loop ran 1.02x. On an H200 (same file, 2026-11-28) eager vmap ran 3.24x at batch 64 and
# vmap compiled with reduce-overhead 6.48x; streams ran 10.2x at 64 and 1.87x at 512, so ``auto``
# takes streams wherever it can run.
VMAP_MAX_BATCH = 256

# Forward activations of all members together up to which the eager loop forward keeps them all
# alive for one vectorised loss computation and one backward; above, it runs member by member
# (FusedRun.one_at_a_time). Measured on the 2-core CPU (bench/sweep_gpu.py, K = 4, batch 64, fused
# over sequential trials, all at once / member by member): the quickstart's MLP (0.1 MiB per
# member) 1.54x / 1.28x; cnn_small at 8 px (7.5 MiB, 30 MiB together) 1.08-1.13x / 0.98-1.02x;
# at 16 px (10 MiB, 40 MiB together) 0.85-1.03x / 1.05-1.09x. The crossover lies in between.
ALL_AT_ONCE_BYTES = 32 * 2**20


def forward_mode(mode: str, device: torch.device, batch_size: int, *, distributed: bool = False,
                 compiled: bool = False) -> str:
    """The forward a fused trial runs. ``auto`` on CUDA is ``streams`` (each member's step a CUDA
    graph on a stream of its own, :mod:`trainables.training.member_graphs`: 10.2x sequential trials
    at batch 64 and 1.87x at 512 on an H200, against vmap's 3.24x and loop's 1.02x) unless the trial
    has DDP workers (``distributed``: the gradient average would have to run inside every member's
    graph) or is ``compiled`` (which captures the step itself); then vmap at small per-member batches
    (where one trial leaves the GPU launch-bound and fusing fills it) and loop at large ones, where
    vmap's grouped convolutions are slower than K plain ones. On a CPU ``auto`` is loop: grouped
    convolutions are slower there at every size, and there is nothing to capture."""
    if mode not in FORWARD_MODES:
        raise ValueError(f"fused forward {mode!r}; accepted: {', '.join(FORWARD_MODES)}")
    if mode != "auto":
        return mode
    if device.type != "cuda":
        return "loop"
    if not distributed and not compiled:
        return "streams"
    return "vmap" if batch_size <= VMAP_MAX_BATCH else "loop"


class MemberStack:
    """The members' copies of one module (a student, or a loss with parameters), held stacked: one
    tensor (K, ...) per parameter and per stacked buffer over the active members, each member's own
    tensor a view of its row.

    A stacked parameter is a leaf of its own: a vmapped forward reads it, backward fills its
    ``.grad``, :meth:`share_grads` hands each member its row, and the member's optimiser group
    updating its parameter in place updates the row. An in-place buffer update inside vmap (BN's
    statistics, CRD's memory banks) lands in each member's buffer at once. ``buffers``: which
    buffers to stack, by name (default all; a loss stacks only its state, not constants such as
    the training labels, which every member shares)."""

    def __init__(self, modules: list[nn.Module], buffers: Callable[[str], bool] = lambda name: True):
        self.modules = modules
        self.names = [n for n, _ in modules[0].named_parameters()]
        self.buffer_names = [n for n, _ in modules[0].named_buffers() if buffers(n)]
        self.params: dict[str, torch.Tensor] = {}
        self.buffers: dict[str, torch.Tensor] = {}
        self._rows: list[list[nn.Parameter]] = []  # per stacked parameter, in its order: the active members' own

    def build(self, active: list[int]) -> None:
        params, self._rows = {}, []
        for name in self.names:
            rows = [self.modules[k].get_parameter(name) for k in active]
            # torch.stack keeps the rows' layout: a channels_last weight stays channels_last in its row.
            stack = torch.stack([r.detach() for r in rows]).requires_grad_(rows[0].requires_grad)
            for row, p in enumerate(rows):
                # ``.data`` swaps what the Parameter holds and keeps the object, so the optimiser's
                # references and per-parameter state (momentum, Adam moments) stay valid.
                p.data = stack.detach()[row]
            params[name] = stack
            self._rows.append(rows)
        buffers = {}
        for name in self.buffer_names:
            rows = [self.modules[k].get_buffer(name) for k in active]
            if any(r is None for r in rows):
                continue
            buffers[name] = torch.stack([r.detach() for r in rows])
            for row, k in enumerate(active):
                owner, _, leaf = name.rpartition(".")
                module = self.modules[k].get_submodule(owner) if owner else self.modules[k]
                module._buffers[leaf] = buffers[name][row]
        self.params, self.buffers = params, buffers

    def share_grads(self) -> None:
        """After backward: each active member's gradient is its row of the stacked parameter's
        gradient (a view, no copy); the stacks' own gradients are cleared so that the next
        backward starts from none, as the members' do after ``zero_grad``."""
        for stack, params in zip(self.params.values(), self._rows):  # one unbind per stack, no lookups
            grad, stack.grad = stack.grad, None
            if grad is not None:
                for p, g in zip(params, grad.unbind(0)):
                    p.grad = g

    def release(self, members: list[int]) -> None:
        """Members that left keep their values in tensors of their own, so the old stacks are freed."""
        for k in members:
            for t in (*self.modules[k].parameters(), *self.modules[k].buffers()):
                t.data = t.data.clone()

    def tensors(self) -> list[torch.Tensor]:
        return [*self.params.values(), *self.buffers.values()]


def loss_member_stack(losses: list[DistillLoss]) -> MemberStack | None:
    """The members' loss modules stacked, for a vectorised loss with parameters or state (DAPT's
    projectors, CRD's memory banks): its ``forward_members`` reads them as one. Only what a loss
    checkpoints is stacked (parameters and persistent buffers); constants it derives from the
    dataset (CRD's training labels) stay each member's own. None for the others."""
    first = losses[0]
    state = set(first.state_dict())
    if not type(first).vectorised_members or not state:
        return None
    stack = MemberStack(list(losses), buffers=state.__contains__)
    stack.build(list(range(len(losses))))
    return stack


class FusedStudents(nn.Module):
    """K members of one architecture; ``forward`` runs the active ones on one shared batch."""

    def __init__(self, members: list[nn.Module], mode: str):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.mode = mode
        self.active: list[int] = list(range(len(members)))
        self.stack = MemberStack(list(members))
        if mode == "vmap":
            for m in members:
                fold_member_batch_norm(m)
            self.stack.build(self.active)

    def share_grads(self) -> None:
        if len(self.active) > 1:
            self.stack.share_grads()

    def drop(self, members: set[int]) -> None:
        """Members ``members`` leave the step (their modules keep their last state)."""
        if not members & set(self.active):
            return
        left = [k for k in self.active if k in members]
        self.active = [k for k in self.active if k not in members]
        if self.mode == "vmap":
            self.stack.release(left)
            if self.active:
                self.stack.build(self.active)

    def stacked(self, x: torch.Tensor, features: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (K, N, C) of the active members, in ``active`` order, and features (K, N, D) or None."""
        if self.mode == "vmap" and len(self.active) > 1:
            out = self._vmapped(x, features)
            return out if features else (out, None)
        outs = self.forward(x, features)
        return (torch.stack([o[0] for o in outs]),
                torch.stack([o[1] for o in outs]) if features else None)

    def forward(self, x: torch.Tensor, features: bool = False) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """(logits, features or None) of each active member, in ``active`` order."""
        if self.mode != "vmap" or len(self.active) == 1:
            outs = [self.members[k](x, return_features=True) if features else (self.members[k](x), None)
                    for k in self.active]
            return outs
        out = self._vmapped(x, features)
        if features:
            return list(zip(out[0].unbind(0), out[1].unbind(0)))
        return [(o, None) for o in out.unbind(0)]

    def _vmapped(self, x: torch.Tensor, features: bool):
        """The active members' forward as one vmap over their stacked parameters: logits (K, ...)
        or, with ``features``, (logits, features)."""
        from torch.func import functional_call, vmap

        base = self.members[self.active[0]]

        def one(p, b, inputs):
            kwargs = {"return_features": True} if features else {}
            return functional_call(base, (p, b), (inputs,), kwargs)

        # Dropout and other random ops draw independently per member, as separate trials would.
        try:
            with members_vmapped():
                out = vmap(one, in_dims=(0, 0, None), randomness="different")(self.stack.params, self.stack.buffers, x)
        except RuntimeError as exc:
            if "vmap" not in str(exc) and "Batched" not in str(exc):
                raise
            raise RuntimeError(f"fused_forward vmap: {type(base).__name__} cannot run under torch.func.vmap "
                               f"({str(exc).splitlines()[0]}); set fused_forward: loop") from exc
        return out


class RankSync:
    """What keeps a fused trial's ranks in step under DDP, without wrapping the members in
    DistributedDataParallel (whose one-module, all-parameters-used contract a shrinking set of
    members breaks): gradients averaged in one collective per step, rank 0's state broadcast at
    the start and its batch-norm statistics before each evaluation, and rank 0's view of which
    members stop. No-ops on one process."""

    def __init__(self, session: Session):
        self.session = session
        self.active = session.distributed

    def broadcast(self, tensors: list[torch.Tensor]) -> None:
        if not self.active:
            return
        import torch.distributed as dist

        for t in tensors:
            dist.broadcast(t, src=0)

    def broadcast_flat(self, tensors: list[torch.Tensor]) -> None:
        """Rank 0's values of ``tensors`` (buffers: float and counters), in one collective."""
        if not self.active or not tensors:
            return
        import torch.distributed as dist

        flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors])
        dist.broadcast(flat, src=0)
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t).to(t.dtype))
            offset += t.numel()

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.session.all_reduce_sum(tensor) if self.active else tensor

    def average_gradients(self, params: list[torch.Tensor]) -> None:
        if not self.active or not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = self.session.all_reduce_sum(torch.cat([g.reshape(-1) for g in grads]))
        flat /= self.session.world_size
        offset = 0
        for p in params:
            p.grad = flat[offset:offset + p.numel()].view_as(p)
            offset += p.numel()

    def agree(self, chosen: set[int], n: int) -> set[int]:
        """Rank 0's ``chosen`` on every rank."""
        if not self.active:
            return set(chosen)
        mask = torch.zeros(n, device=self.session.device)
        for k in chosen:
            mask[k] = 1.0
        return {k for k, v in enumerate(self.session.all_reduce_sum(mask).tolist()) if v > 0}


@dataclass
class Member:
    """One member of a fused trial: its student, its loss and its optimisation values."""

    model: nn.Module
    loss_fn: DistillLoss
    optim: OptimConfig
    ema: Any = None
    progress: dict[str, Any] = field(default_factory=lambda: {"best_val_acc": -1.0, "test_acc_at_best_val": 0.0,
                                                              "best_epoch": 0})


def fused_optimizer(members: list[Member], device: torch.device) -> torch.optim.Optimizer:
    """One optimiser over every member's parameter groups, each tagged ``member`` and carrying that
    member's lr, weight decay and momentum (torch optimisers read them per group)."""
    first = members[0].optim
    groups: list[dict] = []
    for k, m in enumerate(members):
        o = m.optim
        for g in head_lr_groups(m.model, o.lr, o.head_lr_mult, extra=m.loss_fn, weight_decay=o.weight_decay,
                                wd_exclude_1d=o.wd_exclude_1d, layer_decay=o.layer_decay):
            g["member"] = k
            g.setdefault("lr", o.lr)  # body groups carry no lr of their own: the optimiser default is member 0's
            if first.optimizer == "sgd":
                g["momentum"] = o.momentum
            groups.append(g)
    optimizer = build_optimizer(first.optimizer, groups, first.lr, first.weight_decay, first.momentum, device,
                                nesterov=first.nesterov, betas=first.betas)
    return optimizer


class FusedRun(FusedEpochs):
    """The parts of one fused trial: members, shared data path, one step, one epoch, the reports."""

    def __init__(self, members: list[Member], data: DatasetSplits, session: Session, seed: int,
                 teacher: TeacherSignal | None, views: BatchViews | None, static_metrics: dict[str, Any],
                 batch_augment: BatchAugment | None = None, mode: str = "auto",
                 stops: Callable[[int], set[int]] | None = None, metric: str = "val_acc", mode_max: bool = True,
                 channels_last: bool | None = None):
        """``channels_last``: None picks it as a single trial does (CUDA and image inputs); the
        benchmark sets it to compare both layouts under vmap."""
        self.members, self.data, self.session, self.seed = members, data, session, seed
        self.device = device = session.device
        self.optim = optim = members[0].optim
        self.teacher, self.views = teacher, views or PlainViews()
        self.batch_augment = batch_augment or BatchAugment()
        self.drop_last = self.batch_augment.mixes
        self.static_metrics = static_metrics
        self.stops = stops or (lambda epoch: set())
        self.metric, self.mode_max = metric, mode_max
        if channels_last is None:
            channels_last = device.type == "cuda" and len(data.input_shape) == 3
        self.channels_last = channels_last
        models = []
        for m in members:
            model = m.model.to(device)
            if self.channels_last:
                model = model.to(memory_format=torch.channels_last)
            m.model = model
            m.loss_fn = m.loss_fn.to(device)
            models.append(model)
        self.students = FusedStudents(models, forward_mode(mode, device, optim.batch_size,
                                                           distributed=session.distributed,
                                                           compiled=optim.compile is not False))
        streams = self.students.mode == "streams"
        if streams and session.distributed:
            raise ValueError("fused_forward streams: a fused trial with DDP workers would average gradients inside "
                             "each member's CUDA graph; use vmap or loop, or one worker")
        if streams and optim.compile is not False:
            raise ValueError(f"fused_forward streams captures each member's step as a CUDA graph itself; "
                             f"compile: {optim.compile!r} is not taken with it (set compile: false)")
        # With streams each member's loss runs on its own (stacking its state would buy nothing).
        self.loss_stack = None if streams else loss_member_stack([m.loss_fn for m in members])
        self._one_at_a_time: bool | None = None
        # The (compiled) forward and losses, and the active set it was built for (see losses_fn).
        self._losses_fn: Callable = self.forward_losses
        self._built_for: tuple[int, ...] | None = None
        self.cuda_graphs = False
        self.losses_fn()  # an unknown compile mode is refused here, before any training
        self.ranks = RankSync(session)
        self.ranks.broadcast([t for m in members for t in (*m.model.state_dict().values(),
                                                           *m.loss_fn.state_dict().values())])
        self.optimizer = fused_optimizer(members, device)
        # fused_forward streams: each member's whole step, through a view of this optimiser.
        self.member_graphs = MemberGraphs(models, [m.loss_fn for m in members], self.optimizer, device,
                                          optim.batch_size) if streams else None
        self.n_train = len(data.train_y)
        per_epoch = steps_per_epoch(self.n_train, optim.batch_size, session.world_size, self.drop_last)
        factors = []
        for g in self.optimizer.param_groups:
            o = members[g["member"]].optim
            factors.append(lr_factor(o.schedule, per_epoch * o.epochs, per_epoch * o.warmup_epochs, lr=o.lr,
                                     warmup_lr=o.warmup_lr, min_lr=o.min_lr, decay_steps=per_epoch * o.decay_epochs,
                                     milestones=tuple(per_epoch * s for s in o.milestones), decay_rate=o.decay_rate))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factors)
        if optim.ema_decay:
            from timm.utils import ModelEmaV3

            for m in members:
                m.ema = ModelEmaV3(m.model, decay=m.optim.ema_decay)
        self.progress: dict[str, Any] = {"epoch": 0, "active": list(range(len(members))), "diverged": [],
                                         "members": [m.progress for m in members]}
        self.last: dict[str, Any] = {"metrics": [{} for _ in members]}

    # -- checkpoint ---------------------------------------------------------------------------------

    def checkpointed(self) -> Checkpointed:
        stateful: dict[str, Any] = {"models": nn.ModuleList([m.model for m in self.members]),
                                    "loss_fns": nn.ModuleList([m.loss_fn for m in self.members]),
                                    "optimizer": self.optimizer, "scheduler": self.scheduler}
        if self.members[0].ema is not None:
            stateful["ema"] = nn.ModuleList([m.ema for m in self.members])
        return Checkpointed(stateful, self.progress, records={"last": self.last}, optional=("loss_fns", "ema"))

    def resumed(self) -> None:
        """After a restore: the members' progress dicts and the active set as the checkpoint had them."""
        for m, prog in zip(self.members, self.progress["members"]):
            m.progress = prog
        self.students.active = list(range(len(self.members)))
        self.drop(set(range(len(self.members))) - set(self.progress["active"]))

    # -- training ---------------------------------------------------------------------------------

    def prepare(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        xb, view_ids = self.views.batch(self.data.train_x, idx)
        xb, yb = self.batch_augment(xb, self.data.train_y[idx])
        if self.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        return xb, yb, view_ids

    def losses_fn(self) -> Callable:
        """What a step calls for the active members' losses: :meth:`forward_losses`, or with
        ``compile`` that method compiled for the current active set.

        Rebuilt (and recompiled) whenever members leave: a graph is traced for one active set (which
        members' parameters it stacks and steps, their loss values, the stacked batch-norm buffers
        it updates), so run for another it would train members that left and miss the new stacks.
        Dynamo also guards on the active list, but rebuilding does not rely on which attributes it
        chose to guard; and dropping the old set's cache entries first keeps a run's drops from
        reaching dynamo's recompile limit (8 entries per function, after which it would run the
        step eagerly with no more than a log line)."""
        active = tuple(self.students.active)
        if self.optim.compile is False or active == self._built_for:
            return self._losses_fn
        from torch._dynamo.eval_frame import remove_from_cache

        # Entries compiled for another active set (or another FusedRun) can never match again.
        remove_from_cache(FusedRun.forward_losses)
        # The vmap forward updates the stacked batch-norm statistics in place, CRD its stacked banks.
        stacks = (*self.students.stack.tensors(), *(self.loss_stack.tensors() if self.loss_stack else ()))
        self._losses_fn, self.cuda_graphs = compiled_forward(self.forward_losses, self.optim.compile, self.device,
                                                             mutated=stacks)
        self._built_for = active
        return self._losses_fn

    def forward_losses(self, xb: torch.Tensor, shared: LossInputs) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
        """The active members' forward on ``xb`` and each one's loss: their sum (what backward
        differentiates; members share no parameter, so its gradient is each member's own) and
        each member's loss statistics, in ``active`` order. ``shared`` holds the batch's inputs
        (targets, teacher outputs, epoch); the students' outputs are set on it here, one member
        after another on the unvectorised path. Setting them on the object passed in, rather than
        building LossInputs here, keeps the epoch out of the compiled function's guards: dynamo
        guards only on the fields a loss reads, so a loss that ignores the epoch compiles once."""
        active = self.students.active
        first = self.members[active[0]].loss_fn
        features = first.needs_features
        losses = [self.members[k].loss_fn for k in active]
        # One loss computation for every member where the loss class has one (a trial has one loss
        # class), down to the last member: its own forward would read the epoch, which a compiled
        # step would guard on and recompile for every epoch (the columns are tensors).
        if type(first).vectorised_members:
            logits, feats = self.students.stacked(xb, features=features)
            shared.student_logits, shared.student_features = logits.float(), feats
            stacked = (self.loss_stack.params, self.loss_stack.buffers) if self.loss_stack else None
            stats = type(first).forward_members(losses, shared, stacked)
        else:
            stats = []
            for loss, (z, f) in zip(losses, self.students(xb, features=features)):
                shared.student_logits, shared.student_features = z.float(), f
                stats.append(loss(shared))
        return torch.stack([s["loss"] for s in stats]).sum(), stats

    def one_at_a_time(self, xb: torch.Tensor) -> bool:
        """Whether this eager loop-forward step runs member by member (:meth:`member_by_member`)
        rather than all forwards, one loss computation, one backward. Decided on the first batch:
        member by member when the loss has no vectorised form (nothing to gain from holding every
        member's logits) or when the members' forward activations together exceed
        :data:`ALL_AT_ONCE_BYTES`."""
        if self.students.mode != "loop" or self.optim.compile is not False:
            return False
        if self._one_at_a_time is None:
            first = self.members[self.students.active[0]]
            together = len(self.members) * forward_bytes(first.model, tuple(xb.shape[1:]), xb.shape[0])
            self._one_at_a_time = not type(first.loss_fn).vectorised_members or together > ALL_AT_ONCE_BYTES
        return self._one_at_a_time

    def member_by_member(self, xb: torch.Tensor, shared: LossInputs) -> list[dict[str, torch.Tensor]]:
        """The eager loop forward: each active member's forward, loss and backward in turn, as
        its own trial would run them. Gradients are the same as one backward of the summed
        losses (members share no parameter), but only one member's activations are alive at a
        time: on a CPU, K members' activations at once overflowed the caches and made the fused
        trial 0.85-1.03x the speed of sequential trials (cnn_small at 16 px, K = 4, batch 64;
        1.05-1.09x member by member; see ALL_AT_ONCE_BYTES). The loss runs per member here, not
        vectorised (that needs every member's logits at once)."""
        stats = []
        for k in self.students.active:
            model, loss_fn = self.members[k].model, self.members[k].loss_fn
            with autocast(self.device):
                z, f = model(xb, return_features=True) if loss_fn.needs_features else (model(xb), None)
                shared.student_logits, shared.student_features = z.float(), f
                out = loss_fn(shared)
            out["loss"].backward()
            stats.append(out)
        return stats

    def step(self, epoch: int, idx: torch.Tensor, prepared: tuple) -> list[dict[str, torch.Tensor]]:
        """One optimiser step of every active member on one batch; each member's loss statistics."""
        xb, yb, view_ids = prepared
        active = self.students.active
        first = self.members[active[0]].loss_fn
        losses_fn = self.losses_fn()
        graphs = self.member_graphs
        if graphs is None:  # (with streams each member's step clears its own)
            self.optimizer.zero_grad(set_to_none=True)
        # DDP's default: every rank starts the step from rank 0's batch-norm statistics.
        if self.ranks.active:  # (the lists walk every member's modules: host time a single process skips)
            self.ranks.broadcast_flat([b for k in active for b in self.members[k].model.buffers()])
        with autocast(self.device):
            t_logits = t_feats = None
            if self.teacher is not None and first.needs_teacher:
                t_logits, t_feats = self.teacher.outputs(idx, xb, features=first.needs_features, views=view_ids)
            epochs = self.optim.epochs
            # student_logits / student_features are filled in by forward_losses.
            shared = LossInputs(student_logits=None, targets=yb, teacher_logits=t_logits, teacher_features=t_feats,
                                indices=idx, epoch=epoch, num_epochs=epochs, progress=epoch / epochs)
            if type(first).vectorised_members and graphs is None:
                shared.member_columns = type(first).epoch_columns([self.members[k].loss_fn for k in active], epoch,
                                                                  epochs, self.device)
        if graphs is not None:
            stats = graphs.step(epoch, xb, shared, active)
            # The members' views stepped every group: what the lr scheduler's order check looks for.
            self.optimizer._opt_called = True
        elif self.one_at_a_time(xb):
            stats = self.member_by_member(xb, shared)
        else:
            with autocast(self.device):
                if self.cuda_graphs:
                    # A new step begins: the graphs' previous outputs may be overwritten. Every consumer
                    # of the last step's outputs (backward, the epoch's statistics) has run by now.
                    torch.compiler.cudagraph_mark_step_begin()
                total, stats = losses_fn(xb, shared)
            total.backward()
            self.students.share_grads()
            if self.loss_stack:
                self.loss_stack.share_grads()
        if self.ranks.active:
            self.ranks.average_gradients([p for k in active for p in (*self.members[k].model.parameters(),
                                                                     *self.members[k].loss_fn.parameters())
                                          if p.requires_grad])
        if graphs is None:
            self.optimizer.step()
        self.scheduler.step()
        for k in active:
            if self.members[k].ema is not None:
                self.members[k].ema.update(self.members[k].model)
        return stats

    def train_epoch(self, epoch: int) -> dict[int, dict[str, torch.Tensor]]:
        self.students.train()
        active = list(self.students.active)
        # The members' statistics are summed as (K,) columns: one stack and one add per statistic
        # and step rather than K adds (a launch-bound GPU step pays per kernel). Per member when
        # their statistics differ in names (decided on the first step; a loss names the same
        # statistics every step).
        columns, alone, stacked = EpochMeans(), {k: EpochMeans() for k in active}, None
        self.views.start_epoch(epoch)
        batches = list(epoch_batches(self.n_train, self.optim.batch_size, epoch, self.seed, self.session,
                                     self.device, drop_last=self.drop_last))
        prepared = iter(prefetched(self.prepare, batches, self.device, depth=2 if self.batch_augment.active else 0))
        for idx in batches:
            stats = self.step(epoch, idx, next(prepared))
            if stacked is None:
                stacked = all(out.keys() == stats[0].keys() for out in stats)
            if stacked:
                columns.add({key: torch.stack([out[key].detach().float() for out in stats]) for key in stats[0]})
            else:
                for k, out in zip(active, stats):
                    alone[k].add(out)
        if not stacked:
            return {k: m.means() for k, m in alone.items()}
        summed = columns.means()
        return {k: {key: col[row] for key, col in summed.items()} for row, k in enumerate(active)}

    def member_metrics(self, k: int, epoch: int, train_stats: dict[str, float]) -> dict[str, Any]:
        m, data, session = self.members[k], self.data, self.session
        val = evaluate(m.model, data.val_x, data.val_y, session)
        test = evaluate(m.model, data.test_x, data.test_y, session)
        progress = m.progress
        if val["acc"] > progress["best_val_acc"]:
            progress.update(best_val_acc=val["acc"], test_acc_at_best_val=test["acc"], best_epoch=epoch + 1)
        extra = {f"{split}_top5": r["top5"] for split, r in (("val", val), ("test", test)) if "top5" in r}
        if m.ema is not None:
            extra["ema_val_acc"] = evaluate(m.ema.module, data.val_x, data.val_y, session)["acc"]
            extra["ema_test_acc"] = evaluate(m.ema.module, data.test_x, data.test_y, session)["acc"]
        lr = float(next(g["lr"] for g in self.optimizer.param_groups if g["member"] == k))  # a tensor with streams
        return {"epoch": epoch + 1, **train_stats, **extra, "val_acc": val["acc"], "val_loss": val["loss"],
                "test_acc": test["acc"], "test_loss": test["loss"], "best_val_acc": progress["best_val_acc"],
                "test_acc_at_best_val": progress["test_acc_at_best_val"], "lr": lr, **self.static_metrics}

    # -- what the epoch loop (FusedEpochs.run) asks of a fused trial ------------------------------

    @property
    def num_epochs(self) -> int:
        return self.optim.epochs

    @property
    def active_members(self) -> list[int]:
        return self.students.active

    def drop(self, members: set[int]) -> None:
        left = [k for k in self.students.active if k in members]
        self.students.drop(members)
        if self.member_graphs is not None:
            self.member_graphs.release(left)
        if self.loss_stack and left:
            self.loss_stack.release(left)
            if self.students.active:
                self.loss_stack.build(self.students.active)
        self.progress["active"] = list(self.students.active)

    def sum_over_ranks(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.ranks.sum(tensor)

    def agree(self, chosen: set[int]) -> set[int]:
        return self.ranks.agree(chosen, len(self.members))


def train_fused(*, members: list[Member], data: DatasetSplits, session: Session, seed: int,
                teacher: TeacherSignal | None = None, checkpoint_every: int = 0,
                static_metrics: dict[str, Any] | None = None, views: BatchViews | None = None,
                batch_augment: BatchAugment | None = None, mode: str = "auto",
                stops: Callable[[int], set[int]] | None = None, metric: str = "val_acc",
                mode_max: bool = True) -> dict[str, Any]:
    """Train the fused ``members`` on ``data`` (on ``session.device``), reporting every epoch;
    resumes from ``session.restore()``. Returns the last report."""
    run = FusedRun(members, data, session, seed, teacher, views, static_metrics or {}, batch_augment, mode,
                   stops, metric, mode_max)
    return run.run(checkpoint_every)


def forward_bytes(model: nn.Module, input_shape: tuple[int, ...], batch_size: int) -> int:
    """Bytes of every output of ``model``'s forward at ``batch_size`` (what backward may keep),
    counted on the meta device: the model runs on meta copies of its parameters and buffers
    (``functional_call``), so it stays where it is and nothing is computed or allocated."""
    from torch.func import functional_call
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class Outputs(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.total += sum(t.numel() * t.element_size() for t in tree_leaves(out) if isinstance(t, torch.Tensor))
            return out

    meta = {name: torch.empty_like(t, device="meta") for name, t in (*model.named_parameters(), *model.named_buffers())}
    counter = Outputs()
    with counter, torch.no_grad():
        functional_call(model, meta, (torch.empty(batch_size, *input_shape, device="meta"),))
    return counter.total


def member_bytes(model: nn.Module, input_shape: tuple[int, ...], batch_size: int, optimizer: str = "sgd") -> int:
    """An estimate of one member's training memory at ``batch_size``: weights, gradients,
    optimiser state (one buffer for SGD, two for Adam(W)) and every forward output
    (:func:`forward_bytes`). The vmap forward's stacked parameters are the members' own (each
    member's parameter is a view of its row), so they add nothing."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    states = 2 if optimizer in ("adam", "adamw") else 1
    return (2 + states) * params + forward_bytes(model, input_shape, batch_size)


def device_memory_bytes() -> tuple[int, str]:
    """The memory a trial's device has, as seen from this process: the first GPU's, else the host's."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory, torch.cuda.get_device_name(0)
    import os

    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "host memory (no GPU here)"


def fusion_problem(k: int, per_member: int, budget: int, where: str, batch_size: int) -> str | None:
    """Why ``k`` members of ``per_member`` bytes do not fit ``budget`` (90 % of it), or None."""
    if k * per_member <= 0.9 * budget:
        return None
    fits = int(0.9 * budget // max(per_member, 1))
    return (f"{k} members need about {k * per_member / 2**30:.1f} GiB ({per_member / 2**20:.0f} MiB each at "
            f"batch_size {batch_size}: weights, gradients, optimiser state, activations, loss state) but {where} has "
            f"{budget / 2**30:.1f} GiB; at most {fits} fit: lower vectorize or batch_size")
