"""The Facto-CNN training schedule (section 3.1.3) as a :class:`smallfoot.train.Callback`."""

from __future__ import annotations

from typing import Any

import torch

from smallfoot.errors import ConfigError
from smallfoot.lowrank.convert import (
    direct_decay,
    factorized_layers,
    magnitude_parameters,
    merge_and_redraw,
    set_low_rank,
    trainable_elements,
)
from smallfoot.train import Callback


class FactoSchedule(Callback):
    """Full-rank training for ``frt_epochs`` epochs, then low-rank training.

    At the start of every ``merge_every``-th low-rank epoch (the first included) ``M D`` is
    merged into W and new M = 0, D are drawn; the paper finds merging more often than once
    per epoch hurts (figure 3). The optimizer's state of the frozen W and of the redrawn M
    is dropped, so its memory covers only what trains. With ``direct_decay`` every step
    also applies eq. 14, ``W := W - lambda Omega`` with ``lambda = lr * weight_decay``
    (the decay W would get in full-rank training); M gets the optimizer's weight decay.
    The model must have been converted (:func:`smallfoot.lowrank.convert`).
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

    def _forget(self, optimizer: torch.optim.Optimizer, parameters) -> None:
        for p in parameters:
            optimizer.state.pop(p, None)

    def _enter_low_rank(self, trainer) -> None:
        if not factorized_layers(trainer.model):
            raise ConfigError(
                "FactoSchedule found no Facto layers; convert the model with "
                "smallfoot.lowrank.convert first"
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
            group = trainer.optimizer.param_groups[0]
            amount = group["lr"] * group.get("weight_decay", 0.0)
            if amount:
                direct_decay(trainer.model, amount)

    def on_epoch_end(self, trainer, epoch: int, metrics: dict[str, Any]) -> None:
        """Record the phase and the number of trainable parameter elements."""
        metrics["facto_phase"] = "low-rank" if self.low_rank else "full-rank"
        metrics["facto_trainable"] = trainable_elements(trainer.model)
