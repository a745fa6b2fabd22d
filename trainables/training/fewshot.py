"""N-way K-shot episodes: seeded sampling, the cosine nearest-centroid evaluation of an encoder
(Classifier-Baseline's test, Chen et al. 2021), and Meta-Baseline's episodic fine-tuning.

An episode draws ``ways`` classes and, from each, ``shots`` support and ``queries`` query images
(all distinct). The prototype of a class is the mean of its support features; a query is scored by
the cosine similarity of its feature to every prototype (times a temperature in Meta-Baseline,
which leaves the evaluation's argmax unchanged). Accuracy is per episode; the report is the mean
over episodes and its 95% confidence interval ``1.96 * std / sqrt(episodes)`` (std: the sample
standard deviation of the per-episode accuracies).

Episodes are drawn on the CPU from a ``torch.Generator`` seeded with ``seed``, so they are the same
on every device and for every model; the evaluation encodes the whole novel split once and indexes
its features, all episodes in one batched computation on the device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from trainables.data import FewShotSplit
from trainables.runtime.engine import autocast, predict


@dataclass(frozen=True)
class Episodes:
    """Indices into a split: ``support`` (E, ways, shots) and ``query`` (E, ways, queries); the
    label of an image is its position along ``ways``."""

    support: torch.Tensor
    query: torch.Tensor

    def to(self, device: torch.device) -> "Episodes":
        return Episodes(self.support.to(device, non_blocking=True), self.query.to(device, non_blocking=True))


def class_table(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(classes, largest class) indices of each class's samples, padded with 0, and the class sizes."""
    labels = labels.cpu()
    sizes = torch.bincount(labels)
    order = torch.argsort(labels, stable=True)
    starts = torch.cumsum(sizes, 0) - sizes
    pos = torch.arange(int(sizes.max()))
    table = order[(starts[:, None] + pos).clamp(max=len(labels) - 1)]
    return torch.where(pos < sizes[:, None], table, torch.zeros_like(table)), sizes


def check_episode_fits(sizes: torch.Tensor, ways: int, per_class: int, where: str) -> None:
    if ways > len(sizes):
        raise ValueError(f"{where}: {ways}-way episodes need {ways} classes, the split has {len(sizes)}")
    if per_class > int(sizes.min()):
        raise ValueError(f"{where}: episodes take {per_class} images (shots + queries) of a class, the smallest "
                         f"class has {int(sizes.min())}")


def sample_episodes(labels: torch.Tensor, ways: int, shots: int, queries: int, episodes: int,
                    generator: torch.Generator) -> Episodes:
    """``episodes`` seeded episodes over ``labels`` (0..C-1), drawn without any per-episode loop."""
    table, sizes = class_table(labels)
    check_episode_fits(sizes, ways, shots + queries, "episodes")
    classes = torch.rand(episodes, len(sizes), generator=generator).argsort(dim=1)[:, :ways]  # (E, W)
    # A random order of every class's images: random keys, +inf past the class's size, sorted.
    keys = torch.rand(episodes, ways, table.shape[1], generator=generator)
    keys = keys.masked_fill(torch.arange(table.shape[1]) >= sizes[classes][..., None], math.inf)
    picks = keys.argsort(dim=2)[..., :shots + queries]  # (E, W, K+Q) positions in the class
    chosen = table[classes[..., None], picks]
    return Episodes(support=chosen[..., :shots], query=chosen[..., shots:])


