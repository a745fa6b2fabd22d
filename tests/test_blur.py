"""trainables/data/blur.py: torchvision's GaussianBlur per image, on the device, with no host sync,
as DINO's photometric set (dinopl's ``GaussianBlur(kernel_size=9, sigma=(0.1, 2.0))``) uses it."""
from __future__ import annotations

import math

import pytest
import torch

from trainables.data.blur import gaussian_blur, gaussian_kernels, random_gaussian_blur


def test_the_kernel_is_the_normalised_gaussian_at_integer_offsets():
    k = gaussian_kernels(torch.tensor([0.5, 2.0]), 5)
    for row, sigma in zip(k, (0.5, 2.0)):
        pdf = [math.exp(-x * x / (2 * sigma * sigma)) for x in (-2, -1, 0, 1, 2)]
        want = torch.tensor([v / sum(pdf) for v in pdf])
        assert torch.allclose(row, want, atol=1e-7)


@pytest.mark.parametrize("size,hw", [(9, (12, 10)), (3, (2, 2)), (7, (4, 5))])
def test_each_image_is_torchvisions_blur_with_its_own_sigma(size, hw):
    import torchvision.transforms.functional as TF

    x = torch.rand(4, 3, *hw, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.1, 0.7, 1.3, 2.0])
    got = gaussian_blur(x, sigma, size)
    for i in range(4):
        want = TF.gaussian_blur(x[i], [size, size], [sigma[i].item()] * 2)
        assert torch.allclose(got[i], want, atol=1e-6), (i, (got[i] - want).abs().max())


def test_random_blur_draws_apply_and_sigma_per_image():
    x = torch.rand(6, 3, 10, 10, generator=torch.Generator().manual_seed(1))
    p = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    got = random_gaussian_blur(x, p, 9, (0.1, 2.0), torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    torch.rand(6, generator=gen)  # the apply draw comes first, then the sigmas
    sigma = 0.1 + 1.9 * torch.rand(6, generator=gen)
    for i in range(6):
        want = gaussian_blur(x[i:i + 1], sigma[i:i + 1], 9)[0] if p[i] else x[i]
        assert torch.allclose(got[i], want, atol=1e-6)
    assert torch.equal(random_gaussian_blur(x, 0.0, 9), x)


def test_an_even_kernel_is_refused():
    with pytest.raises(ValueError, match="odd"):
        gaussian_blur(torch.rand(1, 3, 8, 8), torch.ones(1), 4)


def test_the_blur_and_dinos_settings_make_no_host_sync():
    from trainables.dino.crops import dino_photometric, dino_settings
    from trainables.runtime.sync_check import SyncCheck

    x = torch.rand(8, 3, 8, 8)
    dino_photometric(x, *dino_settings(8, None, x.device))  # imports kornia's hue module first
    with SyncCheck() as check:
        for position in (None, 0, 1, 2):
            dino_photometric(x, *dino_settings(8, position, x.device))
    assert not check.syncs, check.report()
