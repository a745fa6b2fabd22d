"""Batched data augmentation that runs where the data lives (the GPU when it fits there).

Each augmentation is split in two: ``sample(n, shape, generator)`` draws the per-image parameters
(crop offsets, flip bits, resized-crop boxes) as small tensors, and ``apply(x, params)`` turns a
batch of normalised images into their views. Splitting them lets a *view* be stored as its
parameters alone: the teacher-output cache keeps the teacher's logits for K views per image plus
the seed that regenerates their parameters, never the images (see :mod:`trainables.training.views`).

Kinds (the ``augment`` parameter of ``distill``):

- ``none``: the images as they are.
- ``flip_crop``: pad by ``pad`` pixels (``reflect``; ``zeros`` = the value 0 of the normalised
  data, i.e. the dataset's mean colour; or ``black``, pixel value 0 before normalisation, which is
  torchvision's ``RandomCrop(size, padding)`` on an image and so the CIFAR code bases'), take a
  random HxW window, flip horizontally with p=0.5 (airbench uses reflect padding). ``hflip`` sets
  the flip's probability.
- ``rrc_flip``: RandomResizedCrop (area ``scale``, aspect ``ratio``, bilinear resize back to HxW)
  then the flip, as the superalignment vision recipe trains its probes' backbones.

No DataLoader workers are involved: a whole batch is transformed with a few tensor ops.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

AugmentName = Literal["none", "flip_crop", "rrc_flip"]
AUGMENTS = ("none", "flip_crop", "rrc_flip")

Params = dict[str, torch.Tensor]


def take(params: Params, index: torch.Tensor | tuple) -> Params:
    """The parameters of a subset of images (or of (view, image) pairs)."""
    return {k: v[index] for k, v in params.items()}


def flip(x: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    return torch.where(flips.view(-1, 1, 1, 1), x.flip(3), x)


def pad_crop(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, pad: int, mode: str,
             fill: tuple[float, ...] = ()) -> torch.Tensor:
    """Per-image ``H x W`` windows at offsets (dy, dx) of the batch padded by ``pad``; ``fill``: the
    per-channel border value of ``mode`` black (black in the data's normalisation)."""
    n, c, h, w = x.shape
    if mode == "black":
        if len(fill) != c:
            raise ValueError(f"pad_mode black needs the border value of each of the {c} channels, got {fill!r}")
        shift = torch.tensor(fill, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
        padded = F.pad(x - shift, (pad,) * 4) + shift
    else:
        padded = F.pad(x, (pad,) * 4, mode="reflect" if mode == "reflect" else "constant")
    rows = (dy.view(-1, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    cols = (dx.view(-1, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    chans = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[batch, chans, rows, cols]


def resized_crop(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Crop each image to its box (x0, y0, w, h as fractions of the image) and resize it back to
    the image's size, bilinearly, in one ``grid_sample`` call."""
    n = x.shape[0]
    x0, y0, bw, bh = boxes.to(x.dtype).unbind(1)
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = bw
    theta[:, 0, 2] = 2 * x0 + bw - 1
    theta[:, 1, 1] = bh
    theta[:, 1, 2] = 2 * y0 + bh - 1
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@dataclass(frozen=True)
class Augment:
    kind: str = "none"
    pad: int = 4
    pad_mode: Literal["reflect", "zeros", "black"] = "reflect"
    # pad_mode black: the border per channel, -mean / std of the data (not in the recipe: the data is)
    fill: tuple[float, ...] = ()
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5  # probability of the horizontal flip (timm's hflip; 0 for digits and text)

    def __post_init__(self):
        if self.kind not in AUGMENTS:
            raise ValueError(f"unknown augment {self.kind!r}; known: {', '.join(AUGMENTS)}")

    @property
    def active(self) -> bool:
        return self.kind != "none"

    def recipe(self) -> dict:
        """What defines the views (a cache key part)."""
        # hflip enters the key only when it is not the default, so views cached before it existed keep theirs
        flip = {} if self.hflip == 0.5 else {"hflip": self.hflip}
        if self.kind == "flip_crop":
            return {"kind": self.kind, "pad": self.pad, "pad_mode": self.pad_mode, **flip}
        if self.kind == "rrc_flip":
            return {"kind": self.kind, "scale": list(self.scale), "ratio": list(self.ratio), **flip}
        return {"kind": "none"}

    def sample(self, n: int, shape: tuple[int, ...], generator: torch.Generator) -> Params:
        """Parameters for ``n`` images of ``shape`` (C, H, W), on the generator's device."""
        dev = generator.device
        if self.kind == "none":
            return {}
        flips = torch.rand(n, generator=generator, device=dev) < self.hflip
        h, w = shape[-2], shape[-1]
        if self.kind == "flip_crop":
            dy = torch.randint(0, 2 * self.pad + 1, (n,), generator=generator, device=dev)
            dx = torch.randint(0, 2 * self.pad + 1, (n,), generator=generator, device=dev)
            return {"flip": flips, "dy": dy, "dx": dx}
        # RandomResizedCrop's box, drawn for all images at once. torchvision retries a box that
        # does not fit; here the sides are clamped to the image instead (same support, one draw).
        lo, hi = self.scale
        area = lo + (hi - lo) * torch.rand(n, generator=generator, device=dev)
        log_r = math.log(self.ratio[0]) + (math.log(self.ratio[1]) - math.log(self.ratio[0])) * torch.rand(
            n, generator=generator, device=dev)
        aspect = torch.exp(log_r)  # width / height, in pixels
        bw = torch.sqrt(area * aspect * h / w).clamp(max=1.0)
        bh = torch.sqrt(area / aspect * w / h).clamp(max=1.0)
        x0 = (1 - bw) * torch.rand(n, generator=generator, device=dev)
        y0 = (1 - bh) * torch.rand(n, generator=generator, device=dev)
        return {"flip": flips, "box": torch.stack([x0, y0, bw, bh], 1)}

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        if self.kind == "none":
            return x
        params = {k: v.to(x.device, non_blocking=True) for k, v in params.items()}
        if self.kind == "flip_crop":
            x = pad_crop(x, params["dy"], params["dx"], self.pad, self.pad_mode, self.fill)
        else:
            x = resized_crop(x, params["box"])
        return flip(x, params["flip"])


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """The augmentation stream of one trial's epoch: the same on every run of the same seed."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + epoch + 7)
