"""Synthetic degradations for fine-tuning QualiCLIP: ARNIQA's catalogue of 24 types in 7 groups, 5 levels each.

Every type works on a batch ``N x 3 x H x W`` of float images in [0, 1] on any device, with torch ops only (JPEG
and JPEG2000 round-trip through Pillow on the CPU and come back to the input's device). Randomness comes only from
the ``generator`` passed to :func:`degrade`, so a seed reproduces a degradation exactly. Level 1 is the mildest
and level 5 the most severe: the fine-tuning loss ranks levels, so each type is strictly monotone in severity.

Parameters per level 1 -> 5 (ARNIQA's values from its ``utils/distortions.py`` unless marked *ours*):

============================  =======================================  ==========================================
type                          parameter                                values, level 1 -> 5
============================  =======================================  ==========================================
gaussian_blur                 Gaussian sigma (px)                      *0.4*, 0.5, 1, 2, 5
lens_blur                     disk radius (px)                         1, 2, 4, 6, 8
motion_blur                   line length (px), random angle           1, 2, 4, 6, 10
color_diffusion               sigma of the Lab a*, b* blur (px)        1, 3, 6, 8, 12
color_shift                   green-channel shift along edges (px)     1, 3, 6, 8, 12
color_saturation_hsv          HSV saturation factor                    0.4, 0.2, 0.1, 0, -0.4
color_saturation_lab          Lab a*, b* factor                        *1.5*, 2, 3, 6, 9
jpeg2000                      compression ratio                        16, 32, 45, 120, 170
jpeg                          quality                                  43, 36, 24, 7, 4
white_noise                   variance (RGB)                           0.001, 0.002, 0.003, 0.005, 0.01
white_noise_ycbcr             variance (YCbCr)                         0.0001, 0.0005, 0.001, 0.002, 0.003
impulse_noise                 salt-and-pepper density                  0.001, 0.005, 0.01, 0.02, 0.03
multiplicative_noise          speckle variance                         0.001, 0.005, 0.01, 0.02, 0.05
brighten                      tone-curve amount                        0.1, 0.2, 0.4, 0.7, 1.1
darken                        tone-curve amount                        0.05, 0.1, 0.2, 0.4, 0.8
mean_shift                    shift magnitude, random sign             *0.04, 0.08, 0.12, 0.15, 0.2*
jitter                        per-pixel displacement sigma (px)        0.05, 0.1, 0.2, 0.5, 1
non_eccentricity_patch        number of 16 px patches moved            20, 40, 60, 80, 100
pixelate                      strength s, scale 0.95 - s ** 0.6        0.01, 0.05, 0.1, 0.2, 0.5
quantization                  levels per channel                       20, 16, 13, 10, 7
color_block                   number of 32 px solid blocks             2, 4, 6, 8, 10
sharpen                       unsharp-mask amount                      1, 2, 3, 6, 12
contrast_change               *mid-tone slope of the tone curve*       *0.85, 0.7, 0.6, 0.5, 0.4*
nonlinear_contrast            output range 0.5 +- v                    0.4, 0.3, 0.2, 0.1, 0.05
============================  =======================================  ==========================================

Where and why the values or the method differ from ARNIQA's:

* ``mean_shift``: ARNIQA uses 0, 0.08, -0.08, 0.15, -0.15, i.e. level 1 changes nothing and levels 2/3 and 4/5 are
  equally severe. Ours rises in magnitude from a real, mild level 1, with a random sign per image.
* ``contrast_change``: ARNIQA's amounts 0, 0.15, -0.4, 0.3, -0.6 move the knots of a tone curve through
  (0.3, 0.25 - a/4) and (0.7, 0.75 + a/4), so they alternately raise and lower contrast (the identity is a = -0.2).
  Ours only lowers it: a smooth curve through (0, 0), (0.5, 0.5) and (1, 1) whose slope at 0.5 falls with the level;
  like ARNIQA's curve it keeps black and white, unlike ``nonlinear_contrast``. Its level 5 (slope 0.4) is a little
  stronger than ARNIQA's strongest reduction (a = -0.6, slope about 0.5).
* ``gaussian_blur`` level 1: ARNIQA's sigma 0.1 gives off-centre weights of exp(-50), an exact identity in float32.
  Sigma 0.4 is a mild but real blur, between the identity and level 2 (on the test image: PSNR 43 dB, against 36 dB
  for sigma 0.5).
* ``color_saturation_lab`` level 1: ARNIQA's factor 1 is the identity; 1.5 is a mild over-saturation.
* ``color_saturation_hsv`` level 5 keeps ARNIQA's -0.4: beyond grey (level 4) it turns hues to their complements.
* ``color_diffusion``: ARNIQA blurs a*, b* with sigma 1.5 a + 2 and then multiplies them by a, which mixes in the
  over-saturation of ``color_saturation_lab``; ours blurs a*, b* with sigma a and nothing else.
* ``motion_blur``: the kernel is an anti-aliased segment of the given length, so length 1 is a sub-pixel smear
  rather than the identity of MATLAB's ``fspecial('motion', 1)``.
* ``sharpen``: unsharp mask on Lab L* with a Gaussian of sigma 2 px (radius 6); ARNIQA's 13 x 13 kernel has sigma 6,
  i.e. is nearly a box.
* ``quantization``: values map to their bin centres; ARNIQA maps bin indices to [0, 1] by min-max stretching, which
  also changes contrast.
* ``pixelate`` downsamples with antialiased bilinear interpolation rather than nearest neighbour, so that each block
  shows the local average colour instead of aliasing.
* ``color_shift`` shifts the green channel by a random direction of the given length with bilinear sampling (ARNIQA:
  rounded, first-quadrant directions).
"""

