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
from trainables.runtime.engine import (autocast, build_optimizer, build_scheduler, epoch_batches, evaluate, head_lr_groups,
                               steps_per_epoch, unwrap)
from trainables.losses import DistillLoss, LossInputs
from trainables.runtime.session import Session, check_finite
from trainables.training.views import BatchViews, PlainViews


class TeacherSignal(Protocol):
    """Teacher outputs for a batch of training samples: logits, and penultimate features when
    ``features`` is asked for (feature-based losses)."""

    def outputs(self, indices: torch.Tensor, x: torch.Tensor, features: bool = False,
                views: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]: ...


class CachedTeacher:
    """Teacher logits (and features) computed once, looked up by index: (N, classes) for the
    un-augmented training set, or (K, N, classes) for K fixed views, looked up by (view, index)."""

    def __init__(self, train_logits: torch.Tensor, train_features: torch.Tensor | None = None):
        self.train_logits = train_logits
        self.train_features = train_features

    def logits(self, indices, x):
        return self.train_logits[indices]

    def outputs(self, indices, x, features=False, views=None):
        if features and self.train_features is None:
            raise RuntimeError("this loss needs teacher features, but the cached teacher has none")
        if self.train_logits.dim() == 3:
            if views is None:
                raise RuntimeError("cached teacher logits are per view, but the batch has no view indices")
            return self.train_logits[views, indices], None
        return self.train_logits[indices], (self.train_features[indices] if features else None)


class OnlineTeacher:
    """Teacher forward on every batch (needed when inputs are augmented per step)."""

    def __init__(self, model: nn.Module):
        self.model = model.eval().requires_grad_(False)

    def logits(self, indices, x):
        return self.outputs(indices, x)[0]

    @torch.no_grad()
    def outputs(self, indices, x, features=False, views=None):
        with autocast(x.device):
            if features:
                logits, feats = self.model(x, return_features=True)
                return logits.float(), feats.float()
            return self.model(x).float(), None


@torch.no_grad()
def predict_features(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Penultimate features of ``model`` (eval mode) on ``x``, as float32 on ``x``'s device."""
    was_training = model.training
    model.eval()
    outs = []
    for start in range(0, len(x), batch_size):
        with autocast(x.device):
            outs.append(model(x[start:start + batch_size], return_features=True)[1].float())
    model.train(was_training)
    return torch.cat(outs)


class LossModuleSync:
    """Keeps a loss's own learnable parts (projectors, connectors) in step across DDP ranks: rank
    0's parameters and buffers are broadcast once, and gradients are averaged after every backward,
    which is what DDP does for the student. Losses that keep state updated in ``forward`` (CRD's
    memory banks, DINO's centres) synchronise that state themselves. A no-op on one process."""

    def __init__(self, loss_fn: nn.Module, session: Session):
        self.session = session
        self.params = [p for p in loss_fn.parameters() if p.requires_grad]
        self.active = session.distributed
        if self.active:
            import torch.distributed as dist

            for tensor in loss_fn.state_dict().values():
                dist.broadcast(tensor, src=0)

    def average_gradients(self) -> None:
        if not (self.active and self.params):
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = self.session.all_reduce_sum(torch.cat([g.reshape(-1) for g in grads]))
        flat /= self.session.world_size
        offset = 0
        for p in self.params:
            p.grad = flat[offset:offset + p.numel()].view_as(p)
            offset += p.numel()


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
    head_lr_mult: float = 1.0  # the head's lr is lr * head_lr_mult (teacher fine-tuning)
    compile: bool = False  # torch.compile the training forward


def train_classifier(*, model: nn.Module, data: DatasetSplits, loss_fn: DistillLoss, optim: OptimConfig,
                     session: Session, seed: int, teacher: TeacherSignal | None = None,
                     checkpoint_every: int = 0, static_metrics: dict[str, Any] | None = None,
                     views: BatchViews | None = None) -> dict[str, Any]:
    """Train ``model`` on ``data`` (already on ``session.device``), reporting every epoch.

    ``views`` picks the student's view of each batch (augmentation); default: the images as they
    are. Returns the last reported metrics. Resumes from ``session.restore()`` when a checkpoint exists.
    """
    device = session.device
    views = views or PlainViews()
    # channels_last lets cuDNN pick its fastest (NHWC tensor-core) convolutions; on CPU it only costs.
    channels_last = device.type == "cuda" and len(data.input_shape) == 3
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = session.prepare_model(model)
    step_model = torch.compile(model) if optim.compile else model
    loss_fn = loss_fn.to(device)
    loss_sync = LossModuleSync(loss_fn, session)
    params = head_lr_groups(model, optim.lr, optim.head_lr_mult, extra=loss_fn.parameters())
    optimizer = build_optimizer(optim.optimizer, params, optim.lr, optim.weight_decay, optim.momentum, device)
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
        views.start_epoch(epoch)
        for idx in epoch_batches(n_train, optim.batch_size, epoch, seed, session, device):
            xb, view_ids = views.batch(data.train_x, idx)
            yb = data.train_y[idx]
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with autocast(device):
                if loss_fn.needs_features:
                    s_logits, s_feats = step_model(xb, return_features=True)
                else:
                    s_logits, s_feats = step_model(xb), None
                t_logits = t_feats = None
                if teacher is not None and loss_fn.needs_teacher:
                    t_logits, t_feats = teacher.outputs(idx, xb, features=loss_fn.needs_features, views=view_ids)
                out = loss_fn(LossInputs(student_logits=s_logits.float(), targets=yb, teacher_logits=t_logits,
                                         student_features=s_feats, teacher_features=t_feats, indices=idx,
                                         epoch=epoch, num_epochs=optim.epochs, progress=epoch / optim.epochs))
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            loss_sync.average_gradients()
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
