"""Online data filtering as Trainer callbacks (thesis sections 6.8.2 and 5.4): every few
epochs the training set is replaced by the samples a k-filter (:class:`OnlineKFilter`, on a
layer's representation) or a loss filter (:class:`LossFilter`) keeps. The filters themselves
are the functions of :mod:`smallfoot.data.filtering`."""

from __future__ import annotations

import time
from typing import Any

import torch

from smallfoot.data.datasets import ArrayDataset
from smallfoot.data.filtering import FilterSpec, k_filter, loss_filter, representations
from smallfoot.errors import ConfigError
from smallfoot.train.trainer import Callback, Trainer


class _EpochFilter(Callback):
    """Shared schedule of the online filters: at epoch ``warmup`` and every ``every`` epochs
    after it, replace the trainer's training set by a subset of the full one; the subset stays
    in use between refreshes (and is restored on resume)."""

    def __init__(self, every: int, warmup: int):
        if every < 1 or warmup < 0:
            raise ConfigError(
                f"filter schedule needs every >= 1 and warmup >= 0, got {every}, {warmup}"
            )
        self.every, self.warmup = every, warmup
        self.full: ArrayDataset | None = None
        self.kept: torch.Tensor | None = None
        self.seconds = 0.0

    def on_train_start(self, trainer: Trainer) -> None:
        """Remember the full training set (and re-apply a subset restored from a checkpoint)."""
        self.full = trainer.train_set
        if self.kept is not None:
            trainer.train_set = self.full.subset(self.kept)

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Refresh the subset when the schedule says so."""
        self.seconds = 0.0
        if epoch < self.warmup or (epoch - self.warmup) % self.every:
            return
        start = time.perf_counter()
        self.kept = self.select(trainer, self.full)
        trainer.train_set = self.full.subset(self.kept)
        self.seconds = time.perf_counter() - start

    def select(self, trainer: Trainer, full: ArrayDataset) -> torch.Tensor:
        """Indices of ``full`` to train on from now until the next refresh."""
        raise NotImplementedError

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, Any]) -> None:
        """Record the fraction of the data trained on and the filtering time."""
        metrics["kept_fraction"] = len(trainer.train_set) / len(self.full)
        metrics["filter_seconds"] = self.seconds

    def on_train_end(self, trainer: Trainer) -> None:
        """Give the trainer its full training set back."""
        trainer.train_set = self.full

    def state_dict(self) -> dict[str, Any]:
        """The kept indices."""
        return {"kept": self.kept}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the kept indices."""
        self.kept = state["kept"]


class OnlineKFilter(_EpochFilter):
    """Online k-filtering (section 6.8.2): from epoch ``warmup`` on, every ``every`` epochs,
    k-filter the training set in the representation of module ``layer`` (``None``: the
    input) with k-NN mini-batches of ``batch_size`` and at most ``max_fraction`` removed.

    The thesis paused filtering for 30 epochs, then used batches of 6148, ``k = 10`` and a cap
    of 0.6. Note that the learning-rate schedule still counts the full set's steps per epoch.
    """

    def __init__(
        self,
        k: int,
        every: int = 1,
        warmup: int = 0,
        max_fraction: float | None = None,
        layer: str | None = None,
        batch_size: int | None = 6148,
        seed: int = 0,
    ):
        super().__init__(every, warmup)
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        self.k, self.max_fraction, self.layer = k, max_fraction, layer
        self.batch_size, self.seed = batch_size, seed

    def on_train_start(self, trainer: Trainer) -> None:
        """Check the layer exists before any epoch, then as every online filter."""
        modules = dict(trainer.model.named_modules())
        if self.layer is not None and self.layer not in modules:
            raise ConfigError(
                f"--filter layer={self.layer}: the model has no module of that name; choose "
                f"among: {', '.join(name for name in modules if name)}"
            )
        super().on_train_start(trainer)

    def select(self, trainer: Trainer, full: ArrayDataset) -> torch.Tensor:
        """The samples kept by k-filtering ``full`` in the chosen representation."""
        if self.layer is None:
            features = full.x
        else:
            outputs = representations(trainer.model, full.x, [self.layer], include_input=False)
            features = outputs[self.layer]
        return k_filter(
            features,
            full.y,
            self.k,
            batch_size=self.batch_size,
            max_fraction=self.max_fraction,
            seed=self.seed + trainer.epoch,
        ).kept