from __future__ import annotations

import io
import math
import operator
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from .config import DISTORTION_GROUPS, DISTORTIONS, NUM_LEVELS

__all__ = ["DISTORTIONS", "DISTORTION_GROUPS", "NUM_LEVELS", "degrade", "degradation_grid"]

Tensor = torch.Tensor
Generator = Optional[torch.Generator]

# --------------------------------------------------------------------------------------------- shared helpers

_XYZ_FROM_RGB = torch.tensor(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]],
    dtype=torch.float64,
)
# Dividing by the D65 white (the row sums) makes grey map to X = Y = Z, so a* = b* = 0 exactly.
_XYZ_FROM_RGB = _XYZ_FROM_RGB / _XYZ_FROM_RGB.sum(dim=1, keepdim=True)
_RGB_FROM_XYZ = torch.linalg.inv(_XYZ_FROM_RGB)
_YCBCR_FROM_RGB = torch.tensor(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], dtype=torch.float64
)
_RGB_FROM_YCBCR = torch.linalg.inv(_YCBCR_FROM_RGB)
_YCBCR_OFFSET = (0.0, 0.5, 0.5)
_LAB_DELTA = 6.0 / 29.0


def _apply_matrix(matrix: Tensor, x: Tensor) -> Tensor:
    return torch.einsum("ij,njhw->nihw", matrix.to(x.device, x.dtype), x)


def _rgb_to_lab(x: Tensor) -> Tensor:
    linear = torch.where(x > 0.04045, ((x.clamp(min=0) + 0.055) / 1.055) ** 2.4, x / 12.92)
    xyz = _apply_matrix(_XYZ_FROM_RGB, linear)
    f = torch.where(xyz > _LAB_DELTA**3, xyz.clamp(min=_LAB_DELTA**3) ** (1 / 3), xyz / (3 * _LAB_DELTA**2) + 4 / 29)
    return torch.cat([116 * f[:, 1:2] - 16, 500 * (f[:, 0:1] - f[:, 1:2]), 200 * (f[:, 1:2] - f[:, 2:3])], dim=1)


def _lab_to_rgb(lab: Tensor) -> Tensor:
    fy = (lab[:, 0:1].clamp(0, 100) + 16) / 116
    f = torch.cat([fy + lab[:, 1:2] / 500, fy, fy - lab[:, 2:3] / 200], dim=1)
    xyz = torch.where(f > _LAB_DELTA, f**3, 3 * _LAB_DELTA**2 * (f - 4 / 29))
    # Strong chroma leaves the sRGB gamut; clamping the linear values first keeps the power real.
    linear = _apply_matrix(_RGB_FROM_XYZ, xyz).clamp(0, 1)
    return torch.where(linear > 0.0031308, 1.055 * linear.clamp(min=0.0031308) ** (1 / 2.4) - 0.055, 12.92 * linear)


