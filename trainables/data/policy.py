"""Photometric training augmentation run batched on the device: timm's RandAugment and AutoAugment
from their config strings, drawn per image (trainables/data/timm_policy.py); kornia's RandAugment,
AutoAugment (CIFAR-10 and ImageNet policies) and TrivialAugment; colour jitter; random erasing.

The data the loops hold is normalised with the dataset's (mean, std), while the policies are
defined on [0, 1] images: :class:`Photometric` un-normalises a batch, applies the policy, and
normalises it again. Random erasing then works on the normalised batch, like timm's (which runs
after ``Normalize``), filling its box with per-pixel N(0, 1) noise (timm's ``remode='pixel'``).

Per-sample randomness of kornia's policies: kornia draws one op sequence per call (each op's sign,
probability and parameters per image). ``groups`` splits the batch into that many slices, each
drawing its own ops, so a batch mixes op choices as a per-image policy does; slice sizes come from
the batch's shape, so no host sync. Colour jitter is torchvision's, per image, without a host sync
(:mod:`trainables.data.colour`); erasing is drawn per image by kornia.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from trainables.data.colour import colour_jitter
from trainables.data.timm_policy import TimmPolicy, is_timm_config

AUTO_AUGMENTS = ("none", "randaugment", "autoaugment_cifar10", "autoaugment_imagenet", "trivialaugment")
# kornia's RandAugment magnitude runs over (0, 30) where timm's runs over [0, 10]: m9 is 0.9 of the range.
KORNIA_M_PER_TIMM_M = 3.0


def build_policy(name: str, n: int = 2, m: float = 9.0, mean: tuple[float, ...] = (0.5, 0.5, 0.5),
                 interpolation: str = "bilinear"):
    """The module of a named policy: a timm config string's :class:`TimmPolicy` (``mean`` is the
    dataset's, its fill colour; ``interpolation`` its affine ops'), else kornia's; None for ``none``."""
    if name == "none":
        return None
    if is_timm_config(name):
        return TimmPolicy(name, mean, interpolation)
    from kornia.augmentation.auto import AutoAugment, RandAugment, TrivialAugment

    if name == "randaugment":
        return RandAugment(n=n, m=m * KORNIA_M_PER_TIMM_M)
    if name == "autoaugment_cifar10":
        return AutoAugment("cifar10")
    if name == "autoaugment_imagenet":
        return AutoAugment("imagenet")
    if name == "trivialaugment":
        return TrivialAugment()
    raise ValueError(f"unknown auto_augment {name!r}; known: {', '.join(AUTO_AUGMENTS)}")


@dataclass(frozen=True)
class Photometric:
    """The photometric part of a training recipe; ``apply(x)`` maps a normalised batch to its
    augmented, normalised batch (a no-op when nothing is on)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    auto_augment: str = "none"
    randaugment_n: int = 2
    randaugment_m: float = 9.0
    groups: int = 8
    color_jitter: float = 0.0
    random_erasing: float = 0.0
    interpolation: str = "bilinear"

    def __post_init__(self):
        import kornia.augmentation as K

        policy = build_policy(self.auto_augment, self.randaugment_n, self.randaugment_m, self.mean,
                              self.interpolation)
        # timm drops colour jitter when a policy is set (its auto-augment policies already vary colour).
        # Its jitter is torchvision's ColorJitter(v, v, v) per image (trainables/data/colour.py).
        jitter = ((self.color_jitter,) * 3 + (0.0,) if policy is None and self.color_jitter > 0 else None)
        # timm's RandomErasing defaults: area 2-33 %, aspect 0.3-3.3, one box.
        erase = K.RandomErasing(scale=(0.02, 1 / 3), ratio=(0.3, 1 / 0.3), value=0.0, p=self.random_erasing) \
            if self.random_erasing > 0 else None
        object.__setattr__(self, "_policy", policy)
        object.__setattr__(self, "_jitter", jitter)
        object.__setattr__(self, "_erase", erase)
        object.__setattr__(self, "_stat_cache", {})

    @property
    def active(self) -> bool:
        return self._policy is not None or self._jitter is not None or self._erase is not None

    def apply(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The augmented batch. ``generator`` (on ``x``'s device) draws the erasing noise and a timm
        policy's ops; kornia draws its own parameters from torch's global generator."""
        if not self.active:
            return x
        if self._policy is not None or self._jitter is not None:
            x = self._normalize(self._on_unit_images(self._denormalize(x), generator))
        if self._erase is not None:
            x = self._erase_with_noise(x, generator)
        return x

    # -- pieces ---------------------------------------------------------------------------------

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Made once per device: a tensor built from a Python list is a host-to-device copy that
        # waits for the stream to drain.
        key = (x.device, x.dtype)
        if key not in self._stat_cache:
            self._stat_cache[key] = tuple(torch.tensor(v, dtype=x.dtype).view(1, -1, 1, 1).to(x.device)
                                          for v in (self.mean, self.std))
        return self._stat_cache[key]

    def _denormalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(x)
        return (x * std + mean).clamp_(0.0, 1.0)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(x)
        return (x - mean) / std

    def _on_unit_images(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        grey = x.shape[1] == 1
        if grey:  # the colour ops expect RGB; a grey image stays grey through them
            x = x.expand(-1, 3, -1, -1)
        if self._jitter is not None:
            x = colour_jitter(x, self._jitter, 1.0, generator)
        if isinstance(self._policy, TimmPolicy):
            x = self._policy(x, generator)
        elif self._policy is not None:
            slices = torch.tensor_split(x, min(self.groups, x.shape[0]))
            x = torch.cat([self._policy(s) for s in slices])
        return x.mean(1, keepdim=True) if grey else x

    def _erase_with_noise(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        # kornia erases a box per image with a constant; erasing a tensor of ones marks the box,
        # which is then filled with N(0, 1) noise per pixel and channel as timm's 'pixel' mode does.
        keep = self._erase(torch.ones_like(x[:, :1]))
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return torch.where(keep > 0.5, x, noise)
