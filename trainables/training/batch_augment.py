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

import functools
from dataclasses import dataclass

import torch

from trainables.data.augment import Augment
from trainables.data.policy import Photometric
from trainables.training.diffaugment import DiffAugment
from trainables.training.recipe import AugmentParams


def geometric_of(p: AugmentParams, mean=None, std=None) -> Augment:
    """The geometric view (``augment``) of a recipe, for data normalised with (``mean``, ``std``):
    ``pad_mode: black`` pads with their black; without them the view serves its cache key only."""
    fill = tuple(-m / s for m, s in zip(mean, std)) if p.pad_mode == "black" and mean is not None else ()
    return Augment(p.augment, pad=p.crop_pad, pad_mode=p.pad_mode, fill=fill, scale=tuple(p.rrc_scale),
                   ratio=tuple(p.rrc_ratio), hflip=p.hflip)


@dataclass
class BatchAugment:
    """``(x, y) -> (x', targets)``: identity when nothing is on. Its own device draws (erasing
    noise) come from a generator seeded with ``seed``, so they stay reproducible when batches are
    prepared on a side thread (:mod:`trainables.runtime.prefetch`) beside a step drawing dropout."""

    photometric: Photometric | None = None
    mixup: object | None = None  # batch_mixup_class(): timm's Mixup, batch mode
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
        return self.mixed(x, y)[:2]

    def mixed(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """``(x', targets, lam)``: lam is the batch's mixing weight, a host number (1.0 unmixed);
        image i was mixed with image n-1-i, so the targets are ``lam * onehot(y) + (1 - lam) *
        onehot(y).flip(0)``. Returned with the batch, not kept on ``self``: batches are prepared
        ahead on a side thread."""
        if self.photometric is not None:
            if self._generator is None or self._generator.device != x.device:
                self._generator = torch.Generator(device=x.device).manual_seed(self.seed * 1_000_003 + 17)
            x = self.photometric.apply(x, self._generator)
        if self.diffaugment is not None:
            x = self.diffaugment(x)
        lam = 1.0
        if self.mixup is not None:
            x, y, lam = self.mixup.mix(x, y)  # in place on x (a fresh batch here), soft float targets
        return x, y, lam


@functools.cache
def batch_mixup_class() -> type:
    """timm's ``Mixup`` in batch mode with ``mix``, which also returns the lam it mixed with (after
    cutmix's area correction): the bootstrapped label term (``OptimConfig.bootstrap_beta``) mixes
    the student's own predictions with the same weight. Made on first use: importing timm is slow,
    and this module is imported where a search space is parsed."""
    from timm.data import Mixup
    from timm.data.mixup import mixup_target

    class BatchMixup(Mixup):
        def mix(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
            if self.mode != "batch":
                raise ValueError(f"BatchMixup.mix: mode {self.mode!r} draws a lam per image; only 'batch' is supported")
            if len(x) % 2:
                raise ValueError(f"mixup pairs each image with its mirror in the batch; got an odd batch of {len(x)}")
            lam = float(self._mix_batch(x))
            return x, mixup_target(target, self.num_classes, lam, self.label_smoothing, self.multi_label), lam

    return BatchMixup


def batch_augment_of(p: AugmentParams, mean, std, num_classes: int, seed: int = 0) -> BatchAugment:
    """The per-step augmentation of recipe ``p`` for data normalised with (``mean``, ``std``)."""
    photometric = Photometric(tuple(mean), tuple(std), p.auto_augment, p.randaugment_n, p.randaugment_m,
                              p.policy_groups, p.color_jitter, p.random_erasing, p.policy_interpolation)
    mixup = None
    if p.mixes:
        # Label smoothing stays with the loss (its label_smoothing), which applies it to soft targets too.
        mixup = batch_mixup_class()(mixup_alpha=p.mixup_alpha, cutmix_alpha=p.cutmix_alpha, prob=p.mixup_prob,
                                    switch_prob=p.mixup_switch_prob, mode="batch", label_smoothing=0.0,
                                    num_classes=num_classes)
    diffaugment = DiffAugment(p.diffaugment, p.diffaugment_strategy, seed) if p.diffaugment != "none" else None
    return BatchAugment(photometric if photometric.active else None, mixup, num_classes, seed,
                        diffaugment=diffaugment)