def _rgb_to_ycbcr(x: Tensor) -> Tensor:
    return _apply_matrix(_YCBCR_FROM_RGB, x) + x.new_tensor(_YCBCR_OFFSET).view(1, 3, 1, 1)


def _ycbcr_to_rgb(x: Tensor) -> Tensor:
    return _apply_matrix(_RGB_FROM_YCBCR, x - x.new_tensor(_YCBCR_OFFSET).view(1, 3, 1, 1))


def _filter2d(x: Tensor, kernel: Tensor) -> Tensor:
    """Filters each channel with an odd-sized kernel, replicating the border so that edges do not darken.

    Args:
        x: ``N x C x H x W``.
        kernel: ``kh x kw`` for all images, or ``N x kh x kw`` for one kernel per image.
    """
    n, c, h, w = x.shape
    kh, kw = kernel.shape[-2:]
    x = F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2), mode="replicate")
    kernel = kernel.to(x.dtype)
    if kernel.dim() == 2:
        return F.conv2d(x, kernel.expand(c, 1, kh, kw), groups=c)
    weight = kernel.repeat_interleave(c, dim=0).unsqueeze(1)
    return F.conv2d(x.reshape(1, n * c, *x.shape[-2:]), weight, groups=n * c).view(n, c, h, w)


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    return _filter2d(_filter2d(x, k[None, :]), k[:, None])


