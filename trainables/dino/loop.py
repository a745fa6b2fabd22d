"""The ``dino`` training loop: teacher updates, one step, one epoch, and the metrics after it.

The loop keeps data and crops on the device and syncs with the host once per epoch (probes
excepted); under DDP (``workers > 1``) the student is wrapped by the session, the teacher is
updated identically on every rank from the synchronised student, and the loss's centres are
all-reduced by the loss itself.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from trainables.data import DatasetSplits
from trainables.data.base import stratified_subset
from trainables.dino.crops import forward_crops, multicrop
from trainables.dino.init import init_student_teacher
from trainables.dino.params import DinoParams
from trainables.dino.targets import SupervisedTargets, inputs_target_dim
from trainables.dino.probes import probe_encoder
from trainables.dino.tracking import DinoTracker
from trainables.losses import create_loss
from trainables.runtime.engine import (autocast, build_optimizer, build_scheduler, epoch_batches, seed_everything,
                                       steps_per_epoch, unwrap)
from trainables.runtime.epochs import Checkpointed, EpochMeans, run_epochs
from trainables.runtime.rng import RngState
from trainables.runtime.session import Session


# ----------------------------------------------------------------------------------- teacher updates

def ema_momentum(p: DinoParams, step: int, total_steps: int) -> float:
    """Cosine from ``teacher_momentum`` at step 0 to ``teacher_momentum_final`` at the last step."""
    progress = step / max(total_steps - 1, 1)
    return p.teacher_momentum_final - (p.teacher_momentum_final - p.teacher_momentum) * \
        (1 + math.cos(math.pi * min(progress, 1.0))) / 2


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """θ_t <- m θ_t + (1 - m) θ_s, for parameters (buffers such as BN statistics stay the teacher's)."""
    t_params = list(teacher.parameters())
    torch._foreach_lerp_(t_params, [s.detach() for s in student.parameters()], 1.0 - momentum)


def _bn_pairs(teacher: nn.Module, student: nn.Module):
    """(teacher, student) batch-norm modules at the same place that keep running statistics."""
    for (n_t, m_t), (n_s, m_s) in zip(teacher.named_modules(), student.named_modules()):
        if isinstance(m_s, nn.modules.batchnorm._NormBase) and n_s == n_t and m_s.running_mean is not None:
            yield m_t, m_s


@torch.no_grad()
def ema_bn_stats(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher_bn_mode: from_student``: the teacher's BN running mean and variance follow the
    student's, μ_t <- m μ_t + (1 - m) μ_s (m = 0: a copy), as dinopl's teacher updater does."""
    for m_t, m_s in _bn_pairs(teacher, student):
        m_t.running_mean.lerp_(m_s.running_mean, 1.0 - momentum)
        m_t.running_var.lerp_(m_s.running_var, 1.0 - momentum)


@torch.no_grad()
def average_bn_stats(teacher: nn.Module, session: Session) -> None:
    """``from_student`` under DDP: each rank's student has updated its BN statistics from its own shard
    since DDP last broadcast rank 0's buffers, so ranks' teachers that follow them drift apart. Their
    mean over ranks, once per update in one collective (no host sync), keeps the teachers identical and
    follows the statistics of the whole global batch, as SyncBatchNorm's would."""
    if not session.distributed:
        return
    stats = [b for m in teacher.modules() if isinstance(m, nn.modules.batchnorm._NormBase)
             and m.running_mean is not None for b in (m.running_mean, m.running_var)]
    if not stats:
        return
    flat = session.all_reduce_sum(torch.cat([b.reshape(-1) for b in stats])) / session.world_size
    torch._foreach_copy_(stats, list(flat.split([b.numel() for b in stats])))


@torch.no_grad()
def copy_student(teacher: nn.Module, student: nn.Module, bn_stats: bool = True) -> None:
    """The student's parameters into the teacher, and its BN running statistics when ``bn_stats``
    (``teacher_bn_mode: from_student``); other buffers stay the teacher's."""
    for p_t, p_s in zip(teacher.parameters(), student.parameters()):
        p_t.copy_(p_s)
    if bn_stats:
        ema_bn_stats(teacher, student, 0.0)


# ------------------------------------------------------------------------------------ the data stream

# The crops (and supervised noise) draw from the global generator. Reseeded from the trial's seed
# once the networks are built and probed, they follow ``seed`` alone, not the init seeds whose
# draws come before them: trials that differ only in teacher_init_seed, student init or lr see the
# same crops, and the members of a fused trial (trainables/dino/fused.py) can share one draw.
DATA_STREAM = 7


def seed_data_stream(seed: int) -> None:
    """Start the crops' random stream of a trial with data seed ``seed``."""
    torch.manual_seed(seed * 1_000_003 + DATA_STREAM)


# ------------------------------------------------------------------------------------------- the loop

def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices and kernels only, not on biases and norm parameters (DINO).
    The decayed group is marked ``decayed: True``: the weight-decay schedule sets only its decay."""
    decay, no_decay = [], []
    for param in model.parameters():
        (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay, "decayed": True},
            {"params": no_decay, "weight_decay": 0.0, "decayed": False}]


def weight_decay_at(p: DinoParams, step: int, total_steps: int) -> float:
    """The decayed groups' weight decay at (0-based) update ``step``: a cosine from ``weight_decay``
    at the first update to ``weight_decay_end`` at the last (dinopl's ``CosSched(0.04, 0.4)``, over
    the whole run, no warm-up); ``weight_decay`` throughout when ``weight_decay_end`` is None."""
    if p.weight_decay_end is None:
        return p.weight_decay
    progress = min(step / max(total_steps - 1, 1), 1.0)
    return p.weight_decay_end + (p.weight_decay - p.weight_decay_end) * (1 + math.cos(math.pi * progress)) / 2


def sampled_epoch_batches(n: int, samples: int, batch_size: int, epoch: int, seed: int, session: Session,
                          device: torch.device) -> Iterator[torch.Tensor]:
    """``samples_per_epoch``: ``samples`` indices into ``range(n)``, as torch's ``RandomSampler(num_samples=
    samples)`` without replacement draws them (dinopl): fresh permutations of ``range(n)`` one after another,
    cut at ``samples`` (fewer than ``n``: a random subset; more: every sample ``samples // n`` times and the
    rest once), seeded by (seed, epoch) as :func:`epoch_batches`. Each rank takes its contiguous shard;
    batches per rank, the last partial one dropped."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.cat([torch.randperm(n, generator=gen) for _ in range(math.ceil(samples / n))])[:samples]
    if session.world_size > 1:
        per_rank = samples // session.world_size
        perm = perm[session.rank * per_rank:(session.rank + 1) * per_rank]
    perm = perm.to(device)
    for start in range(0, len(perm) - len(perm) % batch_size, batch_size):
        yield perm[start:start + batch_size]


class _DoubleInput(nn.Module):
    """``float64``: feeds a double-precision encoder the (float32) images, for the probes."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor, **kwargs):
        return self.encoder(x.double(), **kwargs)


@dataclass
class Views:
    """One micro-batch's multi-crop views, and (supervised) the targets that replace the teacher."""

    globals_: list[torch.Tensor]
    locals_: list[torch.Tensor]
    targets: torch.Tensor | None = None


def train_dino(p: DinoParams, data: DatasetSplits, session: Session, checkpoint_every: int = 0) -> dict[str, Any]:
    """Train on ``data`` (already on ``session.device``), reporting every epoch; returns the last metrics."""
    run = DinoRun(p, data, session)
    return run_epochs(session, run.checkpointed(), run.epochs, run.train_epoch, run.epoch_metrics, checkpoint_every)


class DinoRun:
    """The parts of one :func:`train_dino` call: student and teacher (and the teacher's probe, once),
    loss, optimiser and schedule, one training step, one epoch, and the metrics reported after it."""

    def __init__(self, p: DinoParams, data: DatasetSplits, session: Session):
        self.p, self.data, self.session = p, data, session
        if p.supervised and bool((data.train_y < 0).any()):
            raise ValueError("supervised: the training split holds unlabelled images (label -1, STL-10's unlabeled "
                             "split), which have no one-hot target; use split train for the supervised comparison")
        self.device = device = session.device
        seed_everything(p.seed)
        student, teacher = init_student_teacher(p, data)
        if p.float64:  # the float32 init, converted exactly
            student, teacher = student.double(), teacher.double()
        # channels_last lets cuDNN pick its NHWC tensor-core convolutions (as the classifier loop does)
        self.channels_last = device.type == "cuda" and len(data.input_shape) == 3
        if self.channels_last:
            student, teacher = (m.to(memory_format=torch.channels_last) for m in (student, teacher))
        self.teacher = teacher.to(device)
        teacher_probe = probe_encoder(self.probed(teacher.encoder), data, p)
        self.teacher_probe = {f"teacher_{k}": v for k, v in teacher_probe.items()}
        self.probe = probe_encoder(self.probed(student.encoder.to(device)), data, p)
        self.student = session.prepare_model(student)
        self.out_dim = student.out_dim  # head.out_dim, or the encoder's feature size with no head
        self.loss_fn = create_loss("dino", p.loss_params, out_dim=self.out_dim).to(device)
        self.targets = SupervisedTargets(p, data.train_y, data.num_classes, self.out_dim) if p.supervised else None
        if p.inputs_as_logits and inputs_target_dim(p, data.input_shape) != self.out_dim:
            raise ValueError(f"inputs_as_logits: head.out_dim ({self.out_dim}) must equal the first global crop's "
                             f"size, {inputs_target_dim(p, data.input_shape)} values of {data.name}")
        # fused Adam(W) on CUDA, except in float64 (the foreach path takes every dtype)
        self.optimizer = build_optimizer(p.optimizer, weight_decay_groups(self.student, p.weight_decay), p.lr,
                                         p.weight_decay, p.momentum, None if p.float64 else device, betas=p.betas)
        # n_samples: the DINO steps see a stratified subset; the probes fit on the whole training split
        self.train_idx = None if p.n_samples is None else \
            torch.from_numpy(training_subset(data, p.n_samples, p.split_seed)).to(device)
        self.n_train = len(data.train_y) if self.train_idx is None else len(self.train_idx)
        # steps are optimiser updates, each of batch_accum micro-batches; an epoch is the training split, or
        # samples_per_epoch draws; its micro-batches that do not fill a last update are dropped
        self.epoch_samples = p.samples_per_epoch or self.n_train
        micro = steps_per_epoch(self.epoch_samples, p.batch_size, session.world_size, drop_last=True)
        per_epoch = self.steps_per_epoch = micro // p.batch_accum
        if per_epoch < 1:
            raise ValueError(f"batch_accum ({p.batch_accum}) exceeds the {micro} micro-batches of batch_size "
                             f"{p.batch_size} in an epoch: no optimiser update would run")
        if p.n_steps is None:
            self.epochs, self.total_steps = p.epochs, per_epoch * p.epochs
        else:  # n_steps overrides epochs: enough epochs, the last one stopped after update n_steps
            self.epochs, self.total_steps = math.ceil(p.n_steps / per_epoch), p.n_steps
        warmup = per_epoch * p.warmup_epochs
        if p.n_steps is not None and warmup >= self.total_steps:
            raise ValueError(f"warmup_epochs ({p.warmup_epochs}, {warmup} updates) must end before n_steps "
                             f"({p.n_steps})")
        # the cosine ends at the last update, as dinopl's CosSched: update total_steps - 1 runs at min_lr
        self.scheduler = build_scheduler(p.schedule, self.optimizer, self.total_steps - 1, warmup, lr=p.lr,
                                         min_lr=p.min_lr)
        self.last_layer = unwrap(self.student).head.last_layer
        self.progress = {"epoch": 0, "step": 0}
        self.tracker = DinoTracker(p, unwrap(self.student), self.teacher, data, self.epochs, self.probed)
        seed_data_stream(p.seed)

    def checkpointed(self) -> Checkpointed:
        # rng: optional, as checkpoints written before it lack it
        return Checkpointed({"student": unwrap(self.student), "teacher": self.teacher, "loss_fn": self.loss_fn,
                             "optimizer": self.optimizer, "scheduler": self.scheduler, "rng": RngState()},
                            self.progress, records={"probe": self.probe, **self.tracker.records}, optional=("rng",))

    def train_epoch(self, epoch: int) -> dict[str, torch.Tensor]:
        self.start_epoch()
        means = EpochMeans()
        for group in self.update_groups(epoch):
            if self.progress["step"] >= self.total_steps:  # n_steps: stop mid-epoch
                break
            means.add(self.step(epoch, group[0] if len(group) == 1 else group))
        self.end_epoch(epoch)
        return means.means()

    def update_groups(self, epoch: int) -> Iterator[list[torch.Tensor]]:
        """This epoch's optimiser updates: each a list of ``batch_accum`` micro-batches (indices into
        the training split); micro-batches that do not fill a last update are dropped."""
        group: list[torch.Tensor] = []
        for idx in self.micro_batches(epoch):
            group.append(idx if self.train_idx is None else self.train_idx[idx])
            if len(group) == self.p.batch_accum:
                yield group
                group = []

    def start_epoch(self) -> None:
        self.student.train()
        self.teacher.train(not self.p.teacher_eval)
        self.tracker.start_epoch()

    def end_epoch(self, epoch: int) -> None:
        """The teacher update at an epoch's end (``prev_epoch``)."""
        p = self.p
        if p.teacher_mode == "prev_epoch" and (epoch + 1) % p.teacher_update_every == 0:
            copy_student(self.teacher, unwrap(self.student), bn_stats=p.teacher_bn_mode == "from_student")
            if p.teacher_bn_mode == "from_student":
                average_bn_stats(self.teacher, self.session)

    def probed(self, encoder: nn.Module) -> nn.Module:
        return _DoubleInput(encoder) if self.p.float64 else encoder

    def micro_batches(self, epoch: int) -> Iterator[torch.Tensor]:
        """This epoch's micro-batches of ``batch_size`` (per rank): indices into the training set (subset)."""
        p = self.p
        if p.samples_per_epoch is None:
            return epoch_batches(self.n_train, p.batch_size, epoch, p.seed, self.session, self.device, drop_last=True)
        return sampled_epoch_batches(self.n_train, p.samples_per_epoch, p.batch_size, epoch, p.seed, self.session,
                                     self.device)

    def views(self, idx: torch.Tensor) -> Views:
        """What one micro-batch's step sees, drawn from the data stream: its multi-crop views and
        (supervised) its targets, drawn after the crops."""
        p = self.p
        x = self.data.train_x[idx]
        if p.float64 and x.is_floating_point():
            x = x.double()
        globals_, locals_ = multicrop(x, p.crops, self.data.mean, self.data.std)
        if self.channels_last:
            globals_, locals_ = ([c.contiguous(memory_format=torch.channels_last) for c in crops]
                                 for crops in (globals_, locals_))
        targets = self.targets(idx, globals_[0]) if p.supervised else None
        return Views(globals_, locals_, targets)

    def forward_loss(self, epoch: int, idx: torch.Tensor, views: Views | None = None) -> dict[str, torch.Tensor]:
        """The loss on micro-batch ``idx``, on ``views`` (drawn here when None)."""
        v = self.views(idx) if views is None else views
        with autocast(self.device, enabled=not self.p.float64):  # bf16 on CUDA; the loss computes in fp32
            t_out = self.teacher_outputs(v)
            s_out = forward_crops(self.student, v.globals_ + v.locals_)
        return self.loss_fn(s_out, t_out, epoch=epoch)

    def step(self, epoch: int, idx: torch.Tensor | list[torch.Tensor],
             views: list[Views] | None = None) -> dict[str, torch.Tensor]:
        """One optimiser update on one batch, or (``batch_accum``) on a list of micro-batches: each
        micro-batch's loss divided by their number, gradients summed (DDP syncs on the last only), so a
        per-sample-mean loss updates as on their union. Returns the micro-batches' mean statistics.
        ``views``: the micro-batches' views, drawn once for all members of a fused trial; None draws
        each when its micro-batch comes."""
        p = self.p
        micro = [idx] if isinstance(idx, torch.Tensor) else list(idx)
        self.optimizer.zero_grad(set_to_none=True)
        outs = []
        for i, mb in enumerate(micro):
            last = i == len(micro) - 1
            no_sync = self.student.no_sync if not last and hasattr(self.student, "no_sync") else contextlib.nullcontext
            with no_sync():
                out = self.forward_loss(epoch, mb, None if views is None else views[i])
                (out["loss"] if len(micro) == 1 else out["loss"] / len(micro)).backward()
            outs.append(out)
        self.tracker.after_backward()
        out = outs[0] if len(outs) == 1 else \
            {k: torch.stack([o[k].detach() for o in outs]).mean(0) for k in outs[0]}
        if epoch < p.freeze_last_layer_epochs:
            for param in self.last_layer.parameters():
                param.grad = None
        if p.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(self.student.parameters(), p.clip_grad, foreach=True)
        if p.weight_decay_end is not None:
            wd = weight_decay_at(p, self.progress["step"], self.total_steps)
            for group in self.optimizer.param_groups:
                if group.get("decayed"):
                    group["weight_decay"] = wd
        self.optimizer.step()
        self.scheduler.step()
        if p.teacher_mode == "ema":
            momentum = ema_momentum(p, self.progress["step"], self.total_steps)
            ema_update(self.teacher, unwrap(self.student), momentum)
            if p.teacher_bn_mode == "from_student":
                ema_bn_stats(self.teacher, unwrap(self.student), momentum)
                average_bn_stats(self.teacher, self.session)
        self.tracker.after_step(out["loss"], self.progress["step"])
        self.progress["step"] += 1
        return out

    def teacher_outputs(self, views: Views) -> list[torch.Tensor]:
        """What the student matches on each global crop: the teacher's head outputs, or (supervised)
        the same noisy one-hot targets for every crop."""
        if views.targets is not None:
            return [views.targets] * len(views.globals_)
        with torch.no_grad():
            return forward_crops(self.teacher, views.globals_)

    def epoch_metrics(self, epoch: int, train_stats: dict[str, float]) -> dict[str, Any]:
        probed = epoch + 1 == self.epochs or (epoch + 1) % self.p.probe_every == 0
        if probed:
            encoder = self.probed(unwrap(self.student).encoder)
            self.probe.update(probe_encoder(encoder, self.data, self.p))  # the same keys
        return {"epoch": epoch + 1, **train_stats, "lr": self.optimizer.param_groups[0]["lr"], **self.probe,
                **self.teacher_probe, **self.tracker.epoch_metrics(epoch, probed)}


def training_subset(data: DatasetSplits, n_samples: int, seed: int):
    """``n_samples``: indices of the seeded stratified subset of the training split."""
    n_train = len(data.train_y)
    if n_samples > n_train:
        raise ValueError(f"n_samples ({n_samples}) exceeds the training split of {data.name} ({n_train} images)")
    return stratified_subset(data.train_y.cpu().numpy(), n_samples, seed)