class LossFilter(_EpochFilter):
    """Loss filtering (section 6.8.2, like Selective-Backprop but dropping samples before the
    forward pass): from epoch ``warmup`` on, every ``every`` epochs, score every training sample
    with a gradient-free forward pass (evaluation mode) and train on all but the lowest-loss
    ``fraction`` of each large batch of ``batch_size`` samples (seeded random order).

    Use it where k-NN is too expensive. The scoring pass costs about one forward over the full
    set per refresh, so it saves time only when ``fraction`` x (forward + backward) exceeds it;
    raise ``every`` to amortise. The per-sample loss is the trainer's ``loss_fn.per_sample``
    (every loss of :mod:`smallfoot.losses` has one).
    """

    def __init__(
        self,
        fraction: float,
        every: int = 1,
        warmup: int = 0,
        batch_size: int | None = 4096,
        eval_batch_size: int = 1024,
        seed: int = 0,
    ):
        super().__init__(every, warmup)
        if not 0.0 <= fraction < 1.0:
            raise ConfigError(f"loss-filter fraction must lie in [0, 1), got {fraction}")
        self.fraction, self.batch_size = fraction, batch_size
        self.eval_batch_size, self.seed = eval_batch_size, seed

    @torch.no_grad()
    def sample_losses(self, trainer: Trainer, dataset: ArrayDataset) -> torch.Tensor:
        """Per-sample losses ``(N,)`` of the current model (evaluation mode)."""
        per_sample = getattr(trainer.loss_fn, "per_sample", None)
        if per_sample is None:
            raise ConfigError(
                "loss filtering needs a loss with per_sample(output, target); use a loss from "
                "smallfoot.losses.build_loss"
            )
        was_training = trainer.model.training
        trainer.model.eval()
        losses = []
        for start in range(0, len(dataset), self.eval_batch_size):
            x = dataset.x[start : start + self.eval_batch_size].to(trainer.device)
            y = dataset.y[start : start + self.eval_batch_size].to(trainer.device)
            losses.append(per_sample(trainer.model(x), y).float().cpu())
        trainer.model.train(was_training)
        return torch.cat(losses)

    def select(self, trainer: Trainer, full: ArrayDataset) -> torch.Tensor:
        """All but the lowest-loss ``fraction`` of each large batch of ``full``."""
        losses = self.sample_losses(trainer, full)
        order = torch.randperm(
            len(full), generator=torch.Generator().manual_seed(self.seed + trainer.epoch)
        )
        kept = loss_filter(losses[order], self.fraction, self.batch_size)
        return order[kept].sort().values


def online_filter(spec: FilterSpec) -> _EpochFilter:
    """The Trainer callback of an online ``--filter`` (``FilterSpec.online``): an
    :class:`OnlineKFilter` or a :class:`LossFilter` that first filters at epoch ``spec.start``
    (1-based) and refreshes every ``spec.every`` epochs."""
    if not spec.online:
        raise ConfigError("an offline --filter is applied to the data before training")
    if spec.loss is not None:
        return LossFilter(
            spec.loss, every=spec.every, warmup=spec.start - 1, batch_size=spec.batch,
            seed=spec.seed,
        )  # fmt: skip
    return OnlineKFilter(
        spec.k, every=spec.every, warmup=spec.start - 1, max_fraction=spec.cap, layer=spec.layer,
        batch_size=spec.knn_chunk or None, seed=spec.seed,
    )  # fmt: skip
