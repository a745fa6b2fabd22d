"""Building blocks shared by the training loops: seeding, optimisers, schedules, on-device batching
and evaluation that works the same on one process or across DDP ranks."""
from __future__ import annotations

import contextlib
import math
import random
from typing import Callable, Iterator

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


def head_lr_groups(model: nn.Module, lr: float, head_lr_mult: float, extra=(),
                   weight_decay: float | None = None, wd_exclude_1d: bool = True,
                   layer_decay: float | None = None) -> list[dict]:
    """Parameter groups with the model's ``head`` at ``lr * head_lr_mult`` (fine-tuning a
    pretrained body under a new head); ``extra`` (loss parameters: a module, or parameters) joins
    the body groups.

    With ``weight_decay`` given, the groups are also split by weight decay with timm's
    :func:`timm.optim.param_groups_weight_decay`: with ``wd_exclude_1d`` (timm's and the seed
    authors' default) biases and 1-D parameters (norm scales and shifts) get none, everything
    else ``weight_decay``; each group then carries its own ``weight_decay``. Body groups come
    first, so ``param_groups[0]`` holds the body's lr.

    ``layer_decay`` (timm models: ``layer_decay_module()``) groups the model's parameters with
    timm's :func:`timm.optim.param_groups_layer_decay` instead, each layer's group at ``lr`` times
    its ``lr_scale`` (``layer_decay ** (num_layers - layer)``); the loss's parameters keep ``lr``.
    The groups are ordered from the last layer (the head, scale 1) down, so ``param_groups[0]``
    holds the full lr."""
    from timm.optim import param_groups_weight_decay

    net = unwrap(model)
    head = getattr(net, "head", None)
    head_ids = {id(p) for p in head.parameters()} if (head is not None and head_lr_mult != 1.0) else set()
    holder = nn.ModuleDict({"model": net})
    extra_module = None
    if isinstance(extra, nn.Module):
        extra_module = extra
    else:
        extra = list(extra)
        if extra:
            extra_module = nn.ParameterList(extra)
    if extra_module is not None:
        holder["extra"] = extra_module
    if layer_decay is not None:
        groups = layer_decay_groups(net, lr, weight_decay or 0.0, wd_exclude_1d, layer_decay)
        if extra_module is not None and any(p.requires_grad for p in extra_module.parameters()):
            groups += [{**g, "lr": lr} for g in param_groups_weight_decay(
                extra_module, weight_decay or 0.0, weight_decay_exclude_1d=wd_exclude_1d)]
    elif weight_decay is None:
        groups = [{"params": list(holder.parameters())}]
    else:
        groups = param_groups_weight_decay(holder, weight_decay, weight_decay_exclude_1d=wd_exclude_1d)
    body = [{**g, "params": [p for p in g["params"] if id(p) not in head_ids]} for g in groups]
    heads = [{**g, "params": [p for p in g["params"] if id(p) in head_ids], "lr": g.get("lr", lr) * head_lr_mult}
             for g in groups] if head_ids else []
    return [g for g in body if g["params"]] + [g for g in heads if g["params"]]


def layer_decay_groups(net: nn.Module, lr: float, weight_decay: float, wd_exclude_1d: bool,
                       layer_decay: float) -> list[dict]:
    """timm's layer-decay groups of ``net``, as torch groups with their own ``lr`` (LambdaLR
    schedules scale each group's initial lr, so the per-layer ratios hold all along)."""
    from timm.optim import param_groups_layer_decay

    inner = getattr(net, "layer_decay_module", None)
    if inner is None:
        raise ValueError(f"layer_decay: {type(net).__name__} has no layer groups (timm models only)")
    groups = param_groups_layer_decay(inner(), weight_decay, weight_decay_exclude_1d=wd_exclude_1d,
                                      layer_decay=layer_decay)
    out = [{"params": list(g["params"]), "weight_decay": g["weight_decay"], "lr": lr * g["lr_scale"]}
           for g in groups]
    return sorted(out, key=lambda g: -g["lr"])


def build_optimizer(name: str, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.9,
                    device: torch.device | None = None, nesterov: bool = True,
                    betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    """``params``: parameters, or parameter groups (dicts) as torch optimisers take them (a
    group's own ``weight_decay`` wins over ``weight_decay``). ``sgd`` uses Nesterov momentum when
    ``nesterov`` (and ``momentum`` > 0), plain momentum otherwise; ``betas`` are Adam(W)'s."""
    params = list(params)
    if params and isinstance(params[0], dict):
        params = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in params]
        params = [g for g in params if g["params"]]
    else:
        params = [p for p in params if p.requires_grad]
    fused = {"fused": True} if device is not None and device.type == "cuda" else {}
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0,
                               weight_decay=weight_decay, **fused)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, **fused)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, **fused)
    raise ValueError(f"unknown optimizer {name!r}; known: sgd, adam, adamw")


