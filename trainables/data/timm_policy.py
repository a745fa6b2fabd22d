"""timm's AutoAugment and RandAugment, from their config strings (``rand-m9-mstd0.5-inc1``,
``original-mstd0.5``), applied per image to a batch on the device.

The authors' recipes name these strings (timm's ``create_transform(auto_augment=...)``), and timm
applies them to one PIL image at a time: each image draws its own ops, whether each applies, its
magnitude noise and its sign. This module keeps exactly that, batched: the policy itself (which
ops, their probabilities, magnitudes, magnitude noise and bounds) is read from the transform
timm builds from the string, so the config grammar and the policy tables are timm's; what is
written here is the batched form of the ops on 0-255 images and of the level-to-argument maps
(each equal to timm's on every magnitude, ``tests/test_timm_policy.py``). Each stage computes the
ops of its table for the whole batch and keeps, per image, the one that image drew (``torch.where``,
no host sync): the ops that are lookup tables build one table per image and read the batch through
it once, the affine ops share one resampling with a per-image matrix, Color and Sharpness take a
pass each.

Images stay on timm's 0-255 integer grid from op to op, as PIL's uint8 images do. The affine ops
resample as PIL's bilinear or bicubic transforms (the interpolation the recipe names, or either at
random per image and op as timm picks when none is named).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_DENOM = 10.0  # timm's _LEVEL_DENOM: magnitudes run over [0, 10]

# timm's op names this module runs, by kind. Others (timm's '3a' policy: Desaturate, GaussianBlur)
# are refused when the string is parsed.
_GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY", "TranslateXRel", "TranslateYRel")
_PHOTOMETRIC = ("AutoContrast", "Equalize", "Invert", "Posterize", "PosterizeIncreasing", "PosterizeOriginal",
                "Solarize", "SolarizeIncreasing", "SolarizeAdd", "Color", "ColorIncreasing", "Contrast",
                "ContrastIncreasing", "Brightness", "BrightnessIncreasing", "Sharpness", "SharpnessIncreasing")
SUPPORTED_OPS = _GEOMETRIC + _PHOTOMETRIC
TIMM_AA_POLICIES = ("v0", "v0r", "original", "originalr")
INTERPOLATIONS = ("bilinear", "bicubic", "random")  # the affine ops' resampling (timm's train interpolation)


def is_timm_config(name: str) -> bool:
    """A timm RandAugment (``rand-...``) or AutoAugment (``original...``, ``v0...``) config string."""
    head = name.split("-")[0]
    return head == "rand" or head in TIMM_AA_POLICIES


@dataclass(frozen=True)
class _Table:
    """The candidate ops of one stage: what an image may draw, with timm's per-op settings."""
    names: tuple[str, ...]
    prob: tuple[float, ...]
    magnitude: tuple[float, ...]
    magnitude_std: tuple[float, ...]
    magnitude_max: tuple[float, ...]


def _table(ops) -> _Table:
    return _Table(tuple(o.name for o in ops), tuple(float(o.prob) for o in ops),
                  tuple(float(o.magnitude) for o in ops), tuple(float(o.magnitude_std) for o in ops),
                  tuple(float(o.magnitude_max or _DENOM) for o in ops))


