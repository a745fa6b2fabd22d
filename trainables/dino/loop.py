"""The ``dino`` training loop: teacher updates, one step, one epoch, and the metrics after it.

The loop keeps data and crops on the device and syncs with the host once per epoch (probes
excepted); under DDP (``workers > 1``) the student is wrapped by the session, the teacher is
updated identically on every rank from the synchronised student, and the loss's centres are
all-reduced by the loss itself.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainables.data import DatasetSplits, load_dataset
from trainables.data.base import stratified_subset
from trainables.dino.crops import forward_crops, multicrop
from trainables.dino.init import init_student_teacher
from trainables.dino.params import DinoParams
from trainables.dino.probes import probe_encoder
from trainables.losses import create_loss
from trainables.runtime.engine import (autocast, build_optimizer, build_scheduler, epoch_batches, seed_everything,
                                       steps_per_epoch, unwrap)
from trainables.runtime.epochs import Checkpointed, EpochMeans, run_epochs
from trainables.runtime.session import Session
from trainables.runtime.trainable import TrialContext


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
def copy_student(teacher: nn.Module, student: nn.Module, bn_stats: bool = True) -> None:
    """The student's parameters into the teacher, and its BN running statistics when ``bn_stats``
    (``teacher_bn_mode: from_student``); other buffers stay the teacher's."""
    for p_t, p_s in zip(teacher.parameters(), student.parameters()):
        p_t.copy_(p_s)
    if bn_stats:
        ema_bn_stats(teacher, student, 0.0)


def supervised_targets(y: torch.Tensor, out_dim: int, num_classes: int, p: DinoParams) -> torch.Tensor:
    """Teacher outputs for the supervised comparison: ``label_logit`` at the label, 0 elsewhere,
    after replacing a ``label_noise`` fraction of labels by uniform random classes and adding
    Gaussian ``logit_noise``."""
    if p.label_noise > 0:
        flip = torch.rand(len(y), device=y.device) < p.label_noise
        y = torch.where(flip, torch.randint(0, num_classes, y.shape, device=y.device), y)
    logits = F.one_hot(y, out_dim).float() * p.label_logit
    if p.logit_noise > 0:
        logits = logits + p.logit_noise * torch.randn_like(logits)
    return logits


# ------------------------------------------------------------------------------------------- the loop

