"""Which view of each training image the student sees, batch by batch, and how the teacher's
outputs for it are found.

Three teacher modes (``teacher_mode`` of ``distill``), all giving the same loss for the same view:

- ``online``: a fresh random view per image per step (``RandomViews``), the teacher runs on the
  batch the student sees.
- ``cached``: without augmentation, the un-augmented images and the teacher's logits on them,
  computed once. With augmentation, a fixed set of K views per image (``teacher_views``),
  regenerated from ``view_seed``; epoch ``e`` shows every image its view ``e mod K``
  (``FixedViews`` in ``cycle`` order). The teacher's logits for all K views are computed once.
- ``sampled_views``: the same K fixed views and cached logits, but each epoch draws, per image, one
  view index at random from the trial's seed (``FixedViews`` in ``sampled`` order), so trials with
  different seeds see different view sequences at no teacher cost.

A view is stored as its augmentation parameters (regenerated from ``view_seed`` on the CPU, so
the same on every device), never as images; the teacher's logits for the K views live in the
artifact cache under a key of (teacher recipe, augmentation, K, view_seed), shared by all trials.
"""
from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from trainables.data.augment import Augment, Params, epoch_generator, take
from trainables.runtime.engine import autocast


class BatchViews(Protocol):
    def start_epoch(self, epoch: int) -> None: ...

    def batch(self, x: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The student's inputs for training samples ``idx``, and their view indices (None when
        views are not from a fixed set)."""


class PlainViews:
    def start_epoch(self, epoch: int) -> None:
        pass

    def batch(self, x, idx):
        return x[idx], None


class RandomViews:
    """Fresh augmentation parameters for every batch, from a (seed, epoch) generator on the device."""

    def __init__(self, augment: Augment, seed: int, device: torch.device):
        self.augment, self.seed, self.device = augment, seed, device
        self.gen: torch.Generator | None = None

    def start_epoch(self, epoch: int) -> None:
        self.gen = epoch_generator(self.seed, epoch, self.device)

    def batch(self, x, idx):
        xb = x[idx]
        return self.augment.apply(xb, self.augment.sample(len(idx), tuple(xb.shape[1:]), self.gen)), None


class FixedViews:
    """K fixed views per image; ``order`` ``cycle`` shows view ``epoch mod K`` to every image,
    ``sampled`` draws one view index per image per epoch from the trial's seed."""

    def __init__(self, augment: Augment, params: Params, num_views: int, order: str, seed: int,
                 device: torch.device):
        if order not in ("cycle", "sampled"):
            raise ValueError(f"unknown view order {order!r}")
        self.augment, self.num_views, self.order, self.seed, self.device = augment, num_views, order, seed, device
        self.params = {k: v.to(device) for k, v in params.items()}
        self.view_of: torch.Tensor | None = None

    def start_epoch(self, epoch: int) -> None:
        n = next(iter(self.params.values())).shape[1]
        if self.order == "cycle":
            self.view_of = torch.full((n,), epoch % self.num_views, dtype=torch.long, device=self.device)
        else:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + 11)
            self.view_of = torch.randint(0, self.num_views, (n,), generator=gen).to(self.device)

    def batch(self, x, idx):
        views = self.view_of[idx]
        return self.augment.apply(x[idx], take(self.params, (views, idx))), views


def view_params(augment: Augment, n: int, shape: tuple[int, ...], num_views: int, view_seed: int) -> Params:
    """Parameters of K views of ``n`` images, shape (K, n, ...): drawn on the CPU so every device
    and every trial regenerates the same views from ``view_seed``."""
    gen = torch.Generator().manual_seed(view_seed)
    per_view = [augment.sample(n, shape, gen) for _ in range(num_views)]
    return {k: torch.stack([p[k] for p in per_view]) for k in per_view[0]}


@torch.no_grad()
def teacher_view_logits(model: nn.Module, x: torch.Tensor, augment: Augment, params: Params,
                        batch_size: int = 1024) -> torch.Tensor:
    """The teacher's float32 logits for every (view, image), shape (K, n, classes)."""
    model.eval()
    num_views, n = next(iter(params.values())).shape[:2]
    out = []
    for v in range(num_views):
        chunks = []
        for start in range(0, n, batch_size):
            idx = torch.arange(start, min(start + batch_size, n))
            xb = augment.apply(x[idx.to(x.device)], take(params, (v, idx)))
            with autocast(x.device):
                chunks.append(model(xb).float())
        out.append(torch.cat(chunks))
    return torch.stack(out)
