"""The ``dino`` family's multi-crop views, made on the device, and the model call over them."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trainables.dino.params import CropConfig


def random_resized_crops(x: torch.Tensor, size: int, scale: tuple[float, float], hflip: bool) -> torch.Tensor:
    """One random resized crop per image of ``x`` (N, C, H, W), resized to ``size`` x ``size``,
    all in one ``grid_sample`` on ``x``'s device. Crop width and height (as fractions of the image)
    are sqrt(area * ratio) and sqrt(area / ratio), capped at 1; a scale of [1, 1] is the whole image."""
    n = x.shape[0]
    dev = x.device
    area = torch.empty(n, device=dev).uniform_(scale[0], scale[1])
    if scale[0] >= 1.0:
        w = h = torch.ones(n, device=dev)
    else:
        log_ratio = torch.empty(n, device=dev).uniform_(math.log(3 / 4), math.log(4 / 3))
        w = torch.sqrt(area * log_ratio.exp()).clamp(max=1.0)
        h = torch.sqrt(area / log_ratio.exp()).clamp(max=1.0)
    cx = (torch.rand(n, device=dev) * 2 - 1) * (1 - w)  # centres keep the crop inside the image
    cy = (torch.rand(n, device=dev) * 2 - 1) * (1 - h)
    sx = w * (torch.where(torch.rand(n, device=dev) < 0.5, -1.0, 1.0) if hflip else 1.0)
    theta = torch.zeros(n, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, cx, h, cy
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def multicrop(x: torch.Tensor, cfg: CropConfig) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(global crops, local crops) of a batch."""
    image = x.shape[-1]
    globals_ = [random_resized_crops(x, cfg.global_size or image, cfg.global_scale, cfg.hflip)
                for _ in range(cfg.global_crops)]
    locals_ = [random_resized_crops(x, cfg.local_size or image, cfg.local_scale, cfg.hflip)
               for _ in range(cfg.local_crops)]
    return globals_, locals_


def forward_crops(model: nn.Module, crops: list[torch.Tensor]) -> list[torch.Tensor]:
    """Head outputs per crop, from one model call."""
    return list(model(crops).chunk(len(crops)))