def _sample_displaced(x: Tensor, dx: Tensor, dy: Tensor) -> Tensor:
    """Bilinearly samples ``x`` at each pixel moved by ``(dx, dy)`` px (broadcast to ``N x H x W``), edges repeated."""
    n, _, h, w = x.shape
    xs = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, w)
    ys = torch.arange(h, device=x.device, dtype=x.dtype).view(1, h, 1)
    gx, gy = torch.broadcast_tensors((2 * (xs + dx) + 1) / w - 1, (2 * (ys + dy) + 1) / h - 1)
    grid = torch.stack([gx, gy], dim=-1).expand(n, h, w, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _square_index(top: Tensor, left: Tensor, size: int) -> Tuple[Tensor, slice, Tensor, Tensor]:
    """Index of a ``size x size`` square at ``(top, left)`` in each image; it selects ``N x size x size x C``."""
    offsets = torch.arange(size, device=top.device)
    image = torch.arange(top.shape[0], device=top.device).view(-1, 1, 1)
    return image, slice(None), top.view(-1, 1, 1) + offsets.view(1, -1, 1), left.view(-1, 1, 1) + offsets.view(1, 1, -1)


def _quadratic_curve(x: Tensor, middle: float) -> Tensor:
    # The parabola through (0, 0), (0.5, middle), (1, 1): ARNIQA's 3-knot "curves" spline.
    return ((2 - 4 * middle) * x * x + (4 * middle - 1) * x).clamp(0, 1)


def _pillow_roundtrip(x: Tensor, **save_args) -> Tensor:
    pixels = (x * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    decoded = []
    for array in pixels:
        buffer = io.BytesIO()
        Image.fromarray(array, "RGB").save(buffer, **save_args)
        buffer.seek(0)
        with Image.open(buffer) as img:
            decoded.append(np.asarray(img.convert("RGB")))
    return torch.from_numpy(np.stack(decoded)).to(x.device).permute(0, 3, 1, 2).to(x.dtype) / 255


# Random numbers are always drawn in float32, so that a seed gives the same degradation whatever the input dtype.


def _uniform(x: Tensor, generator: Generator, *shape: int) -> Tensor:
    return torch.rand(*shape, generator=generator, device=x.device).to(x.dtype)


def _normal(x: Tensor, generator: Generator, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=generator, device=x.device).to(x.dtype)


# --------------------------------------------------------------------------------------------- blur


def _gaussian(x: Tensor, sigma: float, generator: Generator) -> Tensor:
    return _gaussian_blur(x, sigma)


def _lens_blur(x: Tensor, radius: float, generator: Generator) -> Tensor:
    # Each tap is the fraction of its pixel inside the disk (8 x 8 supersampling), like MATLAB's fspecial('disk').
    supersample = 8
    r = math.ceil(radius)
    sub = (torch.arange(supersample, device=x.device, dtype=x.dtype) + 0.5) / supersample - 0.5
    pos = (torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)[:, None] + sub[None, :]).reshape(-1)
    inside = (pos[:, None] ** 2 + pos[None, :] ** 2 <= radius**2).to(x.dtype)
    kernel = inside.view(2 * r + 1, supersample, 2 * r + 1, supersample).mean(dim=(1, 3))
    return _filter2d(x, kernel / kernel.sum())


def _motion_blur(x: Tensor, length: float, generator: Generator) -> Tensor:
    # Splatting a finely sampled segment bilinearly gives an anti-aliased kernel for any angle and sub-pixel length.
    n = x.shape[0]
    r = math.ceil(length / 2)
    angle = _uniform(x, generator, n, 1, 1) * math.pi
    t = torch.linspace(-length / 2, length / 2, 8 * math.ceil(length) + 1, device=x.device, dtype=x.dtype)
    grid = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    wx = (1 - (grid - (t[:, None] * torch.cos(angle))).abs()).clamp(min=0)
    wy = (1 - (grid - (t[:, None] * torch.sin(angle))).abs()).clamp(min=0)
    kernel = torch.einsum("ntj,nti->nij", wx, wy)
    return _filter2d(x, kernel / kernel.sum(dim=(1, 2), keepdim=True))


# --------------------------------------------------------------------------------------------- color


def _color_diffusion(x: Tensor, sigma: float, generator: Generator) -> Tensor:
    lab = _rgb_to_lab(x)
    return _lab_to_rgb(torch.cat([lab[:, :1], _gaussian_blur(lab[:, 1:], sigma)], dim=1))


def _color_shift(x: Tensor, amount: float, generator: Generator) -> Tensor:
    # The shifted green shows only where the blurred edge map is strong, as chromatic aberration would.
    n = x.shape[0]
    gray = _apply_matrix(_YCBCR_FROM_RGB[:1], x)
    central = x.new_tensor([[-0.5, 0.0, 0.5]])
    edges = _gaussian_blur(torch.hypot(_filter2d(gray, central), _filter2d(gray, central.T)), 4.0)
    low, high = edges.amin(dim=(1, 2, 3), keepdim=True), edges.amax(dim=(1, 2, 3), keepdim=True)
    weight = (edges - low) / (high - low).clamp(min=1e-12)
    angle = _uniform(x, generator, n, 1, 1) * (2 * math.pi)
    green = x[:, 1:2]
    shifted = _sample_displaced(green, amount * torch.cos(angle), amount * torch.sin(angle))
    return torch.cat([x[:, :1], weight * shifted + (1 - weight) * green, x[:, 2:]], dim=1)


def _color_saturation_hsv(x: Tensor, factor: float, generator: Generator) -> Tensor:
    # With H and V fixed, every channel c is V * (1 - S * g(H)); scaling S by f gives V - f * (V - c) directly,
    # without a round trip through HSV (negative f flips hues to their complements, as in ARNIQA).
    value = x.amax(dim=1, keepdim=True)
    return value - factor * (value - x)


def _color_saturation_lab(x: Tensor, factor: float, generator: Generator) -> Tensor:
    lab = _rgb_to_lab(x)
    return _lab_to_rgb(torch.cat([lab[:, :1], lab[:, 1:] * factor], dim=1))


# --------------------------------------------------------------------------------------------- compression


def _jpeg2000(x: Tensor, ratio: float, generator: Generator) -> Tensor:
    # OpenJPEG needs 2 ** (resolutions - 1) <= the shorter side; ARNIQA's 8 resolutions fit from 128 px up.
    resolutions = max(1, min(8, int(math.log2(min(x.shape[-2:]))) + 1))
    return _pillow_roundtrip(
        x, format="JPEG2000", quality_mode="rates", quality_layers=[float(ratio)], num_resolutions=resolutions
    )


def _jpeg(x: Tensor, quality: float, generator: Generator) -> Tensor:
    return _pillow_roundtrip(x, format="JPEG", quality=int(quality))


# --------------------------------------------------------------------------------------------- noise


def _white_noise(x: Tensor, variance: float, generator: Generator) -> Tensor:
    return x + _normal(x, generator, *x.shape) * math.sqrt(variance)


def _white_noise_ycbcr(x: Tensor, variance: float, generator: Generator) -> Tensor:
    return _ycbcr_to_rgb(_rgb_to_ycbcr(x) + _normal(x, generator, *x.shape) * math.sqrt(variance))


def _impulse_noise(x: Tensor, density: float, generator: Generator) -> Tensor:
    # Each channel value independently: salt with probability density / 2, pepper with density / 2.
    u = _uniform(x, generator, *x.shape)
    return torch.where(u < density / 2, torch.ones_like(x), torch.where(u < density, torch.zeros_like(x), x))


def _multiplicative_noise(x: Tensor, variance: float, generator: Generator) -> Tensor:
    return x + x * _normal(x, generator, *x.shape) * math.sqrt(variance)


# --------------------------------------------------------------------------------------------- brightness


def _brighten(x: Tensor, amount: float, generator: Generator) -> Tensor:
    # As ARNIQA: two parts the curve on RGB, one part the curve on L* alone, which keeps some of the colour.
    middle = 0.5 + amount / 2
    lab = _rgb_to_lab(x)
    lightened = _lab_to_rgb(torch.cat([_quadratic_curve(lab[:, :1] / 100, middle) * 100, lab[:, 1:]], dim=1))
    return (2 * _quadratic_curve(x, middle) + lightened) / 3


def _darken(x: Tensor, amount: float, generator: Generator) -> Tensor:
    return _quadratic_curve(x, 0.5 - amount / 2)


def _mean_shift(x: Tensor, amount: float, generator: Generator) -> Tensor:
    sign = torch.where(_uniform(x, generator, x.shape[0], 1, 1, 1) < 0.5, -1.0, 1.0).to(x.dtype)
    return x + sign * amount


# --------------------------------------------------------------------------------------------- spatial


def _jitter(x: Tensor, sigma: float, generator: Generator) -> Tensor:
    # ARNIQA scatters in 5 passes, so displacements compound and the bilinear resampling softens the image.
    n, _, h, w = x.shape
    for _ in range(5):
        shift = _normal(x, generator, 2, n, h, w) * sigma
        x = _sample_displaced(x, shift[0], shift[1])
    return x


def _non_eccentricity_patch(x: Tensor, count: float, generator: Generator) -> Tensor:
    # Patches are copied one after another (a later one may copy an earlier copy), each at most size / 2 px away.
    n, _, h, w = x.shape
    size = min(16, h // 3, w // 3)
    if size < 1:
        return x
    count = int(count)
    u = _uniform(x, generator, 4, n, count)
    top = (u[0] * (h - 3 * size)).round().long() + size
    left = (u[1] * (w - 3 * size)).round().long() + size
    new_top = top + ((u[2] - 0.5) * size).round().long()
    new_left = left + ((u[3] - 0.5) * size).round().long()
    y = x.clone()
    for i in range(count):
        y[_square_index(new_top[:, i], new_left[:, i], size)] = y[_square_index(top[:, i], left[:, i], size)]
    return y


def _pixelate(x: Tensor, strength: float, generator: Generator) -> Tensor:
    h, w = x.shape[-2:]
    scale = 0.95 - strength**0.6
    small = F.interpolate(x, size=(max(1, int(h * scale)), max(1, int(w * scale))), mode="bilinear", antialias=True)
    return F.interpolate(small, size=(h, w), mode="nearest-exact")


def _quantization(x: Tensor, levels: float, generator: Generator) -> Tensor:
    return ((x * levels).floor().clamp(0, levels - 1) + 0.5) / levels


def _color_block(x: Tensor, count: float, generator: Generator) -> Tensor:
    n, _, h, w = x.shape
    size = min(32, h, w)
    count = int(count)
    u = _uniform(x, generator, n, count, 5)
    top = (u[..., 0] * (h - size + 1)).floor().long().clamp(max=h - size)
    left = (u[..., 1] * (w - size + 1)).floor().long().clamp(max=w - size)
    y = x.clone()
    for i in range(count):
        y[_square_index(top[:, i], left[:, i], size)] = u[:, i, None, None, 2:]
    return y


# --------------------------------------------------------------------------------------------- sharpness & contrast


def _sharpen(x: Tensor, amount: float, generator: Generator) -> Tensor:
    lab = _rgb_to_lab(x)
    lightness = lab[:, :1]
    sharpened = lightness + amount * (lightness - _gaussian_blur(lightness, 2.0))
    return _lab_to_rgb(torch.cat([sharpened, lab[:, 1:]], dim=1))


def _contrast_change(x: Tensor, slope: float, generator: Generator) -> Tensor:
    # Cubic through (0, 0), (0.5, 0.5), (1, 1) with the given slope at 0.5: mid-tones flatten, black and white stay.
    d = x - 0.5
    return 0.5 + slope * d + 4 * (1 - slope) * d**3


def _nonlinear_contrast(x: Tensor, half_range: float, generator: Generator) -> Tensor:
    return 0.5 + (x.clamp(0, 1) - 0.5) * (2 * half_range)


# --------------------------------------------------------------------------------------------- catalogue

_Distortion = Callable[[Tensor, float, Generator], Tensor]

# Each type's function and its parameter at levels 1 -> 5; the groups and the order are config.DISTORTION_GROUPS'.
_IMPLEMENTATIONS: Dict[str, Tuple[_Distortion, Tuple[float, ...]]] = {
    "gaussian_blur": (_gaussian, (0.4, 0.5, 1.0, 2.0, 5.0)),
    "lens_blur": (_lens_blur, (1, 2, 4, 6, 8)),
    "motion_blur": (_motion_blur, (1, 2, 4, 6, 10)),
    "color_diffusion": (_color_diffusion, (1, 3, 6, 8, 12)),
    "color_shift": (_color_shift, (1, 3, 6, 8, 12)),
    "color_saturation_hsv": (_color_saturation_hsv, (0.4, 0.2, 0.1, 0.0, -0.4)),
    "color_saturation_lab": (_color_saturation_lab, (1.5, 2, 3, 6, 9)),
    "jpeg2000": (_jpeg2000, (16, 32, 45, 120, 170)),
    "jpeg": (_jpeg, (43, 36, 24, 7, 4)),
    "white_noise": (_white_noise, (0.001, 0.002, 0.003, 0.005, 0.01)),
    "white_noise_ycbcr": (_white_noise_ycbcr, (0.0001, 0.0005, 0.001, 0.002, 0.003)),
    "impulse_noise": (_impulse_noise, (0.001, 0.005, 0.01, 0.02, 0.03)),
    "multiplicative_noise": (_multiplicative_noise, (0.001, 0.005, 0.01, 0.02, 0.05)),
    "brighten": (_brighten, (0.1, 0.2, 0.4, 0.7, 1.1)),
    "darken": (_darken, (0.05, 0.1, 0.2, 0.4, 0.8)),
    "mean_shift": (_mean_shift, (0.04, 0.08, 0.12, 0.15, 0.2)),
    "jitter": (_jitter, (0.05, 0.1, 0.2, 0.5, 1.0)),
    "non_eccentricity_patch": (_non_eccentricity_patch, (20, 40, 60, 80, 100)),
    "pixelate": (_pixelate, (0.01, 0.05, 0.1, 0.2, 0.5)),
    "quantization": (_quantization, (20, 16, 13, 10, 7)),
    "color_block": (_color_block, (2, 4, 6, 8, 10)),
    "sharpen": (_sharpen, (1, 2, 3, 6, 12)),
    "contrast_change": (_contrast_change, (0.85, 0.7, 0.6, 0.5, 0.4)),
    "nonlinear_contrast": (_nonlinear_contrast, (0.4, 0.3, 0.2, 0.1, 0.05)),
}

_REGISTRY = {name: _IMPLEMENTATIONS[name] for name in DISTORTIONS}


def degrade(images: Tensor, name: str, level: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """Applies one degradation type at one severity level to a batch of images.

    Args:
        images: ``N x 3 x H x W`` floating-point images in [0, 1], on any device; not modified.
        name: One of :data:`DISTORTIONS`.
        level: Severity, 1 (mildest) to :data:`NUM_LEVELS` (most severe).
        generator: Source of all randomness (angles, noise, positions, signs), on the images' device; ``None``
            uses the global RNG. The same generator state gives the same output.

    Returns:
        The degraded images: same shape, dtype and device as ``images``, clipped to [0, 1]. Half-precision inputs
        are processed in float32.

    Raises:
        ValueError: Unknown ``name``, ``level`` outside 1..NUM_LEVELS, ``images`` not ``N x 3 x H x W`` or not of a
            floating-point dtype.
        TypeError: ``images`` is not a tensor.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown degradation {name!r}; expected one of: {', '.join(DISTORTIONS)}")
    try:
        index = operator.index(level)
    except TypeError:
        index = None
    if isinstance(level, bool) or index is None or not 1 <= index <= NUM_LEVELS:
        raise ValueError(f"level must be an integer from 1 to {NUM_LEVELS}, got {level!r}")
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3 or images.shape[2] < 1 or images.shape[3] < 1:
        raise ValueError(f"images must have shape N x 3 x H x W, got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be a floating-point tensor in [0, 1], got dtype {images.dtype}")
    if images.shape[0] == 0:
        return images.clone()
    function, parameters = _REGISTRY[name]
    work = images if images.dtype in (torch.float32, torch.float64) else images.float()
    return function(work, parameters[index - 1], generator).clamp(0, 1).to(images.dtype)


def _square_tile(image: Tensor, tile: int) -> Tensor:
    h, w = image.shape[-2:]
    scale = tile / min(h, w)
    size = (tile, max(tile, round(w * scale))) if h <= w else (max(tile, round(h * scale)), tile)
    resized = F.interpolate(image[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    top, left = (size[0] - tile) // 2, (size[1] - tile) // 2
    return resized[..., top : top + tile, left : left + tile].clamp(0, 1)


def degradation_grid(image: Tensor, names: Sequence[str] = DISTORTIONS, tile: int = 128, seed: int = 0,
                     crop_size: Optional[int] = None) -> Image.Image:
    """Draws every level of the given degradation types on one image, for looking at the catalogue.

    Args:
        image: ``3 x H x W`` float image in [0, 1], on any device.
        names: Degradation types, one row each, top to bottom.
        tile: Side of each square tile as drawn, in pixels.
        seed: Seed of the generator used for every tile, so a row shares e.g. its motion-blur angle.
        crop_size: Side of the square the degradations are applied at (``None``: ``tile``). The image is resized so
            that its shorter side is ``crop_size`` and centre-cropped, then degraded, and only then resized to the
            tile: a degradation looks as it does on a training crop of that size, whatever the tile (many, such as
            JPEG2000 or pixelation, act on blocks of fixed pixel size and look far stronger on a small square).

    Returns:
        An RGB image: a header row with the levels "1".."5", then one row per type labelled at the left with its
        name, one column per level.

    Raises:
        ValueError: ``image`` is not ``3 x H x W`` float, ``tile`` or ``crop_size`` is not positive, or a name is
            unknown.
    """
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be a 3 x H x W tensor, got {getattr(image, 'shape', type(image).__name__)}")
    if not image.is_floating_point():
        raise ValueError(f"image must be a floating-point tensor in [0, 1], got dtype {image.dtype}")
    crop_size = tile if crop_size is None else crop_size
    if tile < 1 or crop_size < 1:
        raise ValueError(f"tile and crop_size must be positive, got {tile} and {crop_size}")
    names = list(names)
    square = _square_tile(image, crop_size)
    # Anchor-free text placement from bounding boxes, so that the bitmap default font of older Pillow works too.
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    boxes = {text: measure.textbbox((0, 0), text, font=font) for text in [*names, *map(str, range(1, NUM_LEVELS + 1))]}
    pad = 4
    text_height = max(box[3] for box in boxes.values())
    label_width = max([boxes[name][2] for name in names], default=0) + 2 * pad
    header = text_height + 2 * pad
    canvas = Image.new("RGB", (label_width + NUM_LEVELS * tile, header + len(names) * tile), "white")
    draw = ImageDraw.Draw(canvas)
    for level in range(1, NUM_LEVELS + 1):
        text_width = boxes[str(level)][2]
        draw.text((label_width + (level - 1) * tile + (tile - text_width) // 2, pad), str(level), "black", font)
    for row, name in enumerate(names):
        top = header + row * tile
        draw.text((pad, top + (tile - boxes[name][3]) // 2), name, "black", font)
        for level in range(1, NUM_LEVELS + 1):
            generator = torch.Generator(device=square.device).manual_seed(seed)
            out = degrade(square, name, level, generator)
            if crop_size != tile:
                out = F.interpolate(out, size=(tile, tile), mode="bilinear", antialias=True, align_corners=False)
            out = out[0].clamp(0, 1)
            pixels = (out * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
            canvas.paste(Image.fromarray(pixels, "RGB"), (label_width + (level - 1) * tile, top))
    return canvas