class TimmPolicy:
    """``policy(x)`` maps a batch of [0, 1] RGB images (B, 3, H, W) to its augmented batch, each image
    drawing its ops as timm draws them for one image.

    ``mean`` is the dataset's normalisation mean: timm fills the area an affine op uncovers with it
    (``img_mean``), and sets the absolute translation to 45 % of the image's shorter side
    (``translate_const``), as its ``create_transform`` does. ``interpolation`` is the affine ops'
    resampling, as ``create_transform(interpolation=...)`` sets it: ``bilinear``, ``bicubic``, or
    ``random`` (either, drawn per image and op: timm's choice when none is set)."""

    def __init__(self, config: str, mean: tuple[float, ...] = (0.5, 0.5, 0.5), interpolation: str = "bilinear"):
        from timm.data.auto_augment import auto_augment_transform, rand_augment_transform

        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {interpolation!r}; accepted: {', '.join(INTERPOLATIONS)}")
        self.config, self.interpolation = config, interpolation
        self.fill = tuple(min(255, round(255 * m)) for m in (tuple(mean) * 3)[:3])
        try:
            if config.split("-")[0] == "rand":
                t = rand_augment_transform(config, {})
                self.kind, self.layers = "rand", t.num_layers
                self.weights = None if t.choice_weights is None else tuple(float(w) for w in t.choice_weights)
                self.stages = [_table(t.ops)]
            else:
                t = auto_augment_transform(config, {})
                self.kind = "auto"
                if len({len(s) for s in t.policy}) != 1:
                    raise ValueError("sub-policies of different lengths")
                self.stages = [_table([s[i] for s in t.policy]) for i in range(len(t.policy[0]))]
        except (AssertionError, ValueError, KeyError) as exc:
            raise ValueError(f"not a timm auto-augment config ({exc or 'unknown section'}); accepted: "
                             f"rand-m9-mstd0.5-inc1 style (m, n, p, mstd, mmax, inc, t) or "
                             f"{' / '.join(TIMM_AA_POLICIES)} with an optional -mstdX") from None
        unknown = sorted({n for s in self.stages for n in s.names} - set(SUPPORTED_OPS))
        if unknown:
            raise ValueError(f"timm ops {', '.join(unknown)} are not run on the device here; supported: "
                             f"{', '.join(SUPPORTED_OPS)}")
        self._consts: dict = {}  # per (stage, device): the table's values as tensors, made once

    # -- drawing ----------------------------------------------------------------------------------

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        v = (x.float() * 255.0).round_().clamp_(0.0, 255.0)  # timm's ops see uint8 images
        n = x.shape[0]
        if self.kind == "rand":
            (table,) = self.stages
            for choice in self._rand_choices(n, len(table.names), x.device, generator):
                v = self._stage(v, table, choice, generator)
        else:
            sub = torch.randint(len(self.stages[0].names), (n,), device=x.device, generator=generator)
            for table in self.stages:
                v = self._stage(v, table, sub, generator)
        return (v / 255.0).to(x.dtype)

    def _rand_choices(self, n: int, k: int, device, generator) -> list[torch.Tensor]:
        """Each layer's op per image: uniform with replacement, or, with timm's weighted op sets,
        without replacement in proportion to the weights (the Gumbel top-k draw, which picks as
        numpy's sequential weighted choice does)."""
        if self.weights is None:
            return [torch.randint(k, (n,), device=device, generator=generator) for _ in range(self.layers)]
        key = ("weights", device)
        if key not in self._consts:  # once per device, as _const
            self._consts[key] = torch.tensor(self.weights, dtype=torch.float32).log().to(device)
        logw = self._consts[key]
        u = torch.rand(n, k, device=device, generator=generator).clamp_(1e-12, 1.0)
        order = (logw - (-u.log()).log()).topk(self.layers, dim=1).indices
        return list(order.unbind(1))

    def _const(self, table: _Table, device) -> dict[str, torch.Tensor]:
        key = (id(table), device)
        if key not in self._consts:  # once per device: a tensor from a list is a host-to-device copy
            distinct = list(dict.fromkeys(table.names))
            values = {f: getattr(table, f) for f in ("prob", "magnitude", "magnitude_std", "magnitude_max")}
            values["op"] = tuple(float(distinct.index(n)) for n in table.names)
            values["fill"] = self.fill
            self._consts[key] = {f: torch.tensor(v, dtype=torch.float32).to(device) for f, v in values.items()}
        return self._consts[key]

    def _stage(self, v: torch.Tensor, table: _Table, choice: torch.Tensor, generator) -> torch.Tensor:
        """One op per image, ``choice`` indexing ``table``: applied with its probability, at its
        magnitude plus timm's noise, clipped to [0, its bound]."""
        n, dev = v.shape[0], v.device
        const = self._const(table, dev)
        c = {k: const[k][choice] for k in ("prob", "magnitude", "magnitude_std", "magnitude_max", "op")}
        translate_const = int(min(v.shape[2:]) * 0.45)  # timm's create_transform: 45 % of the shorter side
        applied = torch.rand(n, device=dev, generator=generator) <= c["prob"]
        noise = torch.randn(n, device=dev, generator=generator)
        uniform = torch.rand(n, device=dev, generator=generator)
        std = c["magnitude_std"]  # inf: timm's uniform draw over [0, magnitude] instead of a Gaussian
        m = torch.where(torch.isinf(std), uniform * c["magnitude"], c["magnitude"] + std.nan_to_num(posinf=0.0) * noise)
        m = torch.minimum(m.clamp(min=0.0), c["magnitude_max"])
        sign = torch.where(torch.rand(n, device=dev, generator=generator) > 0.5, -1.0, 1.0)
        # Every image's op, from one of three passes over the batch: a lookup table (the identity for
        # images whose op is not one, or that skip their op), the affine resampling, or its own
        # pixel op (Color, Sharpness).
        names = list(dict.fromkeys(table.names))
        lut = torch.arange(256, device=dev, dtype=v.dtype).expand(n, v.shape[1], 256)
        affine = torch.eye(3, device=dev).expand(n, 3, 3)
        geometric = torch.zeros(n, dtype=torch.bool, device=dev)
        pixel_ops = []
        for j, name in enumerate(names):  # each op once, in table order
            mine = applied & (c["op"] == j)
            arg = level_arg(name, m, sign, translate_const)
            if is_lut_op(name):
                lut = torch.where(mine.view(n, 1, 1), lut_of(name, v, arg), lut)
            elif name in _GEOMETRIC:
                affine = torch.where(mine.view(n, 1, 1), affine_of(name, arg, v.shape), affine)
                geometric = geometric | mine
            else:
                pixel_ops.append((mine, name, arg))
        out = apply_lut(v, lut) if any(is_lut_op(name) for name in names) else v
        if any(name in _GEOMETRIC for name in names):
            out = torch.where(geometric.view(n, 1, 1, 1), self._warp(v, affine, const["fill"], generator), out)
        for mine, name, arg in pixel_ops:
            out = torch.where(mine.view(n, 1, 1, 1), photometric(name, v, arg), out)
        return out

    def _warp(self, v: torch.Tensor, affine: torch.Tensor, fill: torch.Tensor, generator) -> torch.Tensor:
        """The affine ops' resampling; ``random`` resamples the batch both ways and keeps each
        image's draw (two passes, no host sync)."""
        if self.interpolation != "random":
            return warp(v, affine, fill, self.interpolation)
        cubic = torch.rand(v.shape[0], device=v.device, generator=generator) < 0.5
        return torch.where(cubic.view(-1, 1, 1, 1), warp(v, affine, fill, "bicubic"), warp(v, affine, fill, "bilinear"))


