"""trainables/data/colour.py: torchvision's colour jitter and grayscale per image, on the device,
without a host sync, as Sel-CL's views, the recipes' color_jitter and DINO's photometric set use them."""
from __future__ import annotations

import pytest
import torch

from trainables.data.colour import colour_jitter, random_grayscale


def test_colour_jitter_is_torchvisions_per_image_in_the_drawn_order():
    import torchvision.transforms.functional as TF

    n = 6
    x = torch.rand(n, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    got = colour_jitter(x, (0.4, 0.4, 0.4, 0.1), 1.0, torch.Generator().manual_seed(3))
    # The same draws, in colour_jitter's order: four factors per image, then the permutation.
    gen = torch.Generator().manual_seed(3)
    b, c, s = (0.6 + 0.8 * torch.rand(n, generator=gen) for _ in range(3))
    h = -0.1 + 0.2 * torch.rand(n, generator=gen)
    order = torch.rand(n, 4, generator=gen).argsort(1)
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for i in range(n):
        img = x[i]
        for op in order[i].tolist():
            img = ops[op](img, [b, c, s, h][op][i].item())
        assert (got[i] - img).abs().max() < 1e-3, (i, (got[i] - img).abs().max())  # HSV round trips differ in float rounding
    grey = random_grayscale(x, 1.0, torch.Generator().manual_seed(0))
    assert torch.allclose(grey, TF.rgb_to_grayscale(x, num_output_channels=3), atol=1e-6)
    assert torch.equal(random_grayscale(x, 0.0, torch.Generator()), x)
    assert torch.equal(colour_jitter(x, (0.4, 0.4, 0.4, 0.1), 0.0, torch.Generator()), x)


def test_a_zero_strength_op_is_skipped_as_torchvision_skips_it():
    import torchvision.transforms.functional as TF

    x = torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    got = colour_jitter(x, (0.0, 0.0, 0.5, 0.0), 1.0, torch.Generator().manual_seed(2))
    gen = torch.Generator().manual_seed(2)
    draws = [torch.rand(3, generator=gen) for _ in range(4)]  # one per op, in colour_jitter's order
    saturation = 0.5 + draws[2]  # uniform in [0.5, 1.5]
    for i in range(3):  # only saturation runs: no hue round trip through HSV
        assert torch.allclose(got[i], TF.adjust_saturation(x[i], saturation[i].item()), atol=1e-6)


@pytest.mark.parametrize("where", ["recipe color_jitter", "dino photometric"])
def test_the_jitter_users_make_no_host_sync(where):
    from trainables.data.policy import Photometric
    from trainables.dino.crops import dino_photometric
    from trainables.runtime.sync_check import SyncCheck

    x = torch.rand(8, 3, 8, 8)
    if where == "recipe color_jitter":
        aug = Photometric((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), color_jitter=0.4)
        run = lambda: aug.apply(x, torch.Generator().manual_seed(0))  # noqa: E731
    else:
        run = lambda: dino_photometric(x, torch.zeros(8), torch.zeros(8), blur=False)  # noqa: E731
    run()  # imports kornia's modules (their constants are no step's work)
    with SyncCheck() as check:
        out = run()
    assert not check.syncs, check.report()
    assert out.shape == x.shape and not torch.equal(out, x)
