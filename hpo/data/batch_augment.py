"""The augmentation ops again, for a whole batch on the GPU, one registry entry each.

``train.augment_on: gpu`` in the study file runs every op that has an entry here on the GPU, on
the batch as it arrives (float in [0, 1], NCHW, before normalisation), instead of image by image
in the loader's worker processes: a heavy preset costs 0.3-0.7 ms of a CPU core per image and op
(BENCHMARKS.md), which a GPU does for a whole batch in a fraction of a training step. Ops
without an entry (CLAHE) stay in the workers and run first. Without a GPU every op stays with
albumentations: on the CPU these float ops cost 1-10 ms per image, albumentations' uint8 ones
0.01-0.7 ms.

Each entry mirrors its albumentations twin in ``hpo.data.augment``: the same strength at a
magnitude (the functions of ``hpo.data.ops``, e.g. ``affine_extent``), the same probability, drawn per image
from the trial's seeded streams.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from hpo.data.ops import (
    AugmentOp,
    affine_extent,
    blur_sigma_range,
    brightness_contrast_limit,
    crop_smallest_area,
    dropout_holes,
    hsv_limits,
    noise_std_range,
)
from hpo.registry import Registry

STREAM = 0xB0A7  # tells the batch ops' streams apart from the trial's others


@dataclass(frozen=True)
class Draws:
    """A trial's random streams for the batch ops: on the device (every parameter, which images)
    and on the host (how many images: a count the host must know without asking the GPU)."""

    device: torch.Generator
    host: np.random.Generator

    @classmethod
    def seeded(cls, device: torch.device, seed: int) -> Draws:
        """Streams of their own, derived from the trial's seed: seeded with the seed itself they
        would repeat the numbers torch's global generator and mixup draw from it."""
        on_device, on_host = np.random.SeedSequence((seed, STREAM)).spawn(2)
        return cls(torch.Generator(device).manual_seed(int(on_device.generate_state(1, np.uint64)[0] >> 1)),
                   np.random.default_rng(on_host))


# (magnitude, p) -> op; an op maps (batch, draws) -> the augmented batch, same shape.
BatchOp = Callable[[torch.Tensor, Draws], torch.Tensor]
# What an op does to the images it is applied to: (those images, device generator) -> them changed.
Change = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
BATCH_OPS: Registry[Callable[[float, float], BatchOp]] = Registry("batch augmentation")


def _uniform(low: float | torch.Tensor, high: float | torch.Tensor, n: int, gen: torch.Generator,
             device: torch.device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen, device=device)


def _with_probability(p: float, change: Change, costly: bool = False) -> BatchOp:
    """The op that applies ``change`` to each image with probability ``p``, without a sync.

    A ``costly`` change (a warp, a colour-space round trip, a blur: 4-14 us per image on an
    H100) is computed only for the images it changes: how many is a binomial draw on the host,
    which ones a permutation on the device. A cheap one (a flip, an affine of the values, a
    mask: 1-6 us) is computed for all and kept where drawn: picking the images out and back
    costs more than it saves (H100, BENCHMARKS.md).
    """

    def subset(x: torch.Tensor, draws: Draws) -> torch.Tensor:
        count = int(draws.host.binomial(len(x), p))
        if count == 0:
            return x
        if count == len(x):
            return change(x, draws.device)
        chosen = torch.randperm(len(x), generator=draws.device, device=x.device)[:count]
        return x.index_copy(0, chosen, change(x.index_select(0, chosen), draws.device))

    def where(x: torch.Tensor, draws: Draws) -> torch.Tensor:
        chosen = torch.rand(len(x), generator=draws.device, device=x.device) < p
        return torch.where(chosen.view(-1, 1, 1, 1), change(x, draws.device), x)

    return subset if costly else where


@BATCH_OPS.register("hflip")
def hflip(magnitude: float, p: float) -> BatchOp:
    return _with_probability(p, lambda x, gen: x.flip(3))


