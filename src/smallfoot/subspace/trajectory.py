"""Sampling the parameter trajectory of ordinary training (Li et al., *Low dimensional landscape hypothesis is true: DNNs can be trained in tiny subspaces*, algorithm 1, step 1).

A :class:`TrajectoryStore` holds ``t`` flattened parameter vectors of length ``n`` as a
``(t, n)`` float32 array, in RAM or in a disk memmap, so a model with millions of parameters
and a hundred samples does not need a hundred copies in memory. :class:`TrajectorySampler`
is the Trainer callback that fills it every ``k`` optimizer steps or ``m`` times per epoch.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from smallfoot.errors import ConfigError
from smallfoot.train.trainer import Callback, Trainer


def parameter_layout(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """``(name, shape)`` of each trainable parameter of ``model``, in ``model.parameters()`` order."""
    return [(name, tuple(p.shape)) for name, p in model.named_parameters() if p.requires_grad]


def flatten(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """The tensors concatenated into one detached vector ``(n,)`` (a copy)."""
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def flat_grad(params: list[torch.Tensor]) -> torch.Tensor:
    """The gradients of ``params`` as one vector ``(n,)``; a parameter without gradient gives zeros."""
    return torch.cat(
        [
            (p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1)
            for p in params
        ]
    )


@torch.no_grad()
def add_to_params(params: list[torch.Tensor], vector: torch.Tensor, alpha: float = 1.0) -> None:
    """``params += alpha * vector`` with ``vector`` ``(n,)`` laid out as :func:`flatten` lays them."""
    offset = 0
    for p in params:
        count = p.numel()
        p.add_(vector[offset : offset + count].view_as(p).to(p.dtype), alpha=alpha)
        offset += count


@torch.no_grad()
def set_params(params: list[torch.Tensor], vector: torch.Tensor) -> None:
    """Overwrite ``params`` with the values of the flat vector ``vector`` ``(n,)``."""
    offset = 0
    for p in params:
        count = p.numel()
        p.copy_(vector[offset : offset + count].view_as(p))
        offset += count


class TrajectoryStore:
    """Up to ``capacity`` parameter vectors of length ``size``, float32, in RAM or on disk.

    Args:
        size: ``n``, the number of parameters of one sample.
        capacity: the most samples it holds (``t``).
        path: a file for a ``numpy.memmap`` of shape ``(capacity, size)``; None keeps the
            samples in a RAM tensor. The memmap's pages go to disk, so only the rows being
            written or read are resident.
    """

    def __init__(self, size: int, capacity: int, path: str | Path | None = None):
        if size < 1 or capacity < 1:
            raise ConfigError(
                f"a trajectory needs at least one parameter and one sample, got n={size}, t={capacity}"
            )
        self.size, self.capacity = size, capacity
        self.path = Path(path) if path is not None else None
        self.count = 0
        if self.path is None:
            self._data: torch.Tensor | np.memmap = torch.zeros(capacity, size)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            mode = "r+" if self.path.exists() else "w+"
            self._data = np.memmap(self.path, dtype=np.float32, mode=mode, shape=(capacity, size))

    def __len__(self) -> int:
        return self.count

    @property
    def full(self) -> bool:
        """Whether ``capacity`` samples are stored."""
        return self.count >= self.capacity

    def append(self, vector: torch.Tensor) -> None:
        """Store one flattened parameter vector ``(size,)``."""
        if self.full:
            raise ConfigError(
                f"the trajectory store is full ({self.capacity} samples); create it with a larger capacity"
            )
        if vector.numel() != self.size:
            raise ConfigError(
                f"a sample has {vector.numel()} values but the store holds vectors of {self.size}; "
                "sample the same model the store was made for"
            )
        row = vector.detach().reshape(-1).to("cpu", torch.float32)
        if isinstance(self._data, torch.Tensor):
            self._data[self.count].copy_(row)
        else:
            self._data[self.count] = row.numpy()
            self._data.flush()
        self.count += 1

    def columns(self, start: int, stop: int) -> torch.Tensor:
        """Columns ``start:stop`` of the stored samples as float64 ``(count, stop - start)`` (a copy)."""
        block = self._data[: self.count, start:stop]
        if isinstance(block, torch.Tensor):
            return block.to(torch.float64)
        return torch.from_numpy(np.array(block, dtype=np.float64))

    def sample(self, index: int) -> torch.Tensor:
        """Sample ``index`` as a float32 vector ``(size,)`` (a copy)."""
        if not 0 <= index < self.count:
            raise IndexError(f"sample {index} of {self.count}")
        row = self._data[index]
        return row.clone() if isinstance(row, torch.Tensor) else torch.from_numpy(np.array(row))

    def state_dict(self) -> dict[str, Any]:
        """The count, plus the samples themselves when they live in RAM (a memmap stays on disk)."""
        state: dict[str, Any] = {"count": self.count}
        if isinstance(self._data, torch.Tensor):
            state["samples"] = self._data[: self.count].clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (the memmap file must be the one written)."""
        self.count = state["count"]
        if isinstance(self._data, torch.Tensor):
            self._data[: self.count].copy_(state["samples"])


class TrajectorySampler(Callback):
    """Trainer callback: store the flattened trainable parameters along training.

    Exactly one of ``every_steps`` (after every k-th optimizer step) or ``per_epoch`` (``m``
    samples per epoch, after evenly spaced batches, the last one ending the epoch). With
    ``initial`` the weights before the first step are stored first (the DLDR authors sample
    the initial weights and the end of every epoch). Sampling stops when the store is full.
    """

    def __init__(
        self,
        store: TrajectoryStore,
        every_steps: int | None = None,
        per_epoch: int | None = None,
        initial: bool = False,
    ):
        if (every_steps is None) == (per_epoch is None):
            raise ConfigError("give the sampler exactly one of every_steps or per_epoch")
        if (every_steps or per_epoch or 0) < 1:
            raise ConfigError(
                f"every_steps/per_epoch must be positive, got {every_steps or per_epoch}"
            )
        self.store, self.every_steps, self.per_epoch = store, every_steps, per_epoch
        self.initial = initial

    def on_train_start(self, trainer: Trainer) -> None:
        """Check that the model's parameter count matches the store; store the initial
        weights when ``initial`` and nothing was stored yet (not again on resume)."""
        size = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        if size != self.store.size:
            raise ConfigError(
                f"the model has {size} trainable parameters but the trajectory store holds {self.store.size}"
            )
        if self.initial and len(self.store) == 0 and trainer.global_step == 0:
            self.store.append(flatten(p for p in trainer.model.parameters() if p.requires_grad))

    def due(self, trainer: Trainer, batch_index: int) -> bool:
        """Whether a sample is taken after batch ``batch_index`` (0-based) of the current epoch."""
        if self.every_steps is not None:
            return trainer.global_step % self.every_steps == 0
        steps = trainer.steps_per_epoch()
        return (batch_index + 1) * self.per_epoch // steps > batch_index * self.per_epoch // steps

    def on_batch_end(self, trainer: Trainer, batch_index: int, loss, output) -> None:
        """Store the parameters when a sample is due."""
        if not self.store.full and self.due(trainer, batch_index):
            self.store.append(flatten(p for p in trainer.model.parameters() if p.requires_grad))

    def state_dict(self) -> dict[str, Any]:
        """The store's state (samples in RAM are saved in the checkpoint)."""
        return {"store": self.store.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the store's state."""
        self.store.load_state_dict(state["store"])
