"""Building blocks shared by the training loops: seeding, optimisers, schedules, on-device batching
and evaluation that works the same on one process or across DDP ranks."""
from __future__ import annotations

import contextlib
import math
import random
from typing import Iterator

import numpy as np
import torch
from torch import nn

from trainables.runtime.session import Session


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def head_lr_groups(model: nn.Module, lr: float, head_lr_mult: float, extra=()) -> list[dict]:
    """Parameter groups with the model's ``head`` at ``lr * head_lr_mult`` (fine-tuning a
    pretrained body under a new head); ``extra`` (loss parameters) joins the body group."""
    head = getattr(unwrap(model), "head", None)
    head_ids = {id(p) for p in head.parameters()} if (head is not None and head_lr_mult != 1.0) else set()
    body = [p for p in model.parameters() if id(p) not in head_ids] + list(extra)
    groups = [{"params": body}]
    if head_ids:
        groups.append({"params": [p for p in head.parameters()], "lr": lr * head_lr_mult})
    return groups


def build_optimizer(name: str, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.9,
                    device: torch.device | None = None) -> torch.optim.Optimizer:
    """``params``: parameters, or parameter groups (dicts) as torch optimisers take them."""
    params = list(params)
    if params and isinstance(params[0], dict):
        params = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in params]
        params = [g for g in params if g["params"]]
    else:
        params = [p for p in params if p.requires_grad]
    fused = {"fused": True} if device is not None and device.type == "cuda" else {}
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=momentum > 0,
                               weight_decay=weight_decay, **fused)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **fused)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **fused)
    raise ValueError(f"unknown optimizer {name!r}; known: sgd, adam, adamw")


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, total_steps: int,
                    warmup_steps: int = 0) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedule: ``cosine`` (to 0), ``constant``, each with an optional linear warm-up."""
    total_steps = max(total_steps, 1)

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if name == "constant":
            return 1.0
        if name == "cosine":
            progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        raise ValueError(f"unknown schedule {name!r}; known: cosine, constant")

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def epoch_batches(n: int, batch_size: int, epoch: int, seed: int, session: Session,
                  device: torch.device, drop_last: bool = False) -> Iterator[torch.Tensor]:
    """Index batches for one epoch, shuffled with a (seed, epoch) permutation that every rank
    agrees on, each rank taking its own contiguous shard. Batch size is per rank."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=gen)
    if session.world_size > 1:
        per_rank = n // session.world_size  # equal shards keep DDP's collective calls in step
        perm = perm[session.rank * per_rank:(session.rank + 1) * per_rank]
    perm = perm.to(device)
    stop = len(perm) - (len(perm) % batch_size if drop_last else 0)
    for start in range(0, stop, batch_size):
        yield perm[start:start + batch_size]


def steps_per_epoch(n: int, batch_size: int, world_size: int, drop_last: bool = False) -> int:
    per_rank = n // world_size if world_size > 1 else n
    return per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA; a no-op on CPU, where bf16 matmuls are slower than fp32 on most hosts."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024, features: bool = False) -> torch.Tensor:
    """``model``'s logits on ``x``, or with ``features`` its penultimate features (the
    ``model(x, return_features=True)`` path, input conversion included), as float32 on the model's
    device. Batched, without gradients, under :func:`autocast`, in eval mode (the model's mode is
    put back afterwards)."""
    net = unwrap(model)
    was_training = model.training
    model.eval()
    device = next(net.parameters()).device
    outs = []
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size].to(device, non_blocking=True)
        with autocast(device):
            out = net(xb, return_features=True)[1] if features else net(xb)
        outs.append(out.float())
    model.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, session: Session,
             batch_size: int = 1024) -> dict[str, float]:
    """Accuracy and mean CE on (x, y). Under DDP each rank scores a strided shard and the sums are
    all-reduced, so every rank returns the same full-split numbers."""
    if session.world_size > 1:
        x, y = x[session.rank::session.world_size], y[session.rank::session.world_size]
    logits = predict(model, x, batch_size)
    y = y.to(logits.device)
    sums = torch.stack([
        (logits.argmax(-1) == y).sum().float(),
        nn.functional.cross_entropy(logits, y, reduction="sum"),
        torch.tensor(float(len(y)), device=logits.device),
    ])
    sums = session.all_reduce_sum(sums)
    correct, loss_sum, count = sums.tolist()
    return {"acc": correct / max(count, 1.0), "loss": loss_sum / max(count, 1.0)}
