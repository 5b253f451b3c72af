"""Deep partition-wise learning across processes (thesis section 6.8).

A Sequential model is cut into ``P`` partitions of consecutive units
(:func:`smallfoot.layerwise.split_units`). Process ``i`` trains partition ``i``'s units with
a decision block of its own on top (:func:`smallfoot.layerwise.decision_block`; the last
partition ends with the model's head) on the features partition ``i - 1`` pushes to it with
``dist.send``/``dist.recv``: no gradient crosses a boundary. Learning rate and weight decay of
partition ``i`` are scaled by ``lr_factor**i`` and ``wd_factor**i`` (0.5 in thesis 6.8.1).

Messages between neighbours: a fixed-size int64 header ``[kind, position, ndim, *shape]``
(shapes first), then the features ``(B, *shape)`` float32 and the labels ``(B,)`` int64. The
receiver returns one credit per message; a sender holds at most ``queue`` messages without
credit, so a slow consumer throttles its producer (bounded memory) instead of letting it run
away. Sends are asynchronous (``isend``), so up to ``queue`` batches really are in flight.

Schedules (``schedule``): ``concurrent`` (every partition trains at once; partition ``i``
works on batch ``t`` while ``i + 1`` trains on ``t - 1``; features are those of the
training forward pass), ``bottom-up`` (partition 0 trains all its epochs, then serves as a
frozen feednet for partition 1, ...) and ``round-robin`` (thesis algorithm 4: rounds over
the partitions, ``robin_epochs`` epochs per visit, the lower partitions frozen feednets).
With ``feed="checkpoint"`` (the thesis' alternative to a feednet) the trained partition keeps
in RAM what arrives in the first epoch of a visit and replays it for the visit's other epochs
while the partitions below rest.
Filtering at a boundary (section 6.8.2): ``loss`` drops the lowest-loss ``filter_fraction``
of every batch a partition forwards (loss of its decision block); ``k`` k-filters blocks of
``k_batch`` forwarded samples in the boundary's representation
(:func:`smallfoot.data.filtering.k_filter`, ``k = 10``, at most ``k_cap`` removed).

Every partition checkpoints itself atomically after every schedule epoch
(``partition-<i>/epoch-<n>/checkpoint.pt``, the last ``P + 1`` kept: neighbours are at most
one epoch apart); a resumed pipeline restarts from the latest epoch all partitions saved.
A lost neighbour (its connection closed, or silent beyond ``timeout`` seconds) stops a
partition with one line naming it.

A partition is one process, or with ``ranks_per_partition`` R > 1 a data-parallel group of R
processes (as the thesis gave a partition several GPUs): ranks ``i R .. i R + R - 1`` train
partition ``i`` under ``DistributedDataParallel`` on their own ``dist.new_group``. The group's
first rank, its leader, is the pipeline rank: it reads or receives every batch, broadcasts it
to the group, each rank trains on its share of the rows (losses weighted so the group's
gradient is the whole batch's), and the leader gathers the features it forwards. Only the
leader checkpoints (the group's weights and optimizer states are identical).
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import shutil
import signal
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from smallfoot._io import atomic_torch_save
from smallfoot.data import ArrayDataset, BatchLoader
from smallfoot.distributed.groups import end_process_group, quiet_agent
from smallfoot.errors import ConfigError, SmallfootError, TrainingError, TrainingInterrupted
from smallfoot.train.rundir import MetricsLog, resume_hint
from smallfoot.train.trainer import (
    TrainConfig,
    default_augment,
    make_optimizer,
    make_scheduler,
)

Schedule = Literal["concurrent", "bottom-up", "round-robin"]
SCHEDULES = ("concurrent", "bottom-up", "round-robin")

BATCH, END, WAIT = 0, 1, 2  # message kinds: a batch, the end of an epoch, a heartbeat
_HEADER = 8  # int64 header: kind, position, ndim, up to 5 dimensions


@dataclass
class PartitionOptions:
    """Knobs of partition-wise learning; also the ``partitionwise`` method's flags."""

    partitions: int = field(default=2, metadata={"help": "number of partitions, one process each"})
    split_at: list[int] | None = field(
        default=None,
        metadata={
            "help": "units before each cut, e.g. 2,5 (default: equal numbers of units); "
            "gives partitions = cuts + 1"
        },
    )
    schedule: Schedule = field(
        default="concurrent",
        metadata={"help": "concurrent, bottom-up or round-robin (thesis algorithm 4)"},
    )
    robin_epochs: int = field(
        default=10, metadata={"help": "epochs per partition per round (round-robin)"}
    )
    feed: Literal["feednet", "checkpoint"] = field(
        default="feednet",
        metadata={
            "help": "bottom-up/round-robin: the partitions below feed every epoch (feednet) or "
            "once per visit, kept in RAM by the trained partition (checkpoint)"
        },
    )
    lr_factor: float = field(
        default=0.5, metadata={"help": "learning rate of partition i: lr * lr_factor**i"}
    )
    wd_factor: float = field(
        default=0.5, metadata={"help": "weight decay of partition i: weight_decay * wd_factor**i"}
    )
    decision_convs: int = field(
        default=0, metadata={"help": "down-convolutions in each decision block"}
    )
    decision_width: int | None = field(
        default=None, metadata={"help": "channels of the decision down-convs (default: input's)"}
    )
    decision_pool: int = field(
        default=2, metadata={"help": "decision blocks average-pool to this side (0: no pooling)"}
    )
    queue: int = field(
        default=4, metadata={"help": "most batches a partition sends ahead of its consumer"}
    )
    filter: Literal["none", "loss", "k"] = field(
        default="none",
        metadata={"help": "online filtering of forwarded samples: none, loss or k"},
    )
    filter_fraction: float = field(
        default=0.25, metadata={"help": "loss filtering: lowest-loss fraction of a batch dropped"}
    )
    filter_from: int = field(default=1, metadata={"help": "first epoch (1-based) that filters"})
    filter_after: int | None = field(
        default=None,
        metadata={"help": "only partition N (1-based) filters what it sends (default: all)"},
    )
    k: int = field(default=10, metadata={"help": "k-filtering: neighbours that must agree"})
    k_batch: int = field(
        default=6148, metadata={"help": "k-filtering: samples per nearest-neighbour search"}
    )
    k_cap: float = field(
        default=0.6, metadata={"help": "k-filtering: most of a block removed (fraction)"}
    )
    timeout: float = field(
        default=300.0,
        metadata={"help": "seconds a partition waits for a silent neighbour before it stops"},
    )
    delay: float = field(
        default=0.0,
        metadata={"help": "seconds the last partition sleeps per batch (a slow consumer, tests)"},
    )
    ranks_per_partition: int = field(
        default=1,
        metadata={
            "help": "processes per partition, data-parallel within it (DDP on the partition's "
            "process group); processes in all = partitions x this"
        },
    )

    def validate(self) -> None:
        """Raise ``ConfigError`` for values that cannot work together."""
        if self.split_at is not None:
            self.partitions = len(self.split_at) + 1
        if self.partitions < 2:
            raise ConfigError(f"--partitions must be at least 2, got {self.partitions}")
        if self.robin_epochs < 1:
            raise ConfigError(f"--robin-epochs must be at least 1, got {self.robin_epochs}")
        if self.queue < 1:
            raise ConfigError(f"--queue must be at least 1, got {self.queue}")
        if not 0.0 <= self.filter_fraction < 1.0:
            raise ConfigError(f"--filter-fraction must lie in [0, 1), got {self.filter_fraction}")
        if not 0.0 <= self.k_cap <= 1.0:
            raise ConfigError(f"--k-cap must lie in [0, 1], got {self.k_cap}")
        if self.k < 1 or self.k_batch < 2:
            raise ConfigError(f"--k must be >= 1 and --k-batch >= 2, got {self.k}, {self.k_batch}")
        if self.filter_from < 1:
            raise ConfigError(f"--filter-from is a 1-based epoch, got {self.filter_from}")
        if self.feed == "checkpoint" and self.schedule == "concurrent":
            raise ConfigError(
                "--feed checkpoint replays features within a visit of a partition; use it with "
                "--schedule bottom-up or round-robin"
            )
        if self.timeout <= 0 or self.delay < 0:
            raise ConfigError("--timeout must be positive and --delay at least 0")
        if self.ranks_per_partition < 1:
            raise ConfigError(
                f"--ranks-per-partition must be at least 1, got {self.ranks_per_partition}"
            )

    def check_batch(self, batch_size: int) -> None:
        """Refuse a batch too small to give every rank of a data-parallel partition a row."""
        if batch_size < self.ranks_per_partition:
            raise ConfigError(
                f"batch size {batch_size} is smaller than --ranks-per-partition "
                f"{self.ranks_per_partition}: every rank of a partition needs a row; use "
                f"--batch-size {self.ranks_per_partition} or more"
            )

    @property
    def processes(self) -> int:
        """Processes of the whole pipeline: ``partitions x ranks_per_partition``."""
        return self.partitions * self.ranks_per_partition