@BATCH_OPS.register("vflip")
def vflip(magnitude: float, p: float) -> BatchOp:
    return _with_probability(p, lambda x, gen: x.flip(2))


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Each image sampled at ``theta`` (N x 2 x 3: output -> input, coordinates in [-1, 1]);
    outside the image is black, as albumentations' constant border."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def affine_theta(m: float, n: int, height: int, width: int, gen: torch.Generator,
                 device: torch.device) -> torch.Tensor:
    """Per image, as A.Affine(translate_percent=±m/2, scale=1±m, rotate=±90m degrees) draws it
    (x and y scaled apart: its keep_ratio is off): theta for _warp, which maps back from the
    output, in [-1, 1] units of each axis (the rotation is made in pixels, then converted)."""
    angle = torch.deg2rad(_uniform(-90 * m, 90 * m, n, gen, device))
    scale = _uniform(1 - m, 1 + m, 2 * n, gen, device).view(n, 2, 1)
    shift = 2 * _uniform(-m / 2, m / 2, 2 * n, gen, device).view(n, 2, 1)  # a share of the side
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Scaled, rotated, then shifted: out = R S in + shift, so in = S^-1 R^-1 (out - shift).
    inverse = torch.stack([torch.stack([cos, sin], 1), torch.stack([-sin, cos], 1)], 1) / scale
    inverse[:, 0, 1] *= height / width  # from pixels to each axis' [-1, 1]
    inverse[:, 1, 0] *= width / height
    return torch.cat([inverse, -(inverse @ shift)], 2)


