"""Differentiable Siamese augmentation (DiffAugment / DSA, Zhao & Bilen), as DAPT applies it to the
training batches of its synthetic-data distillation (``generated_distill.py --aug --aug_mode``):
on the device, on normalised images, every draw per image from a seeded generator.

Ops and their constants (DAPT's ``ParamDiffAug``):

* ``flip``: horizontal flip with probability 0.5.
* ``color``: brightness ``x + (u - 0.5) * 1.0``, then saturation ``(x - mean_c) * (u * 2.0) + mean_c``
  (mean over channels), then contrast ``(x - mean) * (u + 0.5) + mean`` (mean over the image),
  ``u ~ U(0, 1)`` drawn per image for each.
* ``crop``: translation by up to 1/8 of the side (integer pixels, uniform in [-s, s]), zeros shifted in.
* ``rotate``: rotation by up to ±15°; ``scale``: x and y scaled independently by [1/1.2, 1.2]
  (both by ``affine_grid`` / ``grid_sample``, zeros outside).
* ``cutout``: a square of half the side set to zero, its centre uniform over the image.

Mode ``S`` applies one op of the strategy to the whole batch, drawn per batch (DAPT draws it per
step); mode ``M`` applies all of them in order. The op of mode S is drawn from a CPU generator, so
choosing it reads nothing back from the device. The random parameters are drawn on the device;
translation and cutout are built from index comparisons (no data-dependent shapes), so a step stays
free of host syncs.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

OPS = ("flip", "color", "crop", "rotate", "scale", "cutout")
DAPT_STRATEGY = "flip_color_crop_rotate_scale_cutout"
BRIGHTNESS, SATURATION, CONTRAST = 1.0, 2.0, 0.5
CROP_RATIO, CUTOUT_RATIO, SCALE_RATIO, ROTATE_DEG, FLIP_PROB = 0.125, 0.5, 1.2, 15.0, 0.5


def parse_strategy(strategy: str) -> tuple[str, ...]:
    ops = tuple(strategy.split("_"))
    unknown = [o for o in ops if o not in OPS]
    if not ops or unknown:
        raise ValueError(f"unknown DiffAugment op {unknown[0] if unknown else strategy!r}; ops joined by _ from "
                         f"{', '.join(OPS)}")
    return ops


def _u(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype, generator=g)


def _flip(x, g):
    return torch.where(_u(x, g) < FLIP_PROB, x.flip(3), x)


def _color(x, g):
    x = x + (_u(x, g) - 0.5) * BRIGHTNESS
    mean_c = x.mean(dim=1, keepdim=True)
    x = (x - mean_c) * (_u(x, g) * SATURATION) + mean_c
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_u(x, g) + CONTRAST) + mean


def _shift(x, g):
    n, _, h, w = x.shape
    sh, sw = int(h * CROP_RATIO + 0.5), int(w * CROP_RATIO + 0.5)
    dy = torch.randint(-sh, sh + 1, (n, 1, 1), device=x.device, generator=g)
    dx = torch.randint(-sw, sw + 1, (n, 1, 1), device=x.device, generator=g)
    rows = torch.arange(h, device=x.device).view(1, h, 1) + dy
    cols = torch.arange(w, device=x.device).view(1, 1, w) + dx
    inside = ((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)).unsqueeze(1)
    flat = (rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)).view(n, 1, h * w).expand(-1, x.shape[1], -1)
    moved = x.reshape(n, x.shape[1], h * w).gather(2, flat).view_as(x)
    return moved * inside


def _affine(x, theta):
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)


def _rotate(x, g):
    n = x.shape[0]
    a = (torch.rand(n, device=x.device, generator=g) - 0.5) * 2 * ROTATE_DEG / 180 * math.pi
    c, s, z = torch.cos(a), torch.sin(a), torch.zeros_like(a)
    return _affine(x, torch.stack([torch.stack([c, -s, z], 1), torch.stack([s, c, z], 1)], 1).to(x.dtype))


def _scale(x, g):
    n = x.shape[0]
    sx = torch.rand(n, device=x.device, generator=g) * (SCALE_RATIO - 1 / SCALE_RATIO) + 1 / SCALE_RATIO
    sy = torch.rand(n, device=x.device, generator=g) * (SCALE_RATIO - 1 / SCALE_RATIO) + 1 / SCALE_RATIO
    z = torch.zeros_like(sx)
    return _affine(x, torch.stack([torch.stack([sx, z, z], 1), torch.stack([z, sy, z], 1)], 1).to(x.dtype))


def _cutout(x, g):
    n, _, h, w = x.shape
    ch, cw = int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), device=x.device, generator=g)
    cx = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), device=x.device, generator=g)
    rows = torch.arange(h, device=x.device).view(1, h, 1) - (cy - ch // 2)
    cols = torch.arange(w, device=x.device).view(1, 1, w) - (cx - cw // 2)
    hole = (rows >= 0) & (rows < ch) & (cols >= 0) & (cols < cw)
    return x * (~hole).unsqueeze(1).to(x.dtype)


FNS = {"flip": _flip, "color": _color, "crop": _shift, "rotate": _rotate, "scale": _scale, "cutout": _cutout}


class DiffAugment:
    """``x -> x'`` per DAPT's DiffAugment mode (``S``: one op per batch; ``M``: every op)."""

    def __init__(self, mode: str, strategy: str = DAPT_STRATEGY, seed: int = 0):
        if mode not in ("S", "M"):
            raise ValueError(f"diffaugment mode must be S or M, got {mode!r}")
        self.mode, self.ops, self.seed = mode, parse_strategy(strategy), seed
        self._choice = torch.Generator().manual_seed(seed * 7_919 + 3)
        self._device_gen: torch.Generator | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._device_gen is None or self._device_gen.device != x.device:
            self._device_gen = torch.Generator(device=x.device).manual_seed(self.seed * 1_000_033 + 29)
        if self.mode == "S":
            ops = (self.ops[int(torch.randint(len(self.ops), (1,), generator=self._choice))],)
        else:
            ops = self.ops
        for op in ops:
            x = FNS[op](x, self._device_gen)
        return x.contiguous()