# -- timm's level-to-argument maps, per image ------------------------------------------------------

def level_arg(name: str, m: torch.Tensor, sign: torch.Tensor, translate_const: int = 250) -> torch.Tensor:
    """timm's ``LEVEL_TO_ARG[name](m)`` for a tensor of magnitudes; ``sign`` (+-1 per image) plays
    ``_randomly_negate``. ``TranslateXRel`` gives a fraction of the image (timm's translate_pct
    0.45 at magnitude 10), ``TranslateX`` pixels (``translate_const`` at magnitude 10)."""
    level = m / _DENOM
    if name == "Rotate":
        return level * 30.0 * sign
    if name in ("ShearX", "ShearY"):
        return level * 0.3 * sign
    if name in ("TranslateXRel", "TranslateYRel"):
        return level * 0.45 * sign
    if name in ("TranslateX", "TranslateY"):
        return level * float(translate_const) * sign
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return level * 1.8 + 0.1
    if name.endswith("Increasing") and name[:-len("Increasing")] in ("Color", "Contrast", "Brightness", "Sharpness"):
        return (1.0 + sign * level * 0.9).clamp(min=0.1)
    if name == "Posterize":
        return torch.floor(level * 4.0)
    if name == "PosterizeIncreasing":
        return 4.0 - torch.floor(level * 4.0)
    if name == "PosterizeOriginal":
        return torch.floor(level * 4.0) + 4.0
    if name == "Solarize":
        return torch.floor(level * 256.0).clamp(max=256.0)
    if name == "SolarizeIncreasing":
        return 256.0 - torch.floor(level * 256.0).clamp(max=256.0)
    if name == "SolarizeAdd":
        return torch.floor(level * 110.0).clamp(max=128.0)
    return torch.zeros_like(m)  # AutoContrast, Equalize, Invert take no argument


