"""The supervised / distillation training loop shared by teachers, students and controls.

One code path serves a single process and every rank of a DDP worker group: the data is already
on the device, batches are index tensors, and per-step statistics accumulate on the device and
are synchronised once per epoch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from trainables.data import DatasetSplits
from trainables.engine import (autocast, build_optimizer, build_scheduler, epoch_batches, evaluate,
                               steps_per_epoch, unwrap)
from trainables.losses import DistillLoss, LossInputs
from trainables.session import Session, check_finite


class TeacherSignal(Protocol):
    """Teacher outputs for a batch of training samples."""

    def logits(self, indices: torch.Tensor, x: torch.Tensor) -> torch.Tensor: ...


class CachedTeacher:
    """Teacher logits computed once on the un-augmented training set and looked up by index."""

    def __init__(self, train_logits: torch.Tensor):
        self.train_logits = train_logits

    def logits(self, indices, x):
        return self.train_logits[indices]


class OnlineTeacher:
    """Teacher forward on every batch (needed when inputs are augmented per step)."""

    def __init__(self, model: nn.Module):
        self.model = model.eval().requires_grad_(False)

    @torch.no_grad()
    def logits(self, indices, x):
        with autocast(x.device):
            return self.model(x).float()


@dataclass
class OptimConfig:
    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_epochs: int = 0


def train_classifier(*, model: nn.Module, data: DatasetSplits, loss_fn: DistillLoss, optim: OptimConfig,
                     session: Session, seed: int, teacher: TeacherSignal | None = None,
                     checkpoint_every: int = 0, static_metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``model`` on ``data`` (already on ``session.device``), reporting every epoch.

    Returns the last reported metrics. Resumes from ``session.restore()`` when a checkpoint exists.
    """
    device = session.device
    model = session.prepare_model(model)
    loss_fn = loss_fn.to(device)
    optimizer = build_optimizer(optim.optimizer, list(model.parameters()) + list(loss_fn.parameters()),
                                optim.lr, optim.weight_decay, optim.momentum, device)
    n_train = len(data.train_y)
    per_epoch = steps_per_epoch(n_train, optim.batch_size, session.world_size)
    scheduler = build_scheduler(optim.schedule, optimizer, per_epoch * optim.epochs,
                                per_epoch * optim.warmup_epochs)
    state = {"epoch": 0, "best_val_acc": -1.0, "test_acc_at_best_val": 0.0, "best_epoch": 0}
    restored = session.restore()
    if restored is not None:
        unwrap(model).load_state_dict(restored["model"])
        if restored.get("loss_fn"):
            loss_fn.load_state_dict(restored["loss_fn"])
        optimizer.load_state_dict(restored["optimizer"])
        scheduler.load_state_dict(restored["scheduler"])
        state.update(restored["progress"])

    metrics: dict[str, Any] = {}
    for epoch in range(state["epoch"], optim.epochs):
        model.train()
        sums: dict[str, torch.Tensor] = {}
        steps = 0
        for idx in epoch_batches(n_train, optim.batch_size, epoch, seed, session, device):
            xb, yb = data.train_x[idx], data.train_y[idx]
            with autocast(device):
                if loss_fn.needs_features:
                    s_logits, s_feats = model(xb, return_features=True)
                else:
                    s_logits, s_feats = model(xb), None
                t_logits = teacher.logits(idx, xb) if (teacher is not None and loss_fn.needs_teacher) else None
                out = loss_fn(LossInputs(student_logits=s_logits.float(), targets=yb, teacher_logits=t_logits,
                                         student_features=s_feats, indices=idx, epoch=epoch,
                                         num_epochs=optim.epochs, progress=epoch / optim.epochs))
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            optimizer.step()
            scheduler.step()
            for key, value in out.items():
                sums[key] = sums.get(key, 0.0) + value.detach()
            steps += 1
        train_stats = {f"train_{k}": v / max(steps, 1) for k, v in sums.items()}
        check_finite(train_stats["train_loss"], f"epoch {epoch + 1}", session, epoch + 1)  # one host sync
        val = evaluate(model, data.val_x, data.val_y, session)
        test = evaluate(model, data.test_x, data.test_y, session)
        if val["acc"] > state["best_val_acc"]:
            state.update(best_val_acc=val["acc"], test_acc_at_best_val=test["acc"], best_epoch=epoch + 1)
        state["epoch"] = epoch + 1
        metrics = {
            "epoch": epoch + 1,
            **{k: float(v) for k, v in train_stats.items()},
            "val_acc": val["acc"], "val_loss": val["loss"], "test_acc": test["acc"], "test_loss": test["loss"],
            "best_val_acc": state["best_val_acc"], "test_acc_at_best_val": state["test_acc_at_best_val"],
            "lr": optimizer.param_groups[0]["lr"],
            **(static_metrics or {}),
        }
        last = epoch + 1 == optim.epochs
        wants_ckpt = last or (checkpoint_every > 0 and (epoch + 1) % checkpoint_every == 0)
        checkpoint = None
        if wants_ckpt and session.is_main:
            checkpoint = {
                "model": unwrap(model).state_dict(),
                "loss_fn": loss_fn.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "progress": dict(state),
            }
        session.report(metrics, checkpoint=checkpoint)
    return metrics
