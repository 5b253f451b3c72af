"""Mini-batches of a dataset: seeded order, optional worker processes, light augmentation,
label noise."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from smallfoot.data.datasets import ArrayDataset, LazyInputs
from smallfoot.data.stream import StreamDataset, StreamLoader
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
        self._check(x)
        return self.apply(x, self.draw(len(x), generator))

    def draw(self, batch: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The random choices for ``batch`` images, drawn from ``generator``: ``dy`` and ``dx``
        (crop offsets in pixels, shape (B,)) with ``crop_padding``, ``flip`` ((B,) bool) with
        ``flip``. Slices of it augment parts of the batch as the whole batch would be."""
        choices = {}
        if self.crop_padding:
            offsets = 2 * self.crop_padding + 1
            choices["dy"] = torch.randint(0, offsets, (batch,), generator=generator)
            choices["dx"] = torch.randint(0, offsets, (batch,), generator=generator)
        if self.flip:
            choices["flip"] = torch.rand(batch, generator=generator) < 0.5
        return choices

    def apply(self, x: torch.Tensor, choices: dict[str, torch.Tensor]) -> torch.Tensor:
        """``x`` (B, C, H, W) augmented with ``choices`` for its B images (see :meth:`draw`)."""
        self._check(x)
        if "dy" in choices:
            b, _, h, w = x.shape
            p = self.crop_padding
            padded = torch.nn.functional.pad(x, (p, p, p, p))
            rows = (choices["dy"][:, None] + torch.arange(h)[None, :])[:, None, :, None]
            cols = (choices["dx"][:, None] + torch.arange(w)[None, :])[:, None, None, :]
            batch_index = torch.arange(b)[:, None, None, None]
            x = padded[batch_index, torch.arange(x.shape[1])[None, :, None, None], rows, cols]
        if "flip" in choices:
            x = torch.where(choices["flip"][:, None, None, None], x.flip(-1), x)
        return x

    @staticmethod
    def _check(x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ConfigError(
                f"augmentation needs image batches (B, C, H, W), got shape {tuple(x.shape)}"
            )


def read_batch(
    dataset: ArrayDataset, index: torch.Tensor, batch_seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(x, y)`` mini-batch of ``index``. Lazy inputs are read under torch's RNG forked
    and seeded with ``batch_seed``, so random transforms a user's dataset draws in
    ``__getitem__`` neither shift the training RNG (dropout) nor depend on which process
    reads the batch."""
    if not isinstance(dataset.x, LazyInputs):
        return dataset.x[index], dataset.y[index]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(batch_seed)
        return dataset.x[index], dataset.y[index]


class _BatchSource:
    """What a ``DataLoader`` worker reads: ``source[(index, batch_seed)]`` is the mini-batch
    of an index tensor (:func:`read_batch`: a lazy ``x`` reads only its batch)."""

    def __init__(self, dataset: ArrayDataset):
        self.dataset = dataset

    def __getitem__(self, key: tuple[torch.Tensor, int]) -> tuple[torch.Tensor, torch.Tensor]:
        return read_batch(self.dataset, *key)


class _EpochBatches:
    """A ``DataLoader`` sampler yielding the ``(index, batch_seed)`` keys of the current
    epoch; it runs in the main process, so the order stays the seeded one whatever the number
    of workers."""

    def __init__(self):
        self.keys: list[tuple[torch.Tensor, int]] = []

    def __iter__(self):
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


class BatchLoader:
    """Yields ``(x, y)`` mini-batches of an :class:`ArrayDataset`.

    The order of epoch ``e`` depends only on ``(seed, e)``, so a resumed run sees the same
    batches. Batches are index copies (never views of the whole set), so the memory meter
    charges only the batch.

    ``workers`` > 0 reads the batches of lazily read inputs (an image folder, a user's dataset
    with ``in_memory=false``) in that many ``torch.utils.data.DataLoader`` worker processes
    (two batches ahead each, pinned memory with ``pin_memory``; ``persistent``: kept across
    epochs until :meth:`close`), where decoding would otherwise stall the training step.
    In-memory tensors are indexed in the calling process whatever ``workers`` says: a worker
    would only add a copy. The batches, the augmentation (drawn in the calling process) and
    the random numbers a lazy dataset draws (:func:`read_batch`) are the same for any number
    of workers.
    """

    def __init__(
        self,
        dataset: ArrayDataset,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        augment: Augment | None = None,
        drop_last: bool = False,
        workers: int = 0,
        pin_memory: bool = False,
        persistent: bool = True,
    ):
        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ConfigError(f"--workers must be an integer >= 0, got {workers!r}")
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle
        self.seed, self.augment, self.drop_last = seed, augment, drop_last
        self.workers = workers if isinstance(dataset.x, LazyInputs) else 0
        self.pin_memory, self.persistent = pin_memory, persistent
        self._sampler: _EpochBatches | None = None
        self._data_loader: torch.utils.data.DataLoader | None = None

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def plan(self, epoch: int) -> tuple[list[torch.Tensor], torch.Generator]:
        """The index batches of epoch ``epoch`` (0-based) and the generator the augmentation
        of that epoch draws from (seeded by ``(seed, epoch)``)."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        n = len(self.dataset)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        batches = [
            order[start : start + self.batch_size]
            for start in range(0, len(self) * self.batch_size, self.batch_size)
        ]
        return batches, generator

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate the batches of epoch ``epoch`` (0-based)."""
        for _, parts in self.micro_batches(epoch, 1):
            yield from parts

    def micro_batches(
        self, epoch: int, parts: int
    ) -> Iterator[tuple[int, Iterator[tuple[torch.Tensor, torch.Tensor]]]]:
        """The batches of epoch ``epoch`` (0-based), each as ``(samples, micro-batches)``: its
        indices split into ``parts`` (``tensor_split``; empty parts dropped), each part read
        and augmented only when the inner iterator reaches it, so one micro-batch's inputs are
        loaded at a time. Exhaust each inner iterator before taking the next batch. The parts
        hold the samples of :meth:`epoch`'s batch, augmented as in it (one draw per batch,
        sliced); a lazy dataset's own random transforms draw per part (seeds of their own)."""
        batches, generator = self.plan(epoch)
        first_seed = (self.seed * 1_000_003 + epoch) * 100_003
        split = [[part for part in index.tensor_split(parts) if len(part)] for index in batches]
        keys = [
            (part, (first_seed + i) * parts + j)
            for i, group in enumerate(split)
            for j, part in enumerate(group)
        ]
        loaded = self._fetch(keys)
        for index, group in zip(batches, split, strict=True):
            augment = self.augment
            choices = augment.draw(len(index), generator) if augment is not None else None
            yield len(index), self._augmented(itertools.islice(loaded, len(group)), choices)

    def _augmented(
        self, parts: Iterator[tuple[torch.Tensor, torch.Tensor]], choices: dict | None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        start = 0
        for x, y in parts:
            if choices is not None:
                part = slice(start, start + len(y))
                x = self.augment.apply(x, {name: c[part] for name, c in choices.items()})
            start += len(y)
            yield x, y

    def _fetch(
        self, keys: list[tuple[torch.Tensor, int]]
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.workers == 0:
            for key in keys:
                yield read_batch(self.dataset, *key)
            return
        if self._data_loader is None:
            self._sampler = _EpochBatches()
            self._data_loader = torch.utils.data.DataLoader(
                _BatchSource(self.dataset),
                sampler=self._sampler,
                batch_size=None,
                num_workers=self.workers,
                pin_memory=self.pin_memory,
                persistent_workers=self.persistent,
                # its own generator: the workers' base seed must not draw from the global RNG,
                # which dropout and the rest of training use (results would depend on workers)
                generator=torch.Generator().manual_seed(self.seed),
            )
        self._sampler.keys = keys
        yield from self._data_loader

    def close(self) -> None:
        """Stop the worker processes (the next epoch starts new ones)."""
        iterator = getattr(self._data_loader, "_iterator", None)
        if iterator is not None:
            # the loader and its iterator reference each other: without this the workers
            # would live until a garbage collection finds the cycle
            iterator._shutdown_workers()
        self._data_loader = self._sampler = None

    def __iter__(self):
        return self.epoch(0)


def ordered_loader(
    dataset: ArrayDataset | StreamDataset,
    batch_size: int,
    *,
    workers: int = 0,
    pin_memory: bool = False,
) -> BatchLoader | StreamLoader:
    """A loader of ``dataset`` in its own order (evaluation, the meter's example batch): a
    :class:`StreamLoader` for a stream, else a :class:`BatchLoader` without shuffling whose
    workers end with the epoch."""
    if isinstance(dataset, StreamDataset):
        return StreamLoader(dataset, batch_size, workers=workers, pin_memory=pin_memory)
    return BatchLoader(
        dataset, batch_size, shuffle=False, workers=workers, pin_memory=pin_memory,
        persistent=False,
    )  # fmt: skip


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
