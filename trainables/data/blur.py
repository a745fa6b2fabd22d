"""torchvision's ``GaussianBlur(kernel_size, sigma=(lo, hi))`` on a batch, each image drawing its
own sigma on the device, with no host sync.

Written here rather than taken from kornia: kornia's ``RandomGaussianBlur`` checks that its sigmas
are positive with a ``bool()`` on the tensor (a device-to-host read on a GPU) and builds its range
tensors from Python numbers on every call.

torchvision's kernel, per image: ``exp(-x^2 / (2 sigma^2))`` at ``x = -(k-1)/2 .. (k-1)/2``,
normalised to sum 1, the same in both directions, on the image padded by ``reflect``. Here the 2-D
kernel runs as its two 1-D passes (the same sum, up to float rounding), and one grouped
convolution blurs every image and channel with its own kernel.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_kernels(sigma: torch.Tensor, size: int) -> torch.Tensor:
    """(N, size) normalised 1-D Gaussian kernels, one per sigma of ``sigma`` (N,)."""
    half = (size - 1) * 0.5
    x = torch.linspace(-half, half, size, device=sigma.device, dtype=sigma.dtype)
    pdf = torch.exp(-0.5 * (x / sigma.view(-1, 1)) ** 2)
    return pdf / pdf.sum(1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, size: int) -> torch.Tensor:
    """Each image of ``x`` (N, C, H, W) blurred with its own sigma (N,) and a ``size`` kernel
    (odd, under twice the image's smaller side: ``reflect`` padding needs it)."""
    if size % 2 == 0 or size < 1:
        raise ValueError(f"gaussian blur: kernel size must be odd and positive, got {size}")
    n, c, h, w = x.shape
    kernels = gaussian_kernels(sigma.to(x.dtype), size).repeat_interleave(c, 0)  # (N*C, size)
    pad = size // 2
    y = F.pad(x.reshape(1, n * c, h, w), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, kernels.view(n * c, 1, 1, size), groups=n * c)  # along each row
    y = F.conv2d(y, kernels.view(n * c, 1, size, 1), groups=n * c)  # along each column
    return y.view(n, c, h, w)


def random_gaussian_blur(x: torch.Tensor, p: torch.Tensor | float, size: int,
                         sigma: tuple[float, float] = (0.1, 2.0),
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """``RandomApply([GaussianBlur(size, sigma)], p)`` per image; ``p`` a number or one per image
    (N,). Every image is blurred and the kept ones picked with ``where``: no data-dependent shape."""
    n, dev = x.shape[0], x.device
    draw = torch.rand(n, device=dev, generator=generator)
    sigmas = sigma[0] + (sigma[1] - sigma[0]) * torch.rand(n, device=dev, generator=generator)
    on = (draw < p).view(n, 1, 1, 1)
    return torch.where(on, gaussian_blur(x, sigmas, size), x)
