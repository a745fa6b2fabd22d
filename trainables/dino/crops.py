"""The ``dino`` family's multi-crop views, made on the device, and the model call over them.

dinopl's augmentations (``CropConfig.augs`` before the crops, ``per_crop_augs`` on each crop) run
batched on the device with per-image randomness: ``hflip`` (p 0.5), ``padcrop`` (a black border of
``padcrop_padding`` px, then a random crop back to the image size, as torchvision's
``RandomCrop(size, padding)``), and ``dino``, DINO's photometric set: flip (p 0.5), colour jitter
(brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1; p 0.8), grayscale (p 0.2), Gaussian blur (9
px kernel, or 2 * size - 1 on crops under 5 px; sigma 0.1-2) and solarisation (threshold 128/255)
with the crop's probabilities: global crop 1 blur 1.0; global crop 2 blur 0.1, solarise 0.2; local
crops blur 0.5 (further global crops alternate between the two global settings). ``dino_choice:
random`` draws the setting per image instead (p 0.4 / 0.4 / 0.2), as dinopl's ``RandomChoice`` does,
and that is also what ``dino`` does in ``augs`` (no crop yet). The data is normalised with the
dataset's mean and std: the ops run on the un-normalised [0, 1] images and the crops are normalised
again, as ``trainables/data/policy.py`` does. Grey images go through the colour ops as three equal
channels.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from trainables.data.blur import random_gaussian_blur
from trainables.data.colour import colour_jitter, random_grayscale
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


# DINO's per-crop settings: (global crop 1, global crop 2, local crops), and dinopl's choice weights
DINO_BLUR_P = (1.0, 0.1, 0.5)
DINO_SOLARIZE_P = (0.0, 0.2, 0.0)
DINO_CHOICE_P = (0.4, 0.4, 0.2)
SOLARIZE_THRESHOLD = 128 / 255  # torchvision's RandomSolarize(threshold=128) on 8-bit images


def random_hflip(x: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    """Each image mirrored with probability ``p``."""
    flip = (torch.rand(x.shape[0], device=x.device) < p).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(-1), x)


def random_padcrop(x: torch.Tensor, padding: int) -> torch.Tensor:
    """Per image: zero border of ``padding`` px (black on [0, 1] images), then a random crop of the
    original size at a uniform offset in [0, 2 * padding] (torchvision's ``RandomCrop(size, padding)``)."""
    if padding == 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    oy = torch.randint(0, 2 * padding + 1, (n, 1), device=x.device)
    ox = torch.randint(0, 2 * padding + 1, (n, 1), device=x.device)
    rows = (oy + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    cols = (ox + torch.arange(w, device=x.device)).view(n, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    chans = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
    return padded[batch, chans, rows, cols]


def dino_settings(n: int, position: int | None, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image (blur probability, solarise probability): the setting at ``position`` (0, 1: the
    global crops, 2: local), or with ``position`` None one drawn per image with ``DINO_CHOICE_P``.
    Built from Python numbers with ``full`` and ``where``: no host-to-device copy of a table."""
    if position is not None:
        return (torch.full((n,), DINO_BLUR_P[position], device=device),
                torch.full((n,), DINO_SOLARIZE_P[position], device=device))
    u = torch.rand(n, device=device)  # setting i where u falls in [sum p_<i, sum p_<=i)
    first, second = u < DINO_CHOICE_P[0], u < DINO_CHOICE_P[0] + DINO_CHOICE_P[1]

    def pick(values: tuple[float, float, float]) -> torch.Tensor:
        return torch.where(first, values[0], torch.where(second, values[1], values[2]))

    return pick(DINO_BLUR_P), pick(DINO_SOLARIZE_P)


def dino_photometric(x: torch.Tensor, blur_p: torch.Tensor, solarize_p: torch.Tensor,
                     blur: bool = True) -> torch.Tensor:
    """DINO's photometric set on [0, 1] images (N, C, H, W), with per-image blur and solarise
    probabilities (N,); ``blur`` False skips the blur (dinopl on images under 64 px)."""
    grey = x.shape[1] == 1
    if grey:  # the colour ops expect RGB; a grey image stays grey through them
        x = x.expand(-1, 3, -1, -1)
    x = random_hflip(x)
    # torchvision's per-image jitter and grayscale, as dinopl applies them (kornia's jitter syncs)
    x = random_grayscale(colour_jitter(x, (0.4, 0.4, 0.2, 0.1), 0.8), 0.2)
    n = x.shape[0]
    if blur:  # torchvision's GaussianBlur(9, (0.1, 2.0)), as dinopl (kornia's checks its sigmas on the host)
        k = min(9, 2 * min(x.shape[-2:]) - 1)  # reflect padding needs a kernel under twice the crop size
        x = random_gaussian_blur(x, blur_p, k, (0.1, 2.0))
    on = (torch.rand(n, device=x.device) < solarize_p).view(-1, 1, 1, 1)
    # torchvision's solarize: values at or above the threshold inverted (kornia's builds its threshold
    # tensor from a Python number on every call, a host-to-device copy)
    x = torch.where(on & (x >= SOLARIZE_THRESHOLD), 1.0 - x, x)
    return x.mean(1, keepdim=True) if grey else x


def apply_augs(x: torch.Tensor, names: list[str], cfg: CropConfig, position: int | None,
               blur: bool) -> torch.Tensor:
    """dinopl's named augmentations, in order, on [0, 1] images; ``position`` as in :func:`dino_settings`."""
    for name in names:
        if name == "hflip":
            x = random_hflip(x)
        elif name == "padcrop":
            x = random_padcrop(x, cfg.padcrop_padding)
        elif name == "dino":
            blur_p, sol_p = dino_settings(x.shape[0], position, x.device)
            x = dino_photometric(x, blur_p, sol_p, blur=blur)
        else:
            raise ValueError(f"unknown augmentation {name!r}")
    return x


def multicrop(x: torch.Tensor, cfg: CropConfig, mean: tuple[float, ...] | None = None,
              std: tuple[float, ...] | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(global crops, local crops) of a batch; ``mean`` and ``std`` (the data's normalisation) are
    needed when ``cfg`` turns dinopl's augmentations on."""
    if cfg.augmented:
        return _augmented_multicrop(x, cfg, mean, std)
    image = x.shape[-1]
    globals_ = [random_resized_crops(x, cfg.global_size or image, cfg.global_scale, cfg.hflip)
                for _ in range(cfg.global_crops)]
    locals_ = [random_resized_crops(x, cfg.local_size or image, cfg.local_scale, cfg.hflip)
               for _ in range(cfg.local_crops)]
    return globals_, locals_


@functools.lru_cache(maxsize=8)
def _stats(mean: tuple[float, ...], std: tuple[float, ...], dtype: torch.dtype,
           device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The data's mean and std as (1, C, 1, 1) tensors on the device, copied there once per trial
    rather than every step (a copy from pageable host memory waits for the GPU stream)."""
    return tuple(torch.tensor(v, dtype=dtype).view(1, -1, 1, 1).to(device) for v in (mean, std))


def _augmented_multicrop(x, cfg, mean, std):
    if mean is None or std is None:
        raise ValueError("crops.augs / per_crop_augs need the data's mean and std")
    m, s = _stats(tuple(mean), tuple(std), x.dtype, x.device)
    image = x.shape[-1]
    blur = image >= cfg.blur_min_size
    unit = apply_augs((x * s + m).clamp(0.0, 1.0), cfg.augs, cfg, None, blur)

    def crop(size, scale, position):
        position = None if cfg.dino_choice == "random" else position
        c = random_resized_crops(unit, size, scale, cfg.hflip)
        return (apply_augs(c, cfg.per_crop_augs, cfg, position, blur) - m) / s

    globals_ = [crop(cfg.global_size or image, cfg.global_scale, i % 2) for i in range(cfg.global_crops)]
    locals_ = [crop(cfg.local_size or image, cfg.local_scale, 2) for _ in range(cfg.local_crops)]
    return globals_, locals_


def forward_crops(model: nn.Module, crops: list[torch.Tensor]) -> list[torch.Tensor]:
    """Head outputs per crop, from one model call."""
    return list(model(crops).chunk(len(crops)))
