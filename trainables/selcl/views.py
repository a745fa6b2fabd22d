"""Sel-CL's two training views, drawn per image on the device without a host sync.

The crops are this project's (:class:`~trainables.data.augment.Augment`), the colour ops
:mod:`trainables.data.colour` (kornia's crops find the distinct crop sizes with ``unique`` and its
``ColorJitter`` draws its order of ops on the host: both sync). Each follows torchvision on [0, 1]
images, the authors' transforms:

* ``RandomResizedCrop(32)``: a box of 8-100 % of the area, aspect 3/4-4/3 (sides clamped to the
  image where torchvision would redraw), bilinear back to the image size; ``RandomCrop(32,
  padding=4)``: a window of the image with a 4 px black border;
* ``RandomHorizontalFlip``: p 0.5;
* ``ColorJitter(0.4, 0.4, 0.4, 0.1)`` under ``RandomApply(p=0.8)``: brightness, contrast and
  saturation factors uniform in [0.6, 1.4], hue shift uniform in +-0.1 of the colour circle, the four
  in a random order per image; brightness scales, contrast blends with the image's mean grey level,
  saturation with its grey image, each clamped to [0, 1]; hue through HSV (kornia's ``adjust_hue``);
* ``RandomGrayscale(p=0.2)``: the grey level (0.2989 R + 0.587 G + 0.114 B, torchvision's) in all channels.
"""
from __future__ import annotations

import torch

from trainables.data.augment import Augment
from trainables.data.colour import colour_jitter, random_grayscale


class TwoViewAugment:
    """The view transform of Sel-CL's stage (``complex`` or ``simple``, the module docstring) on
    normalised images: un-normalised to [0, 1] (grey images as three equal channels for the colour
    ops), transformed, normalised again."""

    def __init__(self, kind: str, mean, std, image_shape: tuple[int, ...], seed: int, device: torch.device):
        self.kind, self.shape = kind, tuple(image_shape)
        # zeros on [0, 1] images is black, as torchvision pads a PIL image
        self.geometry = (Augment("rrc_flip", scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) if kind == "complex"
                         else Augment("flip_crop", pad=4, pad_mode="zeros"))
        self.generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + 29)
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        unit = (x.float() * self.std + self.mean).clamp(0, 1)
        out = self.geometry.apply(unit, self.geometry.sample(x.shape[0], self.shape, self.generator))
        if self.kind == "complex":
            single = out.shape[1] == 1
            rgb = out.expand(-1, 3, -1, -1) if single else out
            rgb = random_grayscale(colour_jitter(rgb, (0.4, 0.4, 0.4, 0.1), 0.8, self.generator), 0.2, self.generator)
            out = rgb.mean(1, keepdim=True) if single else rgb
        return ((out - self.mean) / self.std).to(x.dtype)
