"""torchvision's colour transforms on batches of [0, 1] RGB images, each image drawing its own
factors (and its own order of ops) on the device, with no host sync.

Written here rather than taken from kornia: kornia's ``ColorJitter`` draws the order of its ops on
the host (a ``.tolist()`` and a read per op on every call), which syncs a GPU step, and uses one
order for the whole batch where torchvision's per-sample transform draws one per image.

* :func:`colour_jitter` is ``RandomApply([ColorJitter(b, c, s, h)], p)``: brightness, contrast and
  saturation factors uniform in [1 - v, 1 + v], a hue shift uniform in +-h of the colour circle,
  the ops with a non-zero strength applied in a random order per image; brightness scales,
  contrast blends with the image's mean grey level, saturation with its grey image, each clamped
  to [0, 1] (torchvision's ``adjust_*``); hue through HSV (kornia's ``adjust_hue``, per image).
* :func:`random_grayscale` is ``RandomGrayscale(p)``; :func:`grey` torchvision's ``rgb_to_grayscale``.
"""
from __future__ import annotations

import math

import torch


def grey(x: torch.Tensor) -> torch.Tensor:
    """torchvision's ``rgb_to_grayscale`` (weights as Python numbers: no tensor to copy to the device)."""
    return 0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def colour_jitter(x: torch.Tensor, strength: tuple[float, float, float, float], p: float = 1.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """``RandomApply([ColorJitter(*strength)], p)`` per image of RGB ``x`` (N, 3, H, W) in [0, 1];
    draws from ``generator`` (on ``x``'s device), or torch's global generator when None."""
    from kornia.enhance import adjust_hue

    n, dev = x.shape[0], x.device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return (lo + (hi - lo) * torch.rand(n, device=dev, generator=generator)).view(n, 1, 1, 1)

    b, c, s, h = strength
    factors = (uniform(1 - b, 1 + b), uniform(1 - c, 1 + c), uniform(1 - s, 1 + s), uniform(-h, h))
    ops = (
        lambda img, f: (img * f).clamp(0, 1),
        lambda img, f: (f * img + (1 - f) * grey(img).mean((2, 3), keepdim=True)).clamp(0, 1),
        lambda img, f: (f * img + (1 - f) * grey(img)).clamp(0, 1),
        lambda img, f: adjust_hue(img, f.view(-1) * 2 * math.pi),
    )
    active = [i for i, v in enumerate(strength) if v > 0]  # torchvision skips an op of strength 0
    order = torch.rand(n, 4, device=dev, generator=generator).argsort(1)  # a random permutation per image
    out = x
    for position in range(4):
        which = order[:, position].view(n, 1, 1, 1)
        step = out
        for i in active:
            step = torch.where(which == i, ops[i](out, factors[i]), step)
        out = step
    if p >= 1.0:
        return out
    applied = (torch.rand(n, device=dev, generator=generator) < p).view(n, 1, 1, 1)
    return torch.where(applied, out, x)


def random_grayscale(x: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``RandomGrayscale(p)`` per image of RGB ``x``: the grey level in all three channels."""
    on = (torch.rand(x.shape[0], device=x.device, generator=generator) < p).view(-1, 1, 1, 1)
    return torch.where(on, grey(x).expand_as(x), x)
