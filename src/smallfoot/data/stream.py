"""Datasets read as a stream: a user's ``torch.utils.data.IterableDataset`` of ``(input,
label)`` items, batched by a ``torch.utils.data.DataLoader`` and never held in memory.

A stream has no random access, so smallfoot cannot shuffle it, take a seeded subset of it,
flip its labels or filter it: the source orders its own items (PyTorch's convention, as
webdataset and Hugging Face streams do, is a ``set_epoch(epoch)`` method that re-seeds its
shuffle; :class:`StreamLoader` calls it before every epoch). Methods that train through the
Trainer's epochs take streams (``Method.streams``); the others refuse them in one line.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from smallfoot.errors import DatasetError


class StreamDataset:
    """A labelled dataset read as a stream.

    Attributes:
        source: the ``torch.utils.data.IterableDataset`` yielding ``(input, label)`` items;
            with ``--workers N`` each worker iterates its own copy and must yield its own
            share (``torch.utils.data.get_worker_info()``), as with any DataLoader.
        name: dataset name for messages.
        input_shape: shape of one input (the first item's).
        num_classes: number of classes.
        length: items per epoch: the source's ``__len__`` (else counted in one pass), or
            the ``limit`` it was loaded with when that is smaller (its first ``length``
            items each epoch).
        classes: optional class names.
    """

    def __init__(
        self,
        source: torch.utils.data.IterableDataset,
        name: str,
        input_shape: tuple[int, ...],
        num_classes: int,
        length: int,
        classes: tuple[str, ...] | None = None,
        limited: bool = False,
    ):
        self.source, self.name, self.input_shape = source, name, input_shape
        self.num_classes, self.length, self.classes = num_classes, length, classes
        self.limited = limited  # the stream is longer than length: stop there each epoch

    def __len__(self) -> int:
        return self.length


def label_of(value, where: str) -> int:
    """``value`` as an integer class label, else ``DatasetError`` naming ``where``."""
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DatasetError(f"{where} has label {value!r}, not an integer") from None


def checked_pair(item, where: str):
    """``item`` when it is an ``(input, label)`` pair, else ``DatasetError`` naming ``where``."""
    if not (isinstance(item, (tuple, list)) and len(item) == 2):
        raise DatasetError(f"{where} is not an (input, label) pair")
    return item


def input_and_label(item, where: str) -> tuple[torch.Tensor, int]:
    """An ``(input, label)`` item as ``(float32 tensor, int)``; ``DatasetError`` naming
    ``where`` when it is not such a pair."""
    x, y = checked_pair(item, where)
    return torch.as_tensor(x, dtype=torch.float32), label_of(y, where)


def stream_dataset(
    source: torch.utils.data.IterableDataset, name: str, limit: int | None = None
) -> StreamDataset:
    """``source`` as a :class:`StreamDataset`: the input shape from its first item, the
    class count from its ``num_classes`` or ``classes`` attribute, the length from its
    ``__len__``; what it lacks is found in one pass over the items (nothing is kept).
    ``limit``: train on its first ``limit`` items each epoch (a stream has no seeded
    subset)."""
    if limit is not None and limit < 1:
        raise DatasetError(f"limit must be positive, got {limit}")
    classes = getattr(source, "classes", None)
    num_classes = getattr(source, "num_classes", len(classes) if classes else None)
    length = len(source) if hasattr(source, "__len__") else None
    first = next(iter(source), None)
    if first is None:
        raise DatasetError(f"{name} is empty")
    input_shape = tuple(input_and_label(first, f"{name}: item 0")[0].shape)
    capped = False
    if length is None or num_classes is None:
        length, largest = 0, 0
        for index, item in enumerate(source):
            if num_classes is not None and limit is not None and index == limit:
                capped = True  # only the length was unknown, and the limit caps it
                break
            largest = max(largest, input_and_label(item, f"{name}: item {index}")[1])
            length = index + 1
        num_classes = num_classes if num_classes is not None else largest + 1
    limited = capped or (limit is not None and limit < length)
    names = tuple(str(c) for c in classes) if classes else None
    return StreamDataset(
        source, name, input_shape, num_classes, limit if limited else length, names, limited
    )


class _Collate:
    """A DataLoader's ``collate_fn`` for a stream: ``(x, y)`` of float32 inputs and int64
    labels, each item checked against the stream's shape and class count."""

    def __init__(self, dataset: StreamDataset):
        self.name, self.input_shape = dataset.name, dataset.input_shape
        self.num_classes = dataset.num_classes

    def __call__(self, items: list) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, labels = [], []
        for item in items:
            x, y = input_and_label(item, f"{self.name}: an item")
            if tuple(x.shape) != self.input_shape:
                raise DatasetError(
                    f"{self.name}: an item has shape {tuple(x.shape)}, the first "
                    f"{self.input_shape}; every input must have the same shape"
                )
            if not 0 <= y < self.num_classes:
                raise DatasetError(
                    f"{self.name}: an item has label {y}; labels must lie in "
                    f"0..{self.num_classes - 1}"
                )
            inputs.append(x)
            labels.append(y)
        return torch.stack(inputs), torch.tensor(labels, dtype=torch.int64)


def _isolated_batches(loader, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The batches of ``loader``, each drawn (and its iterator made: a source may draw in
    ``__iter__``) under torch's RNG forked, seeded with ``seed`` and carried from batch to
    batch, so the source's random numbers never touch the training process's RNG."""
    state = torch.Generator().manual_seed(seed).get_state()
    batches = None
    while True:
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(state)
            if batches is None:
                batches = iter(loader)
            batch = next(batches, None)
            state = torch.get_rng_state()
        if batch is None:
            return
        yield batch


def _rebatched(parts, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(x, y)`` batches of exactly ``batch_size`` (the last may be smaller) cut from
    ``parts`` of any size: each DataLoader worker batches its own share of a stream, so every
    worker's last batch may be partial."""
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    held = 0
    for x, y in parts:
        if not xs and len(y) == batch_size:
            yield x, y
            continue
        xs.append(x)
        ys.append(y)
        held += len(y)
        while held >= batch_size:
            x_all, y_all = torch.cat(xs), torch.cat(ys)
            yield x_all[:batch_size], y_all[:batch_size]
            xs, ys = [x_all[batch_size:]], [y_all[batch_size:]]
            held -= batch_size
    if held:
        yield torch.cat(xs), torch.cat(ys)


class StreamLoader:
    """Yields ``(x, y)`` mini-batches of a :class:`StreamDataset` in the source's order.

    Before epoch ``e`` it calls the source's ``set_epoch(e)`` when it has one (so a resumed
    run sees the same batches when the source is seeded by it). With ``workers`` > 0 a
    ``torch.utils.data.DataLoader`` with that many worker processes reads it (started per
    epoch, so they see the epoch just set). The random numbers the source draws come from a
    generator of their own seeded by ``(seed, epoch)``: in the training process (0 workers)
    torch's RNG is forked around every batch, so they never shift dropout; workers are seeded
    from the same seed. The augmentation draws from ``(seed, epoch)`` too. An epoch that does
    not yield :attr:`StreamDataset.length` items raises ``DatasetError`` (the schedule and
    the metrics count on it; with workers, a source that does not shard yields each item
    once per worker); a stream loaded with a ``limit`` ends each epoch after that many
    items. The workers' batches are re-cut to exactly ``batch_size`` (each worker's last one
    is partial), so an epoch has :meth:`__len__` steps whatever the number of workers."""

    def __init__(
        self,
        dataset: StreamDataset,
        batch_size: int,
        seed: int = 0,
        augment=None,
        workers: int = 0,
        pin_memory: bool = False,
    ):
        if batch_size < 1:
            raise DatasetError(f"batch size must be at least 1, got {batch_size}")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.augment, self.workers, self.pin_memory = augment, workers, pin_memory

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate the batches of epoch ``epoch`` (0-based)."""
        source = self.dataset.source
        if hasattr(source, "set_epoch"):
            source.set_epoch(epoch)
        epoch_seed = self.seed * 1_000_003 + epoch
        generator = torch.Generator().manual_seed(epoch_seed)
        loader = torch.utils.data.DataLoader(
            source,
            batch_size=self.batch_size,
            num_workers=self.workers,
            pin_memory=self.pin_memory,
            collate_fn=_Collate(self.dataset),
            generator=torch.Generator().manual_seed(epoch_seed),
        )
        parts = _isolated_batches(loader, epoch_seed + 1)
        seen, length, limited = 0, len(self.dataset), self.dataset.limited
        for x, y in _rebatched(parts, self.batch_size) if self.workers else parts:
            if limited:
                x, y = x[: length - seen], y[: length - seen]
            seen += len(y)
            yield (self.augment(x, generator) if self.augment is not None else x), y
            if limited and seen == length:
                return
        if seen != len(self.dataset):
            shard = (
                f"; with --workers {self.workers} each worker must yield its own share "
                "(torch.utils.data.get_worker_info())"
                if self.workers
                else ""
            )
            raise DatasetError(
                f"{self.dataset.name}: epoch {epoch + 1} yielded {seen} items, the stream's "
                f"length is {len(self.dataset)}{shard}"
            )

    def micro_batches(
        self, epoch: int, parts: int
    ) -> Iterator[tuple[int, Iterator[tuple[torch.Tensor, torch.Tensor]]]]:
        """The batches of epoch ``epoch`` as ``(samples, micro-batches)``: each batch split into
        ``parts`` (``tensor_split``; empty parts dropped). A stream's batch is read whole
        before it is split (its length is known only once read), so the whole batch's inputs
        are held while its micro-batches run."""
        for x, y in self.epoch(epoch):
            pieces = zip(x.tensor_split(parts), y.tensor_split(parts), strict=True)
            yield len(y), iter([(xs, ys) for xs, ys in pieces if len(ys)])

    def close(self) -> None:
        """Nothing to stop: each epoch's worker processes end with the epoch."""

    def __iter__(self):
        return self.epoch(0)
