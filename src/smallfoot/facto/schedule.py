"""The Facto-CNN training schedule (sections 3.1.3 and 4.1): the learning-rate steps, and the
full-rank -> low-rank phases with merge/redraw as a :class:`smallfoot.train.Callback`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from smallfoot.errors import ConfigError
from smallfoot.facto.convert import (
    direct_decay,
    factorized_layers,
    magnitude_parameters,
    merge_and_redraw,
    set_low_rank,
    trainable_elements,
)
from smallfoot.train import Callback


def drop_epochs(epochs: int, drops: Sequence[float]) -> list[int]:
    """The epochs (0-based) from which each learning-rate drop applies: drop ``f`` (a fraction
    of ``epochs``) takes effect at the start of epoch ``ceil(f * epochs)``, at least 1; those
    at or past ``epochs`` never happen and are left out. The paper's ``(0.3, 0.6, 0.9)`` of
    100 epochs gives ``[30, 60, 90]``; of 6 epochs ``[2, 4]``; of 2 epochs ``[1]``."""
    # round first: 0.3 * 10 is 3.0000000000000004, whose ceiling would be 4
    starts = sorted(max(1, math.ceil(round(f * epochs, 9))) for f in drops)
    return [e for e in starts if e < epochs]


def step_factor(epoch: int, drops_at: Sequence[int], factor: float) -> float:
    """The learning-rate multiplier of epoch ``epoch``: ``factor`` per drop in ``drops_at``
    (:func:`drop_epochs`) at or before it."""
    return factor ** sum(epoch >= start for start in drops_at)


def step_scheduler(
    optimizer: torch.optim.Optimizer,
    epochs: int,
    steps_per_epoch: int,
    drops: Sequence[float] = (0.3, 0.6, 0.9),
    factor: float = 0.1,
) -> torch.optim.lr_scheduler.LambdaLR:
    """The paper's step schedule (section 4.1: x0.1 at epochs 30, 60, 90 of 100) as a
    per-batch ``LambdaLR``: the rate is constant within an epoch and multiplied by ``factor``
    at each epoch of :func:`drop_epochs`, so a drop coincides with an epoch boundary (where
    :class:`FactoSchedule` switches phase)."""
    drops_at = drop_epochs(epochs, drops)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: step_factor(step // steps_per_epoch, drops_at, factor)
    )


def decay_amount(optimizer: torch.optim.Optimizer) -> float:
    """``lambda`` of eq. 14 for the optimizer's current step: the weight decay W gets per step
    in full-rank training at the same learning rate. Plain SGD applies ``lr * wd``; SGD with
    momentum ``mu`` accumulates the decay term in its buffer, so its steady-state decay per
    step is ``lr * wd / (1 - mu)`` (10x at mu = 0.9); AdamW decays by ``lr * wd`` directly.
    Read from the first parameter group."""
    group = optimizer.param_groups[0]
    amount = group["lr"] * group.get("weight_decay", 0.0)
    if isinstance(optimizer, torch.optim.SGD):
        amount *= (1.0 - group.get("dampening", 0.0)) / (1.0 - group.get("momentum", 0.0))
    return amount


class FactoSchedule(Callback):
    """Full-rank training for ``frt_epochs`` epochs, then low-rank training.

    At the start of every ``merge_every``-th low-rank epoch (the first included) ``M D`` is
    merged into W and new M = 0, D are drawn; the paper finds merging more often than once
    per epoch hurts (figure 3). The optimizer's state of the frozen W and of the redrawn M
    is dropped, so its memory covers only what trains. With ``direct_decay`` every step
    also applies eq. 14, ``W := W - lambda Omega`` with ``lambda`` the decay W would get per
    step in full-rank training at the current rate (:func:`decay_amount`: ``lr * wd / (1 -
    momentum)`` for SGD); M gets the optimizer's weight decay. Each epoch's metrics get
    ``facto_phase``, ``facto_lr`` (the rate at the epoch's start) and ``facto_trainable``.
    The model must have been converted (:func:`smallfoot.facto.convert`).
    """

    def __init__(
        self, frt_epochs: int = 1, merge_every: int = 1, direct_decay: bool = True, seed: int = 0
    ):
        if frt_epochs < 0 or merge_every < 1:
            raise ConfigError(
                f"frt_epochs must be >= 0 and merge_every >= 1, got {frt_epochs}, {merge_every}"
            )
        self.frt_epochs, self.merge_every = frt_epochs, merge_every
        self.direct_decay, self.seed = direct_decay, seed
        self.low_rank = False
        self.epoch_lr = 0.0

    def _forget(self, optimizer: torch.optim.Optimizer, parameters) -> None:
        for p in parameters:
            optimizer.state.pop(p, None)

    def _enter_low_rank(self, trainer) -> None:
        if not factorized_layers(trainer.model):
            raise ConfigError(
                "FactoSchedule found no Facto layers; convert the model with "
                "smallfoot.facto.convert first"
            )
        set_low_rank(trainer.model, True)
        self._forget(trainer.optimizer, [m.weight for m in factorized_layers(trainer.model)])
        self.low_rank = True

    def on_train_start(self, trainer) -> None:
        """Put the model in the phase of ``trainer.epoch`` (0, or the epoch resumed at)."""
        if trainer.epoch >= self.frt_epochs:
            self._enter_low_rank(trainer)
        else:
            set_low_rank(trainer.model, False)
            self.low_rank = False

    def on_epoch_start(self, trainer, epoch: int) -> None:
        """Switch to low-rank training at ``frt_epochs``; merge and redraw on schedule."""
        self.epoch_lr = trainer.optimizer.param_groups[0]["lr"]
        if epoch < self.frt_epochs:
            return
        if not self.low_rank:
            self._enter_low_rank(trainer)
        if (epoch - self.frt_epochs) % self.merge_every == 0:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            merge_and_redraw(trainer.model, generator)
            self._forget(trainer.optimizer, magnitude_parameters(trainer.model))

    def on_batch_end(self, trainer, batch_index: int, loss, output) -> None:
        """Eq. 14 after each optimizer step of low-rank training."""
        if self.low_rank and self.direct_decay:
            amount = decay_amount(trainer.optimizer)
            if amount:
                direct_decay(trainer.model, amount)

    def on_epoch_end(self, trainer, epoch: int, metrics: dict[str, Any]) -> None:
        """Record the phase, the epoch's learning rate and the trainable parameter elements."""
        metrics["facto_phase"] = "low-rank" if self.low_rank else "full-rank"
        metrics["facto_lr"] = self.epoch_lr
        metrics["facto_trainable"] = trainable_elements(trainer.model)