@BATCH_OPS.register("shift_scale_rotate")
def shift_scale_rotate(magnitude: float, p: float) -> BatchOp:
    m = affine_extent(magnitude)

    def change(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return _warp(x, affine_theta(m, len(x), x.shape[2], x.shape[3], gen, x.device))

    return _with_probability(p, change, costly=True)


TRIES = 10  # RandomResizedCrop's draws before it takes the whole image


@BATCH_OPS.register("random_resized_crop")
def random_resized_crop(magnitude: float, p: float) -> BatchOp:
    smallest = crop_smallest_area(magnitude)

    def change(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, device, (h, w) = len(x), x.device, x.shape[2:]
        # As albumentations: up to 10 draws of an area and an aspect ratio in [3/4, 4/3], the
        # first whose crop fits in the image, else the whole image. All 10 at once, on the device.
        area = _uniform(smallest, 1.0, n * TRIES, gen, device).view(n, TRIES)
        ratio = torch.exp(_uniform(math.log(3 / 4), math.log(4 / 3), n * TRIES, gen, device)).view(n, TRIES)
        widths, heights = (area * ratio * h / w).sqrt(), (area / ratio * w / h).sqrt()  # shares of each side
        fits = (widths <= 1) & (heights <= 1)
        first = fits.int().argmax(1, keepdim=True)
        found = fits.any(1)
        width = torch.where(found, widths.gather(1, first).squeeze(1), 1.0)
        height = torch.where(found, heights.gather(1, first).squeeze(1), 1.0)
        centre_x, centre_y = _uniform(width - 1, 1 - width, n, gen, device), _uniform(height - 1, 1 - height, n, gen, device)
        zero = torch.zeros_like(width)
        theta = torch.stack([torch.stack([width, zero, centre_x], 1), torch.stack([zero, height, centre_y], 1)], 1)
        return _warp(x, theta)

    return _with_probability(p, change, costly=True)


@BATCH_OPS.register("brightness_contrast")
def brightness_contrast(magnitude: float, p: float) -> BatchOp:
    m = brightness_contrast_limit(magnitude)

    def change(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, device = len(x), x.device
        alpha = 1 + _uniform(-m, m, n, gen, device).view(-1, 1, 1, 1)
        beta = _uniform(-m, m, n, gen, device).view(-1, 1, 1, 1)
        return (x * alpha + beta).clamp(0, 1)

    return _with_probability(p, change)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """NCHW RGB in [0, 1] -> hue, saturation, value, each in [0, 1]."""
    value, top = x.max(1)
    spread = value - x.min(1).values
    safe = spread.clamp(min=1e-8)
    r, g, b = x.unbind(1)
    hue = torch.where(top == 0, (g - b) / safe, torch.where(top == 1, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(spread > 0, hue / 6 % 1, torch.zeros_like(hue))
    return torch.stack([hue, spread / value.clamp(min=1e-8), value], 1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    hue, saturation, value = hsv.unbind(1)
    channel = torch.arange(5.0, 0.0, -2.0, device=hsv.device).view(1, 3, 1, 1)  # R, G, B; made there, no copy
    k = (channel + 6 * hue.unsqueeze(1)) % 6
    ramp = torch.minimum(k, 4 - k).clamp(0, 1)
    return value.unsqueeze(1) * (1 - saturation.unsqueeze(1) * ramp)


@BATCH_OPS.register("hue_saturation")
def hue_saturation(magnitude: float, p: float) -> BatchOp:
    hue, saturation, value = hsv_limits(magnitude)  # on uint8: hue of 180 a turn, the others of 255
    hue_limit, sat_limit, val_limit = hue / 180, saturation / 255, value / 255

    def change(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, device = len(x), x.device
        shift = torch.stack([_uniform(-hue_limit, hue_limit, n, gen, device), _uniform(-sat_limit, sat_limit, n, gen, device),
                             _uniform(-val_limit, val_limit, n, gen, device)], 1).view(n, 3, 1, 1)
        before = rgb_to_hsv(x)
        hsv = before + shift
        # Grey stays grey, as in albumentations: no saturation to add where there was none.
        saturation = hsv[:, 1:2].clamp(0, 1).masked_fill(before[:, 1:2] == 0, 0.0)
        hsv = torch.cat([hsv[:, :1] % 1, saturation, hsv[:, 2:].clamp(0, 1)], 1)
        return hsv_to_rgb(hsv)

    return _with_probability(p, change, costly=True)


@BATCH_OPS.register("blur")
def blur(magnitude: float, p: float) -> BatchOp:
    least, most = blur_sigma_range(magnitude)

    def change(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        # One kernel size for the batch, each image's own sigma inside it; the mirrored border
        # needs it under the side (8 px images).
        radius = min(math.ceil(3 * most), h - 1, w - 1)
        sigma = _uniform(least, most, n, gen, x.device).view(n, 1)
        offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
        kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
        kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n * c) x taps
        # Separable, one group per image and channel; borders mirrored, as OpenCV's default.
        flat = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="reflect")
        flat = F.conv2d(flat, kernel.view(n * c, 1, 1, -1), groups=n * c)
        flat = F.conv2d(flat, kernel.view(n * c, 1, -1, 1), groups=n * c)
        return flat.view(n, c, h, w).clamp(0, 1)  # rounding may pass 1

    return _with_probability(p, change, costly=True)


@BATCH_OPS.register("noise")
def noise(magnitude: float, p: float) -> BatchOp:
    low, high = noise_std_range(magnitude)

    def change(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        std = _uniform(low, high, len(x), gen, x.device).view(-1, 1, 1, 1)
        grain = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        return (x + std * grain).clamp(0, 1)

    return _with_probability(p, change)


@BATCH_OPS.register("coarse_dropout")
def coarse_dropout(magnitude: float, p: float) -> BatchOp:
    side, most = dropout_holes(magnitude)

    def change(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        device = x.device
        holes = torch.randint(1, most + 1, (n, 1), generator=gen, device=device)
        used = torch.arange(most, device=device).view(1, most) < holes  # n x most
        size_y = _uniform(side / 2, side, n * most, gen, device).view(n, most)
        size_x = _uniform(side / 2, side, n * most, gen, device).view(n, most)
        top = _uniform(0, 1 - size_y.flatten(), n * most, gen, device).view(n, most)
        left = _uniform(0, 1 - size_x.flatten(), n * most, gen, device).view(n, most)
        rows = ((torch.arange(h, device=device) + 0.5) / h).view(1, 1, h, 1)
        cols = ((torch.arange(w, device=device) + 0.5) / w).view(1, 1, 1, w)
        inside = ((rows >= top[..., None, None]) & (rows < (top + size_y)[..., None, None])
                  & (cols >= left[..., None, None]) & (cols < (left + size_x)[..., None, None]))
        dropped = (inside & used[..., None, None]).any(1, keepdim=True)  # n x 1 x h x w
        return x.masked_fill(dropped, 0.0)

    return _with_probability(p, change)


class BatchAugment:
    """A trial's ops on the device, in order, drawing from its seeded streams."""

    def __init__(self, ops: Sequence[AugmentOp], device: torch.device, seed: int) -> None:
        self.names = [op.name for op in ops]
        self.ops = [BATCH_OPS.get(op.name)(op.magnitude, op.p) for op in ops]
        self.draws = Draws.seeded(device, seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.ops:
            x = op(x, self.draws)
        return x


def split_ops(ops: Sequence[AugmentOp], augment_on: str,
              device: torch.device) -> tuple[tuple[AugmentOp, ...], tuple[AugmentOp, ...]]:
    """(ops for the loader's workers, ops for the GPU): with ``augment_on`` "gpu" and a CUDA
    device, every op that has a batch version here; the rest (CLAHE) stay in the workers."""
    if augment_on != "gpu" or device.type != "cuda":
        return tuple(ops), ()
    return (tuple(op for op in ops if op.name not in BATCH_OPS),
            tuple(op for op in ops if op.name in BATCH_OPS))
