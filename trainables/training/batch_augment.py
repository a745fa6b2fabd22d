"""The per-step part of a training recipe: the photometric policy and erasing
(:class:`~trainables.data.policy.Photometric`), then DAPT's DiffAugment
(:class:`~trainables.training.diffaugment.DiffAugment`), then mixup / cutmix (timm's
:class:`~timm.data.Mixup`), applied to each training batch after its geometric view.

Mixing turns the labels into soft targets (N, C) that sum to 1; every loss takes them
(cross-entropy against probabilities; DKD splits target and non-target classes at their argmax).
The teacher, when it runs online, sees the same mixed images as the student. timm's ``batch`` mode
draws one lambda per batch on the host (numpy), so mixing costs no device sync; it pairs each
image with its mirror in the batch, which needs an even batch (training batches then drop the
last odd one, as timm's loaders do).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from trainables.data.augment import Augment
from trainables.data.policy import Photometric
from trainables.training.diffaugment import DiffAugment
from trainables.training.recipe import AugmentParams


def geometric_of(p: AugmentParams) -> Augment:
    """The geometric view (``augment``) of a recipe."""
    return Augment(p.augment, pad=p.crop_pad, pad_mode=p.pad_mode, scale=tuple(p.rrc_scale), ratio=tuple(p.rrc_ratio),
                   hflip=p.hflip)


@dataclass
class BatchAugment:
    """``(x, y) -> (x', targets)``: identity when nothing is on. Its own device draws (erasing
    noise) come from a generator seeded with ``seed``, so they stay reproducible when batches are
    prepared on a side thread (:mod:`trainables.runtime.prefetch`) beside a step drawing dropout."""

    photometric: Photometric | None = None
    mixup: object | None = None  # timm.data.Mixup
    num_classes: int = 0
    seed: int = 0
    diffaugment: DiffAugment | None = None
    _generator: torch.Generator | None = None

    @property
    def mixes(self) -> bool:
        return self.mixup is not None

    @property
    def active(self) -> bool:
        return self.photometric is not None or self.mixup is not None or self.diffaugment is not None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.photometric is not None:
            if self._generator is None or self._generator.device != x.device:
                self._generator = torch.Generator(device=x.device).manual_seed(self.seed * 1_000_003 + 17)
            x = self.photometric.apply(x, self._generator)
        if self.diffaugment is not None:
            x = self.diffaugment(x)
        if self.mixup is not None:
            x, y = self.mixup(x, y)  # in place on x (a fresh batch here), soft float targets
        return x, y


def batch_augment_of(p: AugmentParams, mean, std, num_classes: int, seed: int = 0) -> BatchAugment:
    """The per-step augmentation of recipe ``p`` for data normalised with (``mean``, ``std``)."""
    photometric = Photometric(tuple(mean), tuple(std), p.auto_augment, p.randaugment_n, p.randaugment_m,
                              p.policy_groups, p.color_jitter, p.random_erasing, p.policy_interpolation)
    mixup = None
    if p.mixes:
        from timm.data import Mixup

        # Label smoothing stays with the loss (its label_smoothing), which applies it to soft targets too.
        mixup = Mixup(mixup_alpha=p.mixup_alpha, cutmix_alpha=p.cutmix_alpha, prob=p.mixup_prob,
                      switch_prob=p.mixup_switch_prob, mode="batch", label_smoothing=0.0, num_classes=num_classes)
    diffaugment = DiffAugment(p.diffaugment, p.diffaugment_strategy, seed) if p.diffaugment != "none" else None
    return BatchAugment(photometric if photometric.active else None, mixup, num_classes, seed,
                        diffaugment=diffaugment)