# -- the plan: which units each partition trains ----------------------------------------------


def boundaries(num_units: int, options: PartitionOptions) -> list[tuple[int, int]]:
    """Half-open unit ranges ``(start, end)`` of the partitions; the last one ends with the head.

    ``split_at`` gives the number of units before each cut; without it the ``num_units``
    units are dealt out as evenly as possible.
    """
    parts = options.partitions
    if options.split_at is not None:
        cuts = list(options.split_at)
        if cuts != sorted(set(cuts)) or cuts[0] < 1 or cuts[-1] >= num_units:
            raise ConfigError(
                f"--split-at {','.join(map(str, cuts))} must be increasing unit counts between "
                f"1 and {num_units - 1} (the model has {num_units} units, the last is its head)"
            )
    else:
        if parts > num_units:
            raise ConfigError(
                f"{parts} partitions need at least {parts} units; the model has {num_units}; "
                f"use --partitions {num_units} or a deeper model"
            )
        cuts = [round(i * num_units / parts) for i in range(1, parts)]
    edges = [0, *cuts, num_units]
    return [(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]


@dataclass
class Partition:
    """One partition: its unit range, the trained body (units below the decision block) and
    decision block (the model's head for the last partition), and its input shape."""

    index: int
    start: int
    end: int
    body: nn.Sequential
    decision: nn.Module
    input_shape: tuple[int, ...]
    layers: list[str]

    def net(self) -> nn.Sequential:
        """``body`` followed by ``decision`` (shares modules): what one training step runs."""
        from smallfoot.layerwise import assemble

        return assemble([self.body], self.decision)


def build_partitions(model: nn.Module, input_shape, num_classes: int, options, seed: int):
    """Split ``model`` (shared, trained in place) into :class:`Partition` records.

    Decision blocks are seeded by ``seed`` and the partition index, so every process builds
    the same ones.
    """
    from smallfoot.layerwise import chain, decision_block, output_shape, split_units

    units = split_units(model)
    parts = []
    shape = tuple(input_shape)
    ranges = boundaries(len(units), options)
    for index, (start, end) in enumerate(ranges):
        last = index == len(ranges) - 1
        body = chain(units[start : end - 1] if last else units[start:end])
        out_shape = output_shape(body, shape) if len(body) else shape
        if last:
            decision: nn.Module = units[-1]
        else:
            torch.manual_seed(seed + 7919 * index)
            decision = decision_block(
                out_shape,
                num_classes,
                options.decision_convs,
                options.decision_width,
                options.decision_pool,
            )
        layers = [name for unit in units[start:end] for name, _ in unit.named_children()]
        parts.append(Partition(index, start, end, body, decision, shape, layers))
        shape = out_shape
    return parts


def partition_config(config: TrainConfig, index: int, options: PartitionOptions) -> TrainConfig:
    """Partition ``index``'s trainer config: lr and weight decay scaled, its own seed."""
    return replace(
        config,
        lr=config.lr * options.lr_factor**index,
        weight_decay=config.weight_decay * options.wd_factor**index,
        seed=config.seed + 7919 * index,
    )


def phases(options: PartitionOptions, epochs: int) -> list[tuple[int | None, int]]:
    """The schedule as ``(trained partition or None for all, epochs)`` phases."""
    parts = options.partitions
    if options.schedule == "concurrent":
        return [(None, epochs)]
    if options.schedule == "bottom-up":
        return [(i, epochs) for i in range(parts)]
    out, left = [], epochs
    while left:
        visit = min(options.robin_epochs, left)
        out += [(i, visit) for i in range(parts)]
        left -= visit
    return out


# -- messages between neighbours ----------------------------------------------------------------


class PartitionLost(TrainingError):
    """A neighbouring partition died or stayed silent beyond the timeout."""


@dataclass
class Clock:
    """Seconds a partition computed (busy) and waited for a neighbour (waiting)."""

    busy: float = 0.0
    waiting: float = 0.0


def _header(kind: int, position: int = 0, x: torch.Tensor | None = None) -> torch.Tensor:
    """A message's int64 header ``[kind, position, ndim, *shape]`` (shape of ``x`` if given)."""
    header = torch.zeros(_HEADER, dtype=torch.int64)
    header[0], header[1] = kind, position
    if x is not None:
        header[2] = x.dim()
        header[3 : 3 + x.dim()] = torch.tensor(x.shape)
    return header


def _shape(header: torch.Tensor) -> list[int]:
    """The batch shape a header announces."""
    return [int(v) for v in header[3 : 3 + int(header[2])]]


def _first_line(error: Exception) -> str:
    """An error's first line of detail (its type's name when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class Link:
    """Point-to-point messages with a neighbouring partition (partition index ``peer``, on
    process ``peer_rank``: its leader); failures name the neighbour."""

    def __init__(self, me: int, peer: int, run_dir: Path | None, clock: Clock, peer_rank: int):
        self.me, self.peer, self.run_dir, self.clock = me, peer, run_dir, clock
        self.peer_rank = peer_rank

    def fail(self, error: Exception) -> PartitionLost:
        """The one-line error for a broken link (its first line of detail kept)."""
        detail = _first_line(error)
        if "Connection closed by peer" in detail or "Connection reset" in detail:
            detail = "its connection closed"
        elif "imeout" in detail or "imed out" in detail:
            detail = "it was silent beyond the timeout"
        return PartitionLost(
            f"partition {self.me + 1} stopped: partition {self.peer + 1} is gone ({detail})"
            + resume_hint(self.run_dir)
        )

    def recv(self, tensor: torch.Tensor) -> torch.Tensor:
        """Receive into ``tensor`` (blocking, bounded by the group's timeout)."""
        start = time.perf_counter()
        try:
            dist.recv(tensor, self.peer_rank)
        except RuntimeError as error:
            raise self.fail(error) from None
        finally:
            self.clock.waiting += time.perf_counter() - start
        return tensor


class Outbox(Link):
    """Messages to the next partition: at most ``queue`` without credit (back-pressure)."""

    def __init__(self, me, peer, run_dir, clock, peer_rank: int, queue: int):
        super().__init__(me, peer, run_dir, clock, peer_rank)
        self.queue = queue
        self.in_flight: deque[tuple[list, int]] = deque()  # (works, bytes) per message
        self.max_in_flight = 0
        self.max_bytes = 0

    def send(self, kind: int, position: int, x=None, y=None) -> None:
        """Send one message (waits for a credit first when ``queue`` are outstanding)."""
        while len(self.in_flight) >= self.queue:
            self.take_credit()
        tensors = [_header(kind, position, x)]
        if x is not None:
            tensors += [x.contiguous().float(), y.contiguous().long()]
        try:
            works = [dist.isend(t, self.peer_rank) for t in tensors]
        except RuntimeError as error:
            raise self.fail(error) from None
        size = sum(t.numel() * t.element_size() for t in tensors)
        self.in_flight.append(([*works, *tensors], size))
        self.max_in_flight = max(self.max_in_flight, len(self.in_flight))
        self.max_bytes = max(self.max_bytes, sum(b for _, b in self.in_flight))

    def take_credit(self) -> None:
        """Wait for the consumer's credit of the oldest message, then release it."""
        self.recv(torch.zeros(1, dtype=torch.int64))
        works, _ = self.in_flight.popleft()
        for work in works[: len(works) // 2]:
            work.wait()

    def drain(self) -> None:
        """Wait until the consumer has taken every message sent."""
        while self.in_flight:
            self.take_credit()


class Inbox(Link):
    """Messages from the previous partition; :meth:`ack` returns a credit."""

    def __init__(self, me, peer, run_dir, clock, peer_rank: int):
        super().__init__(me, peer, run_dir, clock, peer_rank)
        self.credits: list = []

    def receive(self) -> tuple[int, int, torch.Tensor | None, torch.Tensor | None]:
        """``(kind, position, x, y)`` of the next message (``x``, ``y`` None without a batch)."""
        header = self.recv(torch.zeros(_HEADER, dtype=torch.int64))
        kind, position = int(header[0]), int(header[1])
        if kind != BATCH:
            return kind, position, None, None
        shape = _shape(header)
        x = self.recv(torch.empty(shape, dtype=torch.float32))
        y = self.recv(torch.empty(shape[0], dtype=torch.int64))
        return kind, position, x, y

    def ack(self) -> None:
        """Return one credit (asynchronous: the producer takes it when it needs it)."""
        self.credits = [w for w in self.credits if not w.is_completed()]
        try:
            self.credits.append(dist.isend(torch.ones(1, dtype=torch.int64), self.peer_rank))
        except RuntimeError as error:
            raise self.fail(error) from None


class PartitionGroup:
    """The ``size`` processes of data-parallel partition ``index``, on their own process group.

    The leader (group rank 0, the pipeline rank) broadcasts every batch it reads or receives
    (:meth:`share`, then :meth:`end` after the epoch's last); the others take them with
    :meth:`receive`. Every rank trains on its share of the rows (:meth:`rows`), and the leader
    gathers the group's outputs in row order (:meth:`gather`). A collective that fails (a rank
    of the group died, or stayed silent beyond the timeout) raises :class:`PartitionLost`.
    """

    def __init__(
        self,
        group: dist.ProcessGroup,
        leader: int,
        size: int,
        rank: int,
        index: int = 0,
        run_dir: Path | None = None,
    ):
        self.group, self.leader, self.size, self.rank = group, leader, size, rank
        self.index, self.run_dir = index, run_dir

    @contextlib.contextmanager
    def lost_on_failure(self) -> Iterator[None]:
        """Turn a failed collective of the group (a process died, or stayed silent beyond the
        timeout) into one-line :class:`PartitionLost`."""
        try:
            yield
        except RuntimeError as error:
            raise PartitionLost(
                f"partition {self.index + 1} stopped: a process of its data-parallel group is "
                f"gone ({_first_line(error)})" + resume_hint(self.run_dir)
            ) from None

    def _broadcast(self, tensor: torch.Tensor) -> None:
        with self.lost_on_failure():
            dist.broadcast(tensor, self.leader, group=self.group)

    def share(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Leader: send the batch ``x`` ``(B, ...)`` float32 with labels ``y`` ``(B,)``."""
        for tensor in (_header(BATCH, 0, x), x.contiguous().float(), y.contiguous().long()):
            self._broadcast(tensor)

    def end(self) -> None:
        """Leader: the epoch has no more batches."""
        self._broadcast(_header(END))

    def receive(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The next batch the leader shares, or None at the end of the epoch."""
        header = torch.zeros(_HEADER, dtype=torch.int64)
        self._broadcast(header)
        if int(header[0]) == END:
            return None
        shape = _shape(header)
        x, y = torch.empty(shape, dtype=torch.float32), torch.empty(shape[0], dtype=torch.int64)
        self._broadcast(x)
        self._broadcast(y)
        return x, y

    def broadcast_buffers(self, net: nn.Module) -> None:
        """Give every rank the leader's buffers of ``net`` (batch-norm statistics)."""
        for buffer in net.buffers():
            self._broadcast(buffer.data)

    def sizes(self, rows: int) -> list[int]:
        """Rows of each rank in a batch of ``rows`` (``torch.tensor_split``'s sizes)."""
        return [rows // self.size + (r < rows % self.size) for r in range(self.size)]

    def rows(self, rows: int) -> slice:
        """This rank's rows of a batch of ``rows``."""
        sizes = self.sizes(rows)
        start = sum(sizes[: self.rank])
        return slice(start, start + sizes[self.rank])

    def gather(self, part: torch.Tensor, rows: int) -> torch.Tensor | None:
        """Leader: the group's ``part`` tensors (each rank's rows of a batch of ``rows``)
        concatenated in rank order; the other ranks get None."""
        sizes = self.sizes(rows)
        padded = torch.zeros((max(sizes), *part.shape[1:]), dtype=part.dtype)
        padded[: len(part)] = part
        pieces = [torch.empty_like(padded) for _ in sizes] if self.rank == 0 else None
        with self.lost_on_failure():
            dist.gather(padded, pieces, self.leader, group=self.group)
        if self.rank != 0:
            return None
        return torch.cat([piece[:n] for piece, n in zip(pieces, sizes, strict=True)])

    def sum(self, values: list[float]) -> list[float]:
        """``values`` summed over the group's ranks (float64)."""
        total = torch.tensor(values, dtype=torch.float64)
        with self.lost_on_failure():
            dist.all_reduce(total, group=self.group)
        return total.tolist()

    def all_true(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every rank of the group."""
        return self.sum([float(not flag)])[0] == 0


class _Step(nn.Module):
    """A partition's body and decision block as one module returning ``(features, logits)``,
    so DistributedDataParallel can wrap the pair."""

    def __init__(self, body: nn.Module, decision: nn.Module):
        super().__init__()
        self.body, self.decision = body, decision

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.body(x)
        return z, self.decision(z)


# -- one partition's process --------------------------------------------------------------------


class Forwarder:
    """What a partition forwards: its features after online filtering, repacked into batches
    of ``batch_size`` for the next partition; counts what it forwarded and filtered."""

    def __init__(self, options: PartitionOptions, index: int, batch_size: int, seed: int):
        self.options, self.batch_size, self.seed = options, batch_size, seed
        after = options.filter_after
        self.filters = options.filter != "none" and (after is None or after == index + 1)
        self.x: list[torch.Tensor] = []
        self.y: list[torch.Tensor] = []
        self.counts = {"forwarded": 0, "filtered": 0, "filter_seconds": 0.0}

    def active(self, epoch: int) -> bool:
        """Whether filtering applies in (0-based) schedule epoch ``epoch``."""
        return self.filters and epoch + 1 >= self.options.filter_from

    def add(self, z, y, losses, epoch: int, outbox: Outbox, position: int) -> None:
        """Queue features ``z`` ``(B, ...)`` with labels and per-sample losses ``(B,)``."""
        from smallfoot.data.filtering import loss_filter

        if self.active(epoch) and self.options.filter == "loss":
            start = time.perf_counter()
            kept = loss_filter(losses, self.options.filter_fraction)
            self.counts["filtered"] += len(y) - len(kept)
            z, y = z[kept], y[kept]
            self.counts["filter_seconds"] += time.perf_counter() - start
        self.x.append(z)
        self.y.append(y)
        block = self.options.k_batch if self.active(epoch) and self.options.filter == "k" else 0
        if sum(len(t) for t in self.y) >= max(block, self.batch_size):
            self.flush(epoch, outbox, position, final=False)

    def flush(self, epoch: int, outbox: Outbox, position: int, final: bool = True) -> None:
        """k-filter the queued block (when active), send full batches (all of them if ``final``)."""
        from smallfoot.data.filtering import k_filter

        if not self.y:
            return
        x, y = torch.cat(self.x), torch.cat(self.y)
        if self.active(epoch) and self.options.filter == "k":
            start = time.perf_counter()
            result = k_filter(
                x,
                y,
                self.options.k,
                max_fraction=self.options.k_cap,
                seed=self.seed + 1000 * position + self.counts["forwarded"],
            )
            self.counts["filtered"] += len(result.removed)
            x, y = x[result.kept], y[result.kept]
            self.counts["filter_seconds"] += time.perf_counter() - start
        whole = len(y) if final else len(y) - len(y) % self.batch_size
        for begin in range(0, whole, self.batch_size):
            stop = min(begin + self.batch_size, whole)
            outbox.send(BATCH, position, x[begin:stop], y[begin:stop])
            self.counts["forwarded"] += stop - begin
        self.x, self.y = ([x[whole:]], [y[whole:]]) if whole < len(y) else ([], [])


class PartitionWorker:
    """Partition ``index``'s process: its units, decision block, optimizer, links and loop."""

    def __init__(
        self,
        part: Partition,
        world: int,
        options: PartitionOptions,
        config: TrainConfig,
        train_set: ArrayDataset,
        loss_fn,
        predict_fn,
        run_dir: Path | None,
        epochs: int,
        group: PartitionGroup | None = None,
    ):
        self.part, self.world, self.options = part, world, options
        self.index = part.index
        self.group = group
        self.leader = group is None or group.rank == 0
        self.ranks = 1 if group is None else group.size
        step = _Step(part.body, part.decision)
        self.step_net: nn.Module = step
        if group is not None:
            self.step_net = DistributedDataParallel(step, process_group=group.group)
        self.config = partition_config(config, self.index, options)
        self.train_set, self.loss_fn, self.predict_fn = train_set, loss_fn, predict_fn
        self.run_dir = run_dir
        self.net = part.net()
        self.optimizer = make_optimizer(self.net, self.config)
        steps = math.ceil(len(train_set) / config.batch_size)
        self.scheduler = make_scheduler(self.optimizer, replace(self.config, epochs=epochs), steps)
        self.clock = Clock()
        # only a partition's leader (its first rank) talks to the neighbouring partitions
        below, above = (self.index - 1) * self.ranks, (self.index + 1) * self.ranks
        self.inbox = (
            Inbox(self.index, self.index - 1, run_dir, self.clock, below)
            if self.index > 0 and self.leader
            else None
        )
        self.outbox = (
            Outbox(self.index, self.index + 1, run_dir, self.clock, above, options.queue)
            if self.index < world - 1 and self.leader
            else None
        )
        self.phases = phases(options, epochs)
        self.position = 0  # schedule epochs done
        self.kept: ArrayDataset | None = None  # features kept for replay (--feed checkpoint)
        self.epochs_trained = 0
        self.history: list[dict[str, Any]] = []

    # -- the schedule ----------------------------------------------------------------------
    def directory(self) -> Path:
        """``run_dir/partition-<i>``."""
        return self.run_dir / f"partition-{self.index + 1}"

    def run(self, resume_at: int | None = None) -> dict[str, Any]:
        """Follow the schedule from epoch ``resume_at`` (a saved position) or the start."""
        if resume_at:
            self.load(resume_at)
        flat = [(trainee, p) for p, (trainee, n) in enumerate(self.phases) for _ in range(n)]
        first = self.position
        for position in range(first, len(flat)):
            trainee, phase = flat[position]
            # feature checkpoints: after the first epoch of a visit (or of this process) the
            # trained partition replays what it kept; the partitions below it rest
            replay = (
                self.options.feed == "checkpoint"
                and bool(trainee)  # partition 1 reads the data itself
                and position > first
                and flat[position - 1][1] == phase
            )
            if trainee is None or trainee == self.index:
                mode = "train"
            elif self.index < trainee:
                mode = "wait" if replay else "feed"
            else:
                mode = "wait"
            forward = trainee is None or (self.index < trainee and not replay)
            self.run_epoch(position, mode, forward, replay and trainee == self.index)
            self.position = position + 1
            self.save()
        for work in self.inbox.credits if self.inbox else []:
            work.wait()
        return self.record()

    def batches(self, position: int, replay: bool = False, keep: bool = False):
        """Partition 0: its loader's batches of this epoch; the others: what arrives until END
        (kept for replay with ``keep``), or with ``replay`` the kept features."""
        if self.inbox is None or replay:
            dataset = self.kept if replay else self.train_set
            augment = None
            if self.config.augment and not replay:
                augment = default_augment(dataset.input_shape)
            loader = BatchLoader(
                dataset,
                self.config.batch_size,
                shuffle=True,
                seed=self.config.seed,
                augment=augment,
                workers=self.config.workers,
            )
            for x, y in loader.epoch(position):
                yield x, y
            return
        xs, ys = [], []
        while True:
            kind, _, x, y = self.inbox.receive()
            if kind == END:
                self.inbox.ack()
                if keep and ys:
                    self.kept = ArrayDataset(
                        torch.cat(xs), torch.cat(ys), self.train_set.num_classes, "features"
                    )
                return
            if keep:
                xs.append(x)
                ys.append(y)
            yield x, y
            self.inbox.ack()

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``; in a group, DDP's all-reduce failing names the lost process."""
        if self.group is None:
            loss.backward()
            return
        with self.group.lost_on_failure():
            loss.backward()

    def check_finite(self, loss: torch.Tensor, position: int) -> None:
        """Stop on a non-finite loss, with one line; a group's ranks stop together."""
        finite = bool(torch.isfinite(loss))
        if self.group is not None:
            finite = self.group.all_true(finite)
        if not finite:
            raise TrainingError(
                f"partition {self.index + 1}: the loss became non-finite in epoch "
                f"{position + 1}; lower --lr or --lr-factor"
            )

    def shared(self, source):
        """The epoch's batches on every rank of the partition: ``source`` (the leader's own
        batches), broadcast by the leader to a data-parallel group."""
        if self.group is None:
            yield from source
            return
        if self.leader:
            for x, y in source:
                self.group.share(x, y)
                yield x, y
            self.group.end()
            return
        while (batch := self.group.receive()) is not None:
            yield batch

    def run_epoch(self, position: int, mode: str, forward: bool, replay: bool = False) -> None:
        """One schedule epoch: train (``train``; with ``replay`` on the kept features), run
        as a frozen feednet (``feed``) or wait for the partitions below to finish theirs
        (``wait``, relaying their heartbeats)."""
        before = (self.clock.busy, self.clock.waiting)
        forwarder = Forwarder(self.options, self.index, self.config.batch_size, self.config.seed)
        sends = forward and mode != "wait" and self.index < self.world - 1
        out = self.outbox if sends else None  # None on a group's other ranks
        if (mode == "wait" or replay) and self.inbox is not None:
            kind, _, _, _ = self.inbox.receive()
            if kind != WAIT:
                raise TrainingError(f"partition {self.index + 1}: expected a heartbeat")
            self.inbox.ack()
        if self.group is not None:
            # the leader's batch-norm statistics, also for the frozen forwards of feed epochs
            self.group.broadcast_buffers(self.net)
        rank = 0 if self.group is None else self.group.rank
        # dropout replays on resume; the ranks of a group draw their own masks
        torch.manual_seed(self.config.seed * 1_000_003 + position + 7_919 * rank)
        self.net.train(mode == "train")
        total_loss, correct, seen = 0.0, 0, 0
        keep = mode == "train" and self.options.feed == "checkpoint" and not replay
        source = self.batches(position, replay, keep) if mode != "wait" else ()
        for x, y in self.shared(source):
            start = time.perf_counter()
            # a batch with fewer rows than the group has ranks (an epoch's or a filter's
            # remainder) is trained whole by every rank: the average of equal gradients
            split = self.group is not None and len(y) >= self.ranks
            rows = self.group.rows(len(y)) if split else slice(None)
            x_mine, y_mine = x[rows], y[rows]
            counts = split or self.leader  # a whole batch is counted once, by the leader
            if mode == "train":
                self.optimizer.zero_grad(set_to_none=True)
                z, logits = self.step_net(x_mine)
                loss = self.loss_fn(logits, y_mine)
                self.check_finite(loss, position)
                # each rank's mean weighted by its share of the rows: the group's averaged
                # gradient is the whole batch's
                self.backward(loss * (len(y_mine) * self.ranks / len(y)) if split else loss)
                self.optimizer.step()
                self.scheduler.step()
                if counts:
                    total_loss += float(loss.detach()) * len(y_mine)
                    correct += int((self.predict_fn(logits.detach()) == y_mine).sum())
                    seen += len(y_mine)
                if self.options.delay and self.index == self.world - 1:
                    time.sleep(self.options.delay)
                if sends:
                    z, logits = z.detach(), logits.detach()
            elif sends:
                with torch.no_grad():
                    z = self.part.body(x_mine)
                    logits = self.part.decision(z) if forwarder.active(position) else None
            if sends:
                losses = None
                if forwarder.active(position) and self.options.filter == "loss":
                    losses = self.loss_fn.per_sample(logits, y_mine).detach()
                if split:
                    z = self.group.gather(z, len(y))
                    if losses is not None:
                        losses = self.group.gather(losses, len(y))
                self.clock.busy += time.perf_counter() - start
                if out is not None:
                    forwarder.add(z, y, losses, position, out, position)
            else:
                self.clock.busy += time.perf_counter() - start
        if self.group is not None:
            total_loss, correct, seen = self.group.sum([total_loss, correct, seen])
            correct, seen = int(correct), int(seen)
        if out is not None:
            forwarder.flush(position, out, position)
            out.send(END, position)
        elif self.outbox is not None:
            self.outbox.send(WAIT, position)
        if mode == "train":
            self.epochs_trained += 1
        line = {
            "partition": self.index + 1,
            "epoch": position + 1,
            "mode": "replay" if replay else mode,
            "images": seen if mode == "train" else None,
            "train_loss": total_loss / seen if seen else None,
            "train_accuracy": correct / seen if seen else None,
            "forwarded": forwarder.counts["forwarded"],
            "filtered": forwarder.counts["filtered"],
            "filter_seconds": forwarder.counts["filter_seconds"],
        }
        if self.outbox is not None:
            self.outbox.drain()  # the consumer took the whole epoch: neighbours stay in step
        line["seconds_busy"] = self.clock.busy - before[0]
        line["seconds_waiting"] = self.clock.waiting - before[1]
        self.history.append(line)
        if self.run_dir is not None and self.leader:
            MetricsLog(self.directory()).append(line)

    # -- checkpoints -------------------------------------------------------------------------
    def save(self) -> None:
        """Write this partition's state after epoch ``position`` atomically; keep the last
        ``P + 1`` (a neighbour may be one epoch behind per partition in between). A group's
        leader writes it for the group (their states are identical)."""
        if self.run_dir is None or not self.leader:
            return
        state = {
            "position": self.position,
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "clock": (self.clock.busy, self.clock.waiting),
            "history": self.history,
            "epochs_trained": self.epochs_trained,
            "max_in_flight": self.outbox.max_in_flight if self.outbox else 0,
            "max_bytes": self.outbox.max_bytes if self.outbox else 0,
        }
        atomic_torch_save(state, self.directory() / f"epoch-{self.position}" / "checkpoint.pt")
        for old in saved_positions(self.directory())[: -(self.world + 1)]:
            shutil.rmtree(self.directory() / f"epoch-{old}", ignore_errors=True)

    def load(self, position: int) -> None:
        """Restore the state saved after schedule epoch ``position``."""
        path = self.directory() / f"epoch-{position}" / "checkpoint.pt"
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.clock.busy, self.clock.waiting = state["clock"]
        self.history, self.position = state["history"], state["position"]
        self.epochs_trained = state["epochs_trained"]
        if self.outbox is not None:
            self.outbox.max_in_flight = state["max_in_flight"]
            self.outbox.max_bytes = state["max_bytes"]
        if self.leader:
            MetricsLog(self.directory()).rewrite(self.history)

    def record(self) -> dict[str, Any]:
        """This partition's summary: units, layers, time busy and waiting, images, queue."""
        busy, waiting = self.clock.busy, self.clock.waiting
        return {
            "partition": self.index + 1,
            "units": [self.part.start + 1, self.part.end],
            "layers": self.part.layers,
            "lr": self.config.lr,
            "weight_decay": self.config.weight_decay,
            "epochs_trained": self.epochs_trained,
            "seconds_busy": busy,
            "seconds_waiting": waiting,
            "idle_fraction": waiting / (busy + waiting) if busy + waiting else 0.0,
            "images_trained": sum(m["images"] or 0 for m in self.history),
            "images_forwarded": sum(m["forwarded"] for m in self.history),
            "images_filtered": sum(m["filtered"] for m in self.history),
            "filter_seconds": sum(m["filter_seconds"] for m in self.history),
            "max_in_flight": self.outbox.max_in_flight if self.outbox else 0,
            "max_in_flight_bytes": self.outbox.max_bytes if self.outbox else 0,
            "history": self.history,
        }


def saved_positions(directory: Path) -> list[int]:
    """Schedule positions with a complete checkpoint under ``directory``, ascending."""
    if not directory.is_dir():
        return []
    return sorted(
        int(p.name.split("-")[1])
        for p in directory.glob("epoch-*")
        if (p / "checkpoint.pt").is_file()
    )


def resume_position(run_dir: Path, world: int) -> int:
    """The latest schedule position every partition has a checkpoint of (0: none)."""
    common = None
    for index in range(world):
        saved = set(saved_positions(run_dir / f"partition-{index + 1}"))
        common = saved if common is None else common & saved
    return max(common or {0})


# -- the process entry point --------------------------------------------------------------------


def train_partition(config, run_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """One process of the pipeline (partition ``rank // ranks_per_partition``), started by
    :func:`launch_partitions` or by ``torchrun`` (reads RANK, WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT). Trains; a partition's leader saves ``partition-<i>/final.pt`` (units and
    decision block). Returns the partition's record (a group's other ranks: their own view)."""
    from smallfoot.methods import RunContext, get_method, load_initial_weights
    from smallfoot.runner.run import load_run_data, seed_everything

    method = get_method(config.method, config.method_options)
    options = method.options
    run_dir = Path(run_dir)
    timeout = datetime.timedelta(seconds=options.timeout)
    dist.init_process_group("gloo", timeout=timeout)
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        ranks = options.ranks_per_partition
        if world != options.processes:
            raise ConfigError(
                f"{world} processes for {options.partitions} partitions of {ranks} rank(s) "
                f"each; start {options.processes}"
            )
        options.check_batch(config.batch_size)
        index, group = rank // ranks, None
        if ranks > 1:
            # every process takes part in creating every group, in the same order
            groups = [
                dist.new_group(list(range(i * ranks, (i + 1) * ranks)), timeout=timeout)
                for i in range(options.partitions)
            ]
            group = PartitionGroup(
                groups[index], index * ranks, ranks, rank % ranks, index, run_dir
            )
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        torch.set_num_threads(max(1, (cores or 1) // world))
        seed_everything(config.seed)
        train_set, test_set, _ = load_run_data(config)
        ctx = RunContext(config, options, train_set, test_set, run_dir, "cpu", resume)
        seed_everything(config.seed)
        model = method.build_model(ctx)
        if config.init:
            load_initial_weights(model, config.init)
        parts = build_partitions(model, ctx.input_shape, ctx.num_classes, options, config.seed)
        loss_fn, predict_fn = method.make_loss(ctx)
        worker = PartitionWorker(
            parts[index],
            options.partitions,
            options,
            ctx.train_config(),
            train_set,
            loss_fn,
            predict_fn,
            run_dir,
            config.epochs,
            group,
        )
        worker.directory().mkdir(parents=True, exist_ok=True)
        start = torch.tensor([resume_position(run_dir, options.partitions) if resume else 0])
        dist.all_reduce(start, op=dist.ReduceOp.MIN)
        try:
            begin = time.perf_counter()
            record = worker.run(int(start))
            record["seconds"] = time.perf_counter() - begin
        except PartitionLost as error:
            print(f"error: {error}", file=sys.stderr, flush=True)
            raise
        if worker.leader:
            atomic_torch_save(
                {
                    "body": worker.part.body.state_dict(),
                    "decision": worker.part.decision.state_dict(),
                },
                worker.directory() / "final.pt",
            )
            atomic_torch_save(record, worker.directory() / "record.pt")
        dist.barrier()  # every partition's final.pt exists before anyone assembles
        return record
    finally:
        end_process_group()


def launch_partitions(config, run_dir: Path, resume: bool = False) -> list[dict[str, Any]]:
    """Start the pipeline's local processes (``ranks_per_partition`` per partition; torch's
    elastic launcher, as ``torchrun``) and return the partitions' records (their leaders'),
    partition 1 first. A failed partition raises ``TrainingError``
    naming it (the others are stopped)."""
    import uuid

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from smallfoot.methods import get_method

    options = get_method(config.method, config.method_options).options
    launcher = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=options.processes,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
    )
    try:
        with quiet_agent():
            results = elastic_launch(launcher, train_partition)(config, str(run_dir), resume)
    except ChildFailedError as error:
        process, failure = error.get_first_failure()
        rank = process // options.ranks_per_partition
        message = failure.message
        if isinstance(message, dict):
            message = message.get("message", message)
        raise TrainingError(
            f"partition-wise run stopped: partition {rank + 1} failed ({message}); the other "
            f"partitions were stopped{resume_hint(run_dir)}"
        ) from None
    except SignalException as error:
        # Ctrl-C (or SIGTERM) reached the launcher, which stopped every partition
        raise TrainingInterrupted(
            f"partition-wise run stopped by {signal.Signals(error.sigval).name}; every "
            f"partition was stopped{resume_hint(run_dir)}"
        ) from None
    return [results[i * options.ranks_per_partition] for i in range(options.partitions)]


def assemble_partitions(model: nn.Module, parts: list[Partition], run_dir: Path) -> None:
    """Load every partition's ``final.pt`` into ``model`` (whose units ``parts`` share)."""
    for part in parts:
        path = run_dir / f"partition-{part.index + 1}" / "final.pt"
        if not path.is_file():
            raise SmallfootError(f"partition {part.index + 1} left no {path}; train it again")
        state = torch.load(path, map_location="cpu", weights_only=False)
        part.body.load_state_dict(state["body"])
        part.decision.load_state_dict(state["decision"])


def main(argv: list[str] | None = None) -> int:
    """``torchrun --nproc-per-node P -m smallfoot.distributed.partition RUN_DIR [--resume]``
    (``P x ranks_per_partition`` processes with data-parallel partitions): the pipeline on
    the run directory's ``config.toml``; rank 0 then assembles,
    evaluates and writes ``summary.json``. Exit status 1 when a neighbour is lost, 2 on a user
    error; the error is one line on stderr."""
    import argparse

    from smallfoot.config import load_config

    parser = argparse.ArgumentParser(prog="python -m smallfoot.distributed.partition")
    parser.add_argument("run_dir", help="run directory holding config.toml")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoints")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    try:
        config = load_config(run_dir / "config.toml")
        start = time.perf_counter()
        record = train_partition(config, run_dir, args.resume)
        if int(os.environ.get("RANK", "0")) == 0:
            finish_on_rank_zero(config, run_dir, args.resume, time.perf_counter() - start)
    except PartitionLost:
        return 1  # train_partition printed the line
    except SmallfootError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    return 0 if record is not None else 1


def finish_on_rank_zero(config, run_dir: Path, resume: bool, seconds: float) -> dict[str, Any]:
    """Assemble and evaluate a pipeline trained under torchrun; writes and returns the summary
    (the records come from every partition's last checkpoint)."""
    from smallfoot._io import atomic_write_json
    from smallfoot.methods import RunContext, get_method
    from smallfoot.runner.run import load_run_data, run_summary, seed_everything

    method = get_method(config.method, config.method_options)
    seed_everything(config.seed)
    train_set, test_set, data_record = load_run_data(config)
    ctx = RunContext(config, method.options, train_set, test_set, run_dir, "cpu", resume)
    records = []
    for index in range(method.options.partitions):
        directory = run_dir / f"partition-{index + 1}"
        records.append(torch.load(directory / "record.pt", weights_only=False))
    outcome = method.finish(ctx, records)
    summary = {
        **run_summary(
            config,
            method.model_name(ctx),
            (train_set, test_set),
            outcome.metrics,
            config.epochs,
            seconds,
            outcome.model,
            "cpu",
            run_dir,
            resumed=resume,
            data_record=data_record,
        ),
        **outcome.extra,
    }
    atomic_write_json(run_dir / "summary.json", summary)
    return summary


if __name__ == "__main__":
    sys.exit(main())
