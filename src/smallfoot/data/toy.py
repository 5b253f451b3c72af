"""The thesis' toy problems (ch. 5 and 7) as registered datasets: sine, two spirals, checkerboard.

Every set is generated in memory from a fixed generator per split (train and test are
different draws of the same distribution); the run ``seed`` only picks the ``limit`` subset,
as for the image sets. Inputs are float32 ``(N, D)`` in ``[-1, 1]``.
"""

from __future__ import annotations

import math

import torch

from smallfoot.data.datasets import ArrayDataset, _limit, register_dataset
from smallfoot.errors import ConfigError

_SPLIT_SEED = {"train": 0, "test": 1}


def _generator(split: str) -> torch.Generator:
    return torch.Generator().manual_seed(_SPLIT_SEED[split])


def _check_size(name: str, size: int) -> int:
    if int(size) < 2:
        raise ConfigError(f"{name}: size must be at least 2, got {size}")
    return int(size)


@register_dataset(
    "sine",
    "regression y = sin(2 pi x), two periods on x in [-1, 1], 5,000 points (thesis 7.5)",
    locate=lambda root: "generated in memory",
)
def sine(split, root, size=5000, noise=0.0, limit=None, seed=0, **_image_options):
    """``x ~ U(-1, 1)`` ``(N, 1)``, float target ``sin(2 pi x) + noise * N(0, 1)`` ``(N, 1)``;
    ``num_classes`` is 0 (regression)."""
    size = _check_size("sine", size)
    gen = _generator(split)
    x = torch.rand(size, 1, generator=gen) * 2 - 1
    y = torch.sin(2 * math.pi * x) + noise * torch.randn(size, 1, generator=gen)
    return _limit(ArrayDataset(x, y, 0, "sine"), limit, seed)


@register_dataset(
    "two-spirals",
    "two interleaved spirals (Wieland), 2 classes, 5,000 points in [-1, 1]^2 (thesis 7.6)",
    locate=lambda root: "generated in memory",
)
def two_spirals(split, root, size=5000, turns=780 / 360, noise=0.0, limit=None, seed=0, **_options):
    """Class 0 at ``r (cos t, sin t)``, class 1 at the point reflection, ``t ~ sqrt(U)`` times
    ``turns`` revolutions (default 780 degrees as in the classic generator; the thesis does not
    give its count, and the difficulty depends strongly on it: ``--data-opt turns=1``),
    ``r = t / t_max``; inputs ``(N, 2)``, labels ``(N,)``."""
    size = _check_size("two-spirals", size)
    if not float(turns) > 0:
        raise ConfigError(f"two-spirals: turns must be positive, got {turns} (e.g. turns=1)")
    gen = _generator(split)
    labels = torch.arange(size) % 2
    t_max = 2 * math.pi * turns
    t = torch.sqrt(torch.rand(size, generator=gen)) * t_max
    r = t / t_max
    points = torch.stack([r * torch.cos(t), r * torch.sin(t)], dim=1)
    points = torch.where((labels == 1)[:, None], -points, points)
    points = points + noise * torch.randn(size, 2, generator=gen)
    return _limit(ArrayDataset(points, labels, 2, "two-spirals"), limit, seed)


@register_dataset(
    "checkerboard",
    "8x8 checkerboard on [-1, 1]^2, 2 classes (square colour), 5,000 points (thesis 5.4.2, 7.7)",
    locate=lambda root: "generated in memory",
)
def checkerboard(split, root, size=5000, squares=8, limit=None, seed=0, **_options):
    """Uniform points ``(N, 2)`` on ``[-1, 1]^2``; label = colour of their square of a
    ``squares x squares`` board, ``(row + column) mod 2``; no noise."""
    size = _check_size("checkerboard", size)
    if int(squares) < 1:
        raise ConfigError(f"checkerboard: squares must be positive, got {squares}")
    points = torch.rand(size, 2, generator=_generator(split)) * 2 - 1
    cells = ((points + 1) / 2 * squares).floor().clamp(max=squares - 1).long()
    labels = (cells[:, 0] + cells[:, 1]) % 2
    return _limit(ArrayDataset(points, labels, 2, "checkerboard"), limit, seed)