def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices and kernels only, not on biases and norm parameters (DINO)."""
    decay, no_decay = [], []
    for param in model.parameters():
        (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_dino(p: DinoParams, data: DatasetSplits, session: Session, checkpoint_every: int = 0) -> dict[str, Any]:
    """Train on ``data`` (already on ``session.device``), reporting every epoch; returns the last metrics."""
    run = DinoRun(p, data, session)
    return run_epochs(session, run.checkpointed(), p.epochs, run.train_epoch, run.epoch_metrics, checkpoint_every)


class DinoRun:
    """The parts of one :func:`train_dino` call: student and teacher (and the teacher's probe, once),
    loss, optimiser and schedule, one training step, one epoch, and the metrics reported after it."""

    def __init__(self, p: DinoParams, data: DatasetSplits, session: Session):
        self.p, self.data, self.session = p, data, session
        self.device = device = session.device
        seed_everything(p.seed)
        student, teacher = init_student_teacher(p, data)
        self.teacher = teacher.to(device)
        self.teacher_probe = {f"teacher_{k}": v for k, v in probe_encoder(teacher.encoder, data, p).items()}
        self.probe = probe_encoder(student.encoder.to(device), data, p)
        self.student = session.prepare_model(student)
        self.out_dim = student.out_dim  # head.out_dim, or the encoder's feature size with no head
        self.loss_fn = create_loss("dino", p.loss_params, out_dim=self.out_dim).to(device)
        self.optimizer = build_optimizer(p.optimizer, weight_decay_groups(self.student, p.weight_decay), p.lr,
                                         p.weight_decay, p.momentum, device)
        # n_samples: the DINO steps see a stratified subset; the probes fit on the whole training split
        self.train_idx = None if p.n_samples is None else \
            torch.from_numpy(training_subset(data, p.n_samples, p.split_seed)).to(device)
        self.n_train = len(data.train_y) if self.train_idx is None else len(self.train_idx)
        per_epoch = steps_per_epoch(self.n_train, p.batch_size, session.world_size, drop_last=True)
        self.total_steps = per_epoch * p.epochs
        self.scheduler = build_scheduler(p.schedule, self.optimizer, self.total_steps, per_epoch * p.warmup_epochs)
        self.last_layer = unwrap(self.student).head.last_layer
        self.progress = {"epoch": 0, "step": 0}

    def checkpointed(self) -> Checkpointed:
        return Checkpointed({"student": unwrap(self.student), "teacher": self.teacher, "loss_fn": self.loss_fn,
                             "optimizer": self.optimizer, "scheduler": self.scheduler},
                            self.progress, records={"probe": self.probe})

    def train_epoch(self, epoch: int) -> dict[str, torch.Tensor]:
        p = self.p
        self.student.train()
        self.teacher.train(not p.teacher_eval)
        means = EpochMeans()
        for idx in epoch_batches(self.n_train, p.batch_size, epoch, p.seed, self.session, self.device,
                                 drop_last=True):
            means.add(self.step(epoch, idx if self.train_idx is None else self.train_idx[idx]))
        if p.teacher_mode == "prev_epoch" and (epoch + 1) % p.teacher_update_every == 0:
            copy_student(self.teacher, unwrap(self.student), bn_stats=p.teacher_bn_mode == "from_student")
        return means.means()

    def step(self, epoch: int, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        p = self.p
        globals_, locals_ = multicrop(self.data.train_x[idx], p.crops, self.data.mean, self.data.std)
        with autocast(self.device):  # bf16 on CUDA; the loss computes in fp32
            t_out = self.teacher_outputs(idx, globals_)
            s_out = forward_crops(self.student, globals_ + locals_)
        out = self.loss_fn(s_out, t_out, epoch=epoch)
        self.optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        if epoch < p.freeze_last_layer_epochs:
            for param in self.last_layer.parameters():
                param.grad = None
        if p.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(self.student.parameters(), p.clip_grad, foreach=True)
        self.optimizer.step()
        self.scheduler.step()
        if p.teacher_mode == "ema":
            momentum = ema_momentum(p, self.progress["step"], self.total_steps)
            ema_update(self.teacher, unwrap(self.student), momentum)
            if p.teacher_bn_mode == "from_student":
                ema_bn_stats(self.teacher, unwrap(self.student), momentum)
        self.progress["step"] += 1
        return out

    def teacher_outputs(self, idx: torch.Tensor, globals_: list[torch.Tensor]) -> list[torch.Tensor]:
        """What the student matches on each global crop: the teacher's head outputs, or (supervised)
        the same noisy one-hot targets for every crop."""
        p = self.p
        if p.supervised:
            target = supervised_targets(self.data.train_y[idx], self.out_dim, self.data.num_classes, p)
            return [target] * len(globals_)
        with torch.no_grad():
            return forward_crops(self.teacher, globals_)

    def epoch_metrics(self, epoch: int, train_stats: dict[str, float]) -> dict[str, Any]:
        if epoch + 1 == self.p.epochs or (epoch + 1) % self.p.probe_every == 0:
            self.probe.update(probe_encoder(unwrap(self.student).encoder, self.data, self.p))  # the same keys
        return {"epoch": epoch + 1, **train_stats, "lr": self.optimizer.param_groups[0]["lr"], **self.probe,
                **self.teacher_probe}


def training_subset(data: DatasetSplits, n_samples: int, seed: int):
    """``n_samples``: indices of the seeded stratified subset of the training split."""
    n_train = len(data.train_y)
    if n_samples > n_train:
        raise ValueError(f"n_samples ({n_samples}) exceeds the training split of {data.name} ({n_train} images)")
    return stratified_subset(data.train_y.cpu().numpy(), n_samples, seed)


def run_dino(p: DinoParams, session: Session, ctx: TrialContext) -> dict[str, Any]:
    data = load_dataset(p.dataset, seed=p.split_seed, **p.dataset_kwargs).to(session.device)
    return train_dino(p, data, session, checkpoint_every=ctx.checkpoint_every)