def prototype_logits(support: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Cosine similarities (E, ways * queries, ways) of ``query`` features (E, W, Q, D) to the
    normalised mean of ``support`` features (E, W, K, D); queries ordered class by class."""
    protos = F.normalize(support.mean(dim=2), dim=-1)
    q = F.normalize(query.flatten(1, 2), dim=-1)
    return torch.bmm(q, protos.transpose(1, 2))


def episode_labels(episodes: int, ways: int, queries: int, device: torch.device) -> torch.Tensor:
    return torch.arange(ways, device=device).repeat_interleave(queries).expand(episodes, -1)


@dataclass(frozen=True)
class FewShotResult:
    acc: float
    ci95: float
    per_episode: torch.Tensor


def summarize_episodes(correct: torch.Tensor) -> FewShotResult:
    """Mean accuracy and 95% CI from per-episode accuracies (one host read for both)."""
    acc = correct.float()
    n = acc.numel()
    std = acc.std() if n > 1 else torch.zeros((), device=acc.device)
    mean, ci = torch.stack([acc.mean(), 1.96 * std / math.sqrt(n)]).tolist()
    return FewShotResult(mean, ci, acc.cpu())


def evaluate_features(features: torch.Tensor, episodes: Episodes) -> FewShotResult:
    """Cosine nearest-centroid accuracy of every episode, from precomputed features (N, D)."""
    ep = episodes.to(features.device)
    logits = prototype_logits(features[ep.support], features[ep.query])
    e, w, q = ep.query.shape
    correct = (logits.argmax(dim=-1) == episode_labels(e, w, q, features.device)).float().mean(dim=1)
    return summarize_episodes(correct)


@dataclass(frozen=True)
class EpisodeSpec:
    ways: int = 5
    shots: tuple[int, ...] = (1, 5)
    queries: int = 15
    episodes: int = 600
    seed: int = 0


def fewshot_eval(model: nn.Module, split: FewShotSplit, spec: EpisodeSpec, device: torch.device,
                 prefix: str = "fewshot") -> dict[str, float]:
    """``{prefix}_{k}shot_acc`` and ``{prefix}_{k}shot_ci95`` for every k in ``spec.shots``: the
    encoder's features of the novel split are computed once; each shot count has its own seeded
    episodes (seed + k), the same for every model and epoch."""
    was = next(model.parameters()).device
    features = predict(model.to(device), split.x, features=True)
    model.to(was)
    out = {}
    for k in spec.shots:
        gen = torch.Generator().manual_seed(spec.seed * 1000 + k)
        r = evaluate_features(features, sample_episodes(split.y, spec.ways, k, spec.queries, spec.episodes, gen))
        out[f"{prefix}_{k}shot_acc"], out[f"{prefix}_{k}shot_ci95"] = r.acc, r.ci95
    return out


# --------------------------------------------------------------------------- Meta-Baseline


class MetaBaseline(nn.Module):
    """An encoder (a :class:`Classifier` whose head is unused) scoring an episode's queries by
    cosine similarity to its prototypes times a learnable temperature (Meta-Baseline; the authors'
    ``temp: 10``, learnable)."""

    def __init__(self, encoder: nn.Module, temperature: float = 10.0, learnable: bool = True):
        super().__init__()
        self.encoder = encoder
        t = torch.tensor(float(temperature))
        if learnable:
            self.temperature = nn.Parameter(t)
        else:
            self.register_buffer("temperature", t)

    def forward(self, x: torch.Tensor, episodes: Episodes) -> torch.Tensor:
        """Logits (E * ways * queries, ways) of the episodes' queries; ``x`` the split's images."""
        e, w, k = episodes.support.shape
        q = episodes.query.shape[2]
        idx = torch.cat([episodes.support.flatten(), episodes.query.flatten()])
        # One forward over every image of the batch of episodes, as the authors do.
        feats = self.encoder(x[idx], return_features=True)[1]
        support = feats[:e * w * k].view(e, w, k, -1)
        query = feats[e * w * k:].view(e, w, q, -1)
        return (prototype_logits(support, query) * self.temperature).flatten(0, 1)


@dataclass(frozen=True)
class MetaConfig:
    epochs: int
    batches: int  # optimiser steps per epoch (the authors' train_batches)
    episodes_per_batch: int
    ways: int
    shots: int
    queries: int
    lr: float
    weight_decay: float
    momentum: float
    seed: int


def meta_train(model: MetaBaseline, x: torch.Tensor, y: torch.Tensor, cfg: MetaConfig,
               loss_fn: Callable[..., dict[str, torch.Tensor]], teacher: MetaBaseline | None = None,
               device: torch.device | None = None) -> dict[str, float]:
    """Episodic fine-tuning on (x, y) (the base classes, on ``device``): per step, a batch of
    episodes, the model's query logits, ``loss_fn(logits, labels, teacher_logits, epoch, epochs)``.
    SGD with momentum and weight decay at a constant lr, as the authors' Meta-Baseline config
    (no milestones). Returns the last epoch's mean loss and the learnt temperature."""
    from trainables.losses import LossInputs

    device = device or x.device
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    labels = episode_labels(cfg.episodes_per_batch, cfg.ways, cfg.queries, device).flatten()
    if teacher is not None:
        teacher.eval().requires_grad_(False)
    total = torch.zeros((), device=device)
    for epoch in range(cfg.epochs):
        model.train()
        total = torch.zeros((), device=device)
        # Every epoch's episodes drawn up front on the CPU: the steps below never read the host.
        batch = sample_episodes(y, cfg.ways, cfg.shots, cfg.queries, cfg.episodes_per_batch * cfg.batches, gen)
        for b in range(cfg.batches):
            sl = slice(b * cfg.episodes_per_batch, (b + 1) * cfg.episodes_per_batch)
            ep = Episodes(batch.support[sl], batch.query[sl]).to(device)
            with autocast(device):
                logits = model(x, ep).float()
                t_logits = None
                if teacher is not None:
                    with torch.no_grad():
                        t_logits = teacher(x, ep).float()
            out = loss_fn(LossInputs(student_logits=logits, targets=labels, teacher_logits=t_logits,
                                     epoch=epoch, num_epochs=cfg.epochs, progress=epoch / cfg.epochs))
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()
            total = total + out["loss"].detach()
    loss, temperature = torch.stack([total / max(cfg.batches, 1), model.temperature.detach().float()]).tolist()
    return {"meta_train_loss": loss, "meta_temperature": temperature}