# -- the ops on 0-255 images (float, integer-valued), one argument per image ------------------------

def _blend(degenerate: torch.Tensor, v: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ``Image.blend(degenerate, image, factor)`` on uint8: clipped and truncated."""
    f = factor.view(-1, 1, 1, 1)
    return (degenerate + f * (v - degenerate)).clamp(0.0, 255.0).floor()


def _grey(v: torch.Tensor) -> torch.Tensor:
    """PIL's RGB -> L conversion (ITU-R 601-2 luma, its fixed-point rounding), (B, 1, H, W)."""
    r, g, b = v.unbind(1)
    return torch.floor((r * 19595 + g * 38470 + b * 7471 + 32768) / 65536).unsqueeze(1)


# Ops that map each level of a channel to a level: a lookup table per image and channel. A stage
# builds the table of each image's op on 256 entries and reads every pixel through it once, so all
# of them together cost one pass over the batch (Brightness and Contrast blend with a constant, so
# they are tables too).
_LUT_BASES = ("Invert", "Solarize", "SolarizeAdd", "Posterize", "Brightness", "Contrast", "AutoContrast", "Equalize")


def _base(name: str) -> str:
    return name.removesuffix("Increasing").removesuffix("Original")


def is_lut_op(name: str) -> bool:
    return _base(name) in _LUT_BASES


def lut_of(name: str, v: torch.Tensor, arg: torch.Tensor) -> torch.Tensor:
    """Op ``name``'s lookup table for each image and channel of ``v``, (B, C, 256): PIL's own table
    for the point ops, and the blend of Brightness and Contrast with their constant image."""
    n, c = v.shape[:2]
    i = torch.arange(256, device=v.device, dtype=v.dtype).expand(n, c, 256)
    a = arg.view(-1, 1, 1).to(v.dtype)
    base = _base(name)
    if base == "Invert":
        return 255.0 - i
    if base == "Solarize":
        return torch.where(i < a, i, 255.0 - i)
    if base == "SolarizeAdd":
        return torch.where(i < 128.0, (i + a).clamp(max=255.0), i)
    if base == "Posterize":
        step = torch.exp2((8.0 - a).clamp(min=0.0))  # bits_to_keep >= 8 keeps the image (step 1)
        return torch.floor(i / step) * step
    if base == "Brightness":  # blend with black
        return (a * i).clamp(0.0, 255.0).floor()
    if base == "Contrast":  # blend with the image's mean grey level, rounded as PIL rounds it
        mean = torch.floor(_grey(v).mean((1, 2, 3)) + 0.5).view(-1, 1, 1)
        return (mean + a * (i - mean)).clamp(0.0, 255.0).floor()
    if base == "AutoContrast":
        return _autocontrast_lut(v)
    if base == "Equalize":
        return _equalize_lut(v)
    raise ValueError(f"not a lookup-table timm op: {name}")


def apply_lut(v: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Every pixel of ``v`` (integer levels) through its image and channel's table."""
    n, c, h, w = v.shape
    return lut.gather(2, v.reshape(n, c, h * w).long()).view(n, c, h, w)


def photometric(name: str, v: torch.Tensor, arg: torch.Tensor) -> torch.Tensor:
    """Op ``name`` on each image of ``v`` (0-255 levels) with its own argument."""
    if is_lut_op(name):
        return apply_lut(v, lut_of(name, v, arg))
    base = _base(name)
    if base == "Color":
        return _blend(_grey(v).expand_as(v), v, arg)
    if base == "Sharpness":
        return _blend(_smooth(v), v, arg)
    raise ValueError(f"not a photometric timm op: {name}")


def _smooth(v: torch.Tensor) -> torch.Tensor:
    """PIL's ``ImageFilter.SMOOTH`` (3 x 3, centre 5, the rest 1, over 13), rounded; the one-pixel
    border keeps its values, as PIL's 3 x 3 filters leave it."""
    rows = v[..., :-2] + v[..., 1:-1] + v[..., 2:]  # 3 x 3 sums, separably: exact on integer levels
    box = rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]
    inner = torch.floor((box + 4.0 * v[:, :, 1:-1, 1:-1]) / 13.0 + 0.5)
    out = v.clone()
    out[:, :, 1:-1, 1:-1] = inner
    return out


def _autocontrast_lut(v: torch.Tensor) -> torch.Tensor:
    """``ImageOps.autocontrast`` (no cutoff): each channel's [min, max] stretched to [0, 255], its
    table computed in double precision and truncated as PIL's; a flat channel is left alone."""
    i = torch.arange(256, device=v.device, dtype=torch.float64)
    lo = v.amin((2, 3)).double().unsqueeze(-1)
    hi = v.amax((2, 3)).double().unsqueeze(-1)
    flat = hi <= lo
    scale = 255.0 / torch.where(flat, torch.ones_like(hi), hi - lo)
    return torch.where(flat, i, torch.trunc(i * scale + (-lo * scale)).clamp(0.0, 255.0)).to(v.dtype)


def _equalize_lut(v: torch.Tensor) -> torch.Tensor:
    """``ImageOps.equalize``, per image and channel: the table PIL builds from the histogram
    (``step`` = pixels outside the top level, over 255; level i maps to (step // 2 + pixels below i)
    // step); a channel with ``step`` 0 is left alone."""
    n, c, h, w = v.shape
    levels = v.reshape(n, c, h * w).long()
    hist = torch.zeros(n, c, 256, dtype=torch.long, device=v.device).scatter_add_(2, levels, torch.ones_like(levels))
    top = levels.amax(2, keepdim=True)
    step = (h * w - hist.gather(2, top)) // 255
    below = hist.cumsum(2) - hist
    lut = ((step // 2 + below) // step.clamp(min=1)).clamp(max=255)
    identity = torch.arange(256, device=v.device).expand(n, c, 256)
    return torch.where(step > 0, lut, identity).to(v.dtype)


# -- the affine ops ----------------------------------------------------------------------------------

def affine_of(name: str, arg: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The (B, 3, 3) matrix PIL's ``Image.transform(AFFINE, ...)`` (or ``rotate``) applies for op
    ``name``: an output point (x, y), in pixel units from the image's top-left corner, reads the
    input at matrix @ (x, y, 1)."""
    n, _, h, w = shape
    one, zero = torch.ones_like(arg), torch.zeros_like(arg)
    if name == "ShearX":
        rows = (one, arg, zero, zero, one, zero)
    elif name == "ShearY":
        rows = (one, zero, zero, arg, one, zero)
    elif name in ("TranslateXRel", "TranslateX"):  # Rel: a fraction of the width; else pixels
        rows = (one, zero, arg * w if name.endswith("Rel") else arg, zero, one, zero)
    elif name in ("TranslateYRel", "TranslateY"):
        rows = (one, zero, zero, zero, one, arg * h if name.endswith("Rel") else arg)
    elif name == "Rotate":  # PIL's rotate: angle -degrees about the centre (w / 2, h / 2)
        a = -arg * (math.pi / 180.0)
        cos, sin = torch.cos(a), torch.sin(a)
        cx, cy = w / 2.0, h / 2.0
        rows = (cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy)
    else:
        raise ValueError(f"not a geometric timm op: {name}")
    return torch.stack([*rows, zero, zero, one], 1).view(n, 3, 3)


def warp(v: torch.Tensor, matrix: torch.Tensor, fill: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Each image resampled at its matrix's points as PIL's affine transform does: a point inside
    the image interpolates its neighbours (the edge pixels repeated past the last centre), a point
    outside takes ``fill`` (0-255 per channel); truncated to integer levels as PIL's uint8 result.
    ``mode``: ``bilinear``, or PIL's ``bicubic`` (its transforms' cubic is the a = -1 one)."""
    n, c, h, w = v.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=v.device, dtype=v.dtype) + 0.5,
                            torch.arange(w, device=v.device, dtype=v.dtype) + 0.5, indexing="ij")
    points = torch.stack([xs, ys, torch.ones_like(xs)], -1).view(1, h * w, 3)
    src = (points @ matrix.transpose(1, 2).to(v.dtype)).view(n, h, w, 3)  # pixels from the corner
    sx, sy = src[..., 0], src[..., 1]
    if mode == "bicubic":
        sampled = _bicubic(v, sx, sy)
    else:  # torch's bilinear with clamped edges is PIL's, to float rounding
        grid = torch.stack([sx * (2.0 / w) - 1.0, sy * (2.0 / h) - 1.0], -1)
        sampled = F.grid_sample(v, grid, mode="bilinear", padding_mode="border", align_corners=False)
    inside = ((sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)).unsqueeze(1)
    colour = fill[:c].view(1, c, 1, 1) if c <= fill.numel() else fill[:1].view(1, 1, 1, 1)
    # a small lift before truncating: float error must not drop an exact level by one
    return torch.where(inside, torch.floor(sampled + 1e-3).clamp(0.0, 255.0), colour)


def _cubic_weights(d: torch.Tensor) -> list[torch.Tensor]:
    """PIL's transform cubic through 4 taps at offsets -1, 0, 1, 2 (value p1 + d (p2 + d (p3 + d p4))
    with p1 = v2, p2 = v3 - v1, p3 = 2 (v1 - v2) + v3 - v4, p4 = v2 - v1 + v4 - v3), as weights."""
    d2, d3 = d * d, d * d * d
    return [-d + 2 * d2 - d3, 1 - 2 * d2 + d3, d + d2 - d3, d3 - d2]


def _bicubic(v: torch.Tensor, sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    """``v`` read at the points (sx, sy) (pixels from the corner) with PIL's bicubic: 4 x 4 taps
    around each point, indices clamped to the image as PIL clamps them; tap by tap, so no
    (..., 16) temporary."""
    n, c, h, w = v.shape
    x, y = sx - 0.5, sy - 0.5
    x0, y0 = torch.floor(x), torch.floor(y)
    wx, wy = _cubic_weights((x - x0).unsqueeze(1)), _cubic_weights((y - y0).unsqueeze(1))
    flat = v.reshape(n, c, h * w)
    cols = [(x0 + (j - 1)).clamp(0, w - 1).long() for j in range(4)]
    out = torch.zeros_like(v)
    for i in range(4):
        row = (y0 + (i - 1)).clamp(0, h - 1).long() * w
        taps = [flat.gather(2, (row + col).view(n, 1, -1).expand(n, c, -1)).view(n, c, h, w) for col in cols]
        out = out + wy[i] * sum(wx[j] * taps[j] for j in range(4))
    return out
