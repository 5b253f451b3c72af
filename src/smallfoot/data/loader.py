"""Mini-batches from an in-memory dataset: seeded order, light augmentation, label noise."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from smallfoot.data.datasets import ArrayDataset
from smallfoot.errors import ConfigError


@dataclass(frozen=True)
class Augment:
    """Light image augmentation applied per batch.

    Attributes:
        crop_padding: pad by this many pixels (zeros) and crop back at a random offset; 0 = off.
        flip: random horizontal flip with probability 1/2 (off for digits / text-like data).
    """

    crop_padding: int = 0
    flip: bool = False

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a batch ``x`` of shape ``(B, C, H, W)`` with randomness from ``generator``."""
        if x.dim() != 4:
            raise ConfigError(
                f"augmentation needs image batches (B, C, H, W), got shape {tuple(x.shape)}"
            )
        if self.crop_padding:
            b, _, h, w = x.shape
            p = self.crop_padding
            padded = torch.nn.functional.pad(x, (p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (b,), generator=generator)
            dx = torch.randint(0, 2 * p + 1, (b,), generator=generator)
            rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]  # (B, 1, H, 1)
            cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]  # (B, 1, 1, W)
            batch_index = torch.arange(b)[:, None, None, None]
            x = padded[batch_index, torch.arange(x.shape[1])[None, :, None, None], rows, cols]
        if self.flip:
            flip = torch.rand(x.shape[0], generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x


class BatchLoader:
    """Yields ``(x, y)`` mini-batches of an :class:`ArrayDataset`.

    The order of epoch ``e`` depends only on ``(seed, e)``, so a resumed run sees the same
    batches. Batches are index copies (never views of the whole set), so the memory meter
    charges only the batch.
    """

    def __init__(
        self,
        dataset: ArrayDataset,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        augment: Augment | None = None,
        drop_last: bool = False,
    ):
        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}")
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle
        self.seed, self.augment, self.drop_last = seed, augment, drop_last

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate the batches of epoch ``epoch`` (0-based)."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        n = len(self.dataset)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start : start + self.batch_size]
            x = self.dataset.x[index]
            if self.augment is not None:
                x = self.augment(x, generator)
            yield x, self.dataset.y[index]

    def __iter__(self):
        return self.epoch(0)


def add_label_noise(dataset: ArrayDataset, fraction: float, seed: int = 0) -> ArrayDataset:
    """A copy of ``dataset`` where a ``fraction`` of labels is replaced by a different random class."""
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"label noise fraction must lie in [0, 1], got {fraction}")
    generator = torch.Generator().manual_seed(seed + 7919)
    y = dataset.y.clone()
    flip = torch.randperm(len(y), generator=generator)[: round(fraction * len(y))]
    shift = torch.randint(1, dataset.num_classes, (len(flip),), generator=generator)
    y[flip] = (y[flip] + shift) % dataset.num_classes
    return ArrayDataset(dataset.x, y, dataset.num_classes, dataset.name, dataset.classes)