SCHEDULES = ("cosine", "constant", "step", "multistep")


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, total_steps: int,
                    warmup_steps: int = 0, *, lr: float | None = None, warmup_lr: float = 0.0,
                    min_lr: float = 0.0, decay_steps: int = 0, milestones: tuple[int, ...] = (),
                    decay_rate: float = 0.1) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step (per optimiser update) schedule, each with an optional linear warm-up.

    With ``t`` the 0-based update and ``W = warmup_steps``, ``T = total_steps``, the lr is
    ``lr * factor(t)``, where (``warmup_lr`` and ``min_lr`` are absolute, for the body's ``lr``)::

        t < W:       warmup_lr/lr + (1 - warmup_lr/lr) * (t + 1) / W
        cosine:      m + (1 - m) * (1 + cos(pi * min((t - W) / (T - W), 1))) / 2,  m = min_lr / lr
        constant:    1
        step:        decay_rate ** (t // decay_steps)
        multistep:   decay_rate ** (number of milestones (in updates) <= t)

    so after the last update (``t = T``) cosine sits at ``min_lr``. Other groups (the head at
    ``head_lr_mult``) follow the same factor of their own lr.

    This stays a :class:`~torch.optim.lr_scheduler.LambdaLR` rather than timm's schedulers: timm's
    take ``warmup_lr``/``min_lr`` as absolute values for every group (flattening the head's lr
    multiplier), step through ``step_update(num_updates)`` instead of ``step()``, and checkpoints
    already hold LambdaLR state, which resumes unchanged.
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(
        name, total_steps, warmup_steps, lr=lr, warmup_lr=warmup_lr, min_lr=min_lr, decay_steps=decay_steps,
        milestones=milestones, decay_rate=decay_rate))


def lr_factor(name: str, total_steps: int, warmup_steps: int = 0, *, lr: float | None = None, warmup_lr: float = 0.0,
              min_lr: float = 0.0, decay_steps: int = 0, milestones: tuple[int, ...] = (),
              decay_rate: float = 0.1) -> Callable[[int], float]:
    """The multiplier of :func:`build_scheduler` at update ``t`` (same arguments). Separate so that
    a fused trial gives each member's parameter groups the factor of that member's own ``lr``
    (``warmup_lr`` and ``min_lr`` are absolute, so the factor depends on it)."""
    total_steps = max(total_steps, 1)
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; known: {', '.join(SCHEDULES)}")
    if name == "step" and decay_steps < 1:
        raise ValueError("schedule step needs decay_steps >= 1")
    start = warmup_lr / lr if lr else 0.0
    floor = min_lr / lr if lr else 0.0

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return start + (1.0 - start) * (step + 1) / warmup_steps
        if name == "constant":
            return 1.0
        if name == "cosine":
            progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        if name == "step":
            return decay_rate ** (step // decay_steps)
        return decay_rate ** sum(step >= m for m in milestones)

    return factor


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


def autocast(device: torch.device, enabled: bool = True, cache: bool = True):
    """bf16 autocast on CUDA; a no-op on CPU, where bf16 matmuls are slower than fp32 on most hosts.
    ``cache``: autocast's cache of weights cast within the context (off where a step is captured
    as a CUDA graph: a cast cached at capture would not be redone in a replay)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache)
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
    """Accuracy, mean CE and, with more than 5 classes, top-5 accuracy (``top5``) on (x, y). Under
    DDP each rank scores a strided shard and the sums are all-reduced, so every rank returns the
    same full-split numbers."""
    if session.world_size > 1:
        x, y = x[session.rank::session.world_size], y[session.rank::session.world_size]
    logits = predict(model, x, batch_size)
    y = y.to(logits.device)
    parts = [
        (logits.argmax(-1) == y).sum().float(),
        nn.functional.cross_entropy(logits, y, reduction="sum"),
        torch.tensor(float(len(y)), device=logits.device),
    ]
    top5 = logits.shape[-1] > 5
    if top5:
        parts.append((logits.topk(5, dim=-1).indices == y[:, None]).any(-1).sum().float())
    sums = session.all_reduce_sum(torch.stack(parts)).tolist()
    correct, loss_sum, count = sums[:3]
    out = {"acc": correct / max(count, 1.0), "loss": loss_sum / max(count, 1.0)}
    if top5:
        out["top5"] = sums[3] / max(count, 1.0)
    return out
