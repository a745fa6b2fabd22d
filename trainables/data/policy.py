"""Photometric augmentation policies (kornia), run batched on the device.
Filled in below."""
from __future__ import annotations

AUTO_AUGMENTS = ("none", "randaugment", "autoaugment_cifar10", "autoaugment_imagenet", "trivialaugment")
