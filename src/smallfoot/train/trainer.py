"""A plain, readable training loop with callbacks, checkpoints and exact resume.

``Trainer.fit -> train_epoch -> train_step -> forward_backward_step``: short methods a
technique can override. Callbacks plug in per-epoch and per-step behaviour.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from smallfoot._io import load_checked, save_checked
from smallfoot.data import (
    ArrayDataset,
    Augment,
    BatchLoader,
    StreamDataset,
    StreamLoader,
    ordered_loader,
)
from smallfoot.errors import ConfigError, TrainingError, TrainingInterrupted
from smallfoot.losses import SoftmaxCrossEntropy, argmax_predict
from smallfoot.train.rundir import MetricsLog, resume_hint


@dataclass
class TrainConfig:
    """Hyper-parameters of :class:`Trainer` (a subset of the run's ``RunConfig``)."""

    epochs: int = 3
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])
    gamma: float = 0.1
    seed: int = 0
    augment: bool = False
    workers: int = 0
    eval_batch_size: int = 512
    device: str = "cpu"

    @classmethod
    def from_run_config(cls, config, device: str = "cpu") -> TrainConfig:
        """The trainer's fields taken from a ``RunConfig``."""
        names = [f for f in cls.__dataclass_fields__ if f not in ("device", "eval_batch_size")]
        return cls(**{name: getattr(config, name) for name in names}, device=device)


class Callback:
    """Base class of trainer callbacks; override the hooks you need (all default to nothing)."""

    def on_train_start(self, trainer: Trainer) -> None:
        """Before the first epoch (also after a resume)."""

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Before epoch ``epoch`` (0-based); may replace ``trainer.train_set``."""

    def on_after_backward(self, trainer: Trainer) -> None:
        """Gradients are computed; the optimizer has not stepped yet."""

    def on_batch_end(
        self, trainer: Trainer, batch_index: int, loss: torch.Tensor, output: torch.Tensor
    ) -> None:
        """After the optimizer step of one batch."""

    def on_train_epoch_end(self, trainer: Trainer, epoch: int) -> None:
        """After the last training step of epoch ``epoch``, before its evaluation."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, Any]) -> None:
        """After evaluation of epoch ``epoch``; keys added to ``metrics`` land in metrics.jsonl."""

    def on_train_end(self, trainer: Trainer) -> None:
        """After the last epoch."""

    def state_dict(self) -> dict[str, Any]:
        """State saved in checkpoints so a resumed run continues exactly."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


def parameter_groups(model: nn.Module, lr: float) -> list[dict[str, Any]]:
    """The trainable parameters of ``model`` as optimizer groups: first those at rate ``lr``,
    then one group per ``lr_scale`` that modules declare as a class attribute, at
    ``lr * lr_scale`` (Fixup's scalar biases and multipliers train at a tenth of the rate, as
    in the Fixup authors' code). A module's ``lr_scale`` covers its own parameters only."""
    scaled: dict[float, list[nn.Parameter]] = {}
    claimed: set[int] = set()
    for module in model.modules():
        scale = getattr(type(module), "lr_scale", None)
        if scale is None:
            continue
        for parameter in module.parameters(recurse=False):
            if parameter.requires_grad and id(parameter) not in claimed:
                scaled.setdefault(scale, []).append(parameter)
                claimed.add(id(parameter))
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in claimed]
    groups = [{"params": rest, "lr": lr}] if rest else []
    groups += [{"params": ps, "lr": lr * s, "lr_scale": s} for s, ps in scaled.items()]
    return groups


def make_optimizer(
    parameters: nn.Module | Iterable[nn.Parameter], config: TrainConfig
) -> torch.optim.Optimizer:
    """SGD with momentum or AdamW with the configured rate and decay over ``parameters``, or
    over a model's :func:`parameter_groups` (modules with an ``lr_scale`` get their own rate;
    the first group has the configured one)."""
    if isinstance(parameters, nn.Module):
        groups = parameter_groups(parameters, config.lr)
    else:
        trainable = [p for p in parameters if p.requires_grad]
        groups = [{"params": trainable, "lr": config.lr}] if trainable else []
    if not groups:
        raise ConfigError("the model has no trainable parameters")
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    raise ConfigError(f"unknown optimizer {config.optimizer!r}; choose one of: sgd, adamw")


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
    """A per-batch ``LambdaLR``: constant, cosine (to zero) or multistep (x gamma at milestones)."""
    total = max(1, config.epochs * steps_per_epoch)
    if config.schedule == "constant":
        factor: Callable[[int], float] = lambda step: 1.0  # noqa: E731
    elif config.schedule == "cosine":
        factor = lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))  # noqa: E731
    elif config.schedule == "multistep":
        bounds = [m * total for m in config.milestones]
        factor = lambda step: config.gamma ** sum(step >= b for b in bounds)  # noqa: E731
    else:
        raise ConfigError(
            f"unknown schedule {config.schedule!r}; choose one of: constant, cosine, multistep"
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def format_epoch_line(metrics: dict[str, Any], epochs: int) -> str:
    """One line per epoch: losses, accuracies (percent) and seconds."""
    line = (
        f"epoch {metrics['epoch']}/{epochs}  train loss {metrics['train_loss']:.4f} "
        f"acc {100 * metrics['train_accuracy']:.2f}%"
    )
    if "test_accuracy" in metrics:
        line += f"  test loss {metrics['test_loss']:.4f} acc {100 * metrics['test_accuracy']:.2f}%"
    return line + f"  {metrics['seconds']:.1f} s"


def epoch_seed(seed: int, epoch: int) -> int:
    """The global RNG seed of epoch ``epoch``: dropout and friends replay exactly on resume."""
    return (seed * 1_000_003 + epoch * 7919 + 17) % (2**63)


def default_augment(input_shape: tuple[int, ...]) -> Augment | None:
    """Random crop (padding 4 from 32px up, else 2) plus horizontal flip for colour images."""
    if len(input_shape) != 3:
        return None
    c, h, _ = input_shape
    return Augment(crop_padding=4 if h >= 32 else 2, flip=c == 3)


class Trainer:
    """Trains ``model`` on ``train_set``, evaluates on ``test_set`` after every epoch.

    With a ``run_dir`` it appends one JSON line per epoch to ``metrics.jsonl`` and writes
    ``checkpoint.pt`` atomically after every epoch.
    """

    nonfinite_gradient_hint: str = ""
    """Appended to the error of a step whose gradients are NaN or infinite under a finite loss:
    what the method knows about why (``--method reversible`` sets one)."""

    def __init__(
        self,
        model: nn.Module,
        train_set: ArrayDataset | StreamDataset,
        test_set: ArrayDataset | StreamDataset | None,
        config: TrainConfig,
        loss_fn: Callable | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        callbacks: Iterable[Callback] = (),
        run_dir: str | Path | None = None,
        progress: bool = True,
        predict_fn: Callable | None = None,
        scheduler=None,
    ):
        self.config = config
        self.device = torch.device(config.device)
        self.model = model.to(self.device)
        self.train_set, self.test_set = train_set, test_set
        self._train_loader: BatchLoader | StreamLoader | None = None
        self.loss_fn = loss_fn if loss_fn is not None else SoftmaxCrossEntropy()
        self.predict_fn = predict_fn if predict_fn is not None else argmax_predict
        self.optimizer = optimizer if optimizer is not None else make_optimizer(model, config)
        self.scheduler = (
            scheduler
            if scheduler is not None
            else make_scheduler(self.optimizer, config, self.steps_per_epoch())
        )
        self.callbacks = list(callbacks)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.progress = progress
        self.epoch = 0
        self.global_step = 0
        self.history: list[dict[str, Any]] = []

    def steps_per_epoch(self) -> int:
        """Batches per epoch of the current training set."""
        return -(-len(self.train_set) // self.config.batch_size)

    def loader(self) -> BatchLoader | StreamLoader:
        """The training batches: made by :meth:`make_loader` and kept while the training set
        stays the same object, so its worker processes (``config.workers``) live across
        epochs."""
        if self._train_loader is None or self._train_loader.dataset is not self.train_set:
            self._train_loader = self.make_loader()
        return self._train_loader

    def close_loader(self) -> None:
        """Stop the training loader's worker processes (a later epoch starts new ones)."""
        if self._train_loader is not None:
            self._train_loader.close()
            self._train_loader = None

    def make_loader(self) -> BatchLoader | StreamLoader:
        """A loader of the training set (seeded order, or the stream's own; optional
        augmentation, worker processes, pinned memory when training on a GPU)."""
        augment = default_augment(self.train_set.input_shape) if self.config.augment else None
        if isinstance(self.train_set, StreamDataset):
            return StreamLoader(
                self.train_set,
                self.config.batch_size,
                seed=self.config.seed,
                augment=augment,
                workers=self.config.workers,
                pin_memory=self.device.type == "cuda",
            )
        return BatchLoader(
            self.train_set,
            self.config.batch_size,
            shuffle=True,
            seed=self.config.seed,
            augment=augment,
            workers=self.config.workers,
            pin_memory=self.device.type == "cuda",
        )

    # -- the loop --------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train from ``self.epoch`` to ``config.epochs``; return the last epoch's metrics."""
        for callback in self.callbacks:
            callback.on_train_start(self)
        try:
            while self.epoch < self.config.epochs:
                metrics = self.run_epoch(self.epoch)
                if self.progress:
                    print(format_epoch_line(metrics, self.config.epochs), flush=True)
                self.history.append(metrics)
                self.epoch += 1
                if self.run_dir is not None:
                    MetricsLog(self.run_dir).append(metrics)
                    self.save_checkpoint()
        except KeyboardInterrupt:
            raise TrainingInterrupted(self._interrupt_message()) from None
        finally:
            self.close_loader()
        for callback in self.callbacks:
            callback.on_train_end(self)
        return self.history[-1] if self.history else {}

    def _has_checkpoint(self) -> bool:
        return self.run_dir is not None and self.checkpoint_path().exists()

    def _interrupt_message(self) -> str:
        where = f"interrupted during epoch {self.epoch + 1}"
        if self.run_dir is None:
            return where
        if self._has_checkpoint():
            return (
                f"{where}; the checkpoint after epoch {self.epoch} is kept in {self.run_dir}"
                + resume_hint(self.run_dir)
            )
        return (
            f"{where}, before any epoch finished, so there is no checkpoint yet; "
            f"`smallfoot train --resume {self.run_dir}` starts the run again from epoch 1"
        )

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        """Train one epoch, evaluate, let callbacks add their figures; return the metrics."""
        torch.manual_seed(epoch_seed(self.config.seed, epoch))
        for callback in self.callbacks:
            callback.on_epoch_start(self, epoch)
        start = time.perf_counter()
        metrics: dict[str, Any] = {"epoch": epoch + 1, **self.train_epoch(epoch)}
        for callback in self.callbacks:
            callback.on_train_epoch_end(self, epoch)
        metrics["seconds"] = time.perf_counter() - start
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        if self.test_set is not None:
            test = self.evaluate(self.test_set)
            metrics["test_loss"], metrics["test_accuracy"] = test["loss"], test["accuracy"]
        for callback in self.callbacks:
            callback.on_epoch_end(self, epoch, metrics)
        return metrics

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training set; returns mean ``train_loss`` and ``train_accuracy``."""
        from smallfoot.train.progress import EpochProgress

        self.model.train()
        total_loss, correct, seen = 0.0, 0, 0
        with EpochProgress(
            self.steps_per_epoch(), epoch, self.config.epochs, enabled=self.progress
        ) as bar:
            for batch_index, (loss, output, y) in enumerate(self.train_batches(epoch)):
                for callback in self.callbacks:
                    callback.on_batch_end(self, batch_index, loss, output)
                batch = len(y)
                total_loss += float(loss) * batch
                if y.dim() == 1:
                    correct += int((self.predict_fn(output) == y).sum())
                seen += batch
                bar.update(total_loss / seen, correct / seen)
        return {"train_loss": total_loss / max(seen, 1), "train_accuracy": correct / max(seen, 1)}

    def train_batches(
        self, epoch: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """One :meth:`train_step` per batch of epoch ``epoch`` (0-based); yields each batch's
        detached ``(loss, output, targets)`` after its step."""
        for x, y in self.loader().epoch(epoch):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            loss, output = self.train_step(x, y)
            yield loss, output, y

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, backward, optimizer and scheduler step on one batch; returns (loss, output)."""
        return self.optimizer_step(lambda: self.forward_backward_step(x, y))

    def optimizer_step(
        self, forward_backward: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step: zero the gradients, ``forward_backward()`` (the loss and gradients of this
        step's batch; returns detached ``(loss, output)``), check that loss and gradients are
        finite, step the optimizer (one that needs a closure calls ``forward_backward`` again)
        and the scheduler; returns ``(loss, output)``."""
        self.optimizer.zero_grad(set_to_none=True)
        loss, output = forward_backward()
        if not torch.isfinite(loss):
            self._stop(f"the loss became {float(loss)}")
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        # the largest |gradient| (no sum of squares to overflow): NaN or inf only if one is;
        # get_total_norm is torch >= 2.6 (pyproject's floor)
        if grads and not torch.isfinite(torch.nn.utils.get_total_norm(grads, math.inf)):
            self._stop(
                "the gradients became non-finite",
                f" with a finite loss ({float(loss):.4g}): the backward pass produced them"
                + self.nonfinite_gradient_hint,
            )
        for callback in self.callbacks:
            callback.on_after_backward(self)
        if getattr(self.optimizer, "needs_closure", False):

            def closure() -> torch.Tensor:
                self.optimizer.zero_grad(set_to_none=True)
                return forward_backward()[0]

            # the forward above already updated batch-norm statistics for this step; the
            # closure's re-evaluations must not update them again
            buffers = list(self.model.buffers())
            kept = [buffer.clone() for buffer in buffers]
            self.optimizer.step(closure)
            for buffer, value in zip(buffers, kept, strict=True):
                buffer.copy_(value)
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.global_step += 1
        return loss, output

    def _stop(self, what: str, cause: str = "") -> None:
        """Raise ``TrainingError``: ``what`` happened at this step (``cause``: why, appended),
        the weights were not updated, and how to go on (from the last checkpoint if any)."""
        lower = f"{self.config.lr / 10:g}"
        if self._has_checkpoint():
            advice = (
                f"the checkpoint after epoch {self.epoch} is kept; continue it with a lower "
                f"learning rate: `smallfoot train --resume {self.run_dir} --lr {lower}`"
            )
        else:
            advice = f"train again with a lower learning rate (e.g. --lr {lower}) or check the data"
        raise TrainingError(
            f"{what} at epoch {self.epoch + 1}, step {self.global_step}{cause}; the weights "
            f"were not updated; {advice}"
        )

    def forward_backward_step(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Compute the loss of one batch and its gradients; returns detached (loss, output)."""
        output = self.model(x)
        loss = self.loss_fn(output, y)
        loss.backward()
        return loss.detach(), output.detach()

    @torch.no_grad()
    def evaluate(self, dataset: ArrayDataset | StreamDataset) -> dict[str, float]:
        """Mean loss and accuracy (fraction in [0, 1]) of the model on ``dataset``."""
        was_training = self.model.training
        self.model.eval()
        total_loss, correct = 0.0, 0
        loader = ordered_loader(
            dataset,
            self.config.eval_batch_size,
            workers=self.config.workers,
            pin_memory=self.device.type == "cuda",
        )
        for x, y in loader.epoch(0):
            x, y = x.to(self.device), y.to(self.device)
            output = self.model(x)
            total_loss += float(self.loss_fn(output, y)) * len(y)
            if y.dim() == 1:
                correct += int((self.predict_fn(output) == y).sum())
        self.model.train(was_training)
        n = max(len(dataset), 1)
        return {"loss": total_loss / n, "accuracy": correct / n}

    # -- run directory -----------------------------------------------------------------------
    def checkpoint_path(self) -> Path:
        """``run_dir/checkpoint.pt``."""
        if self.run_dir is None:
            raise ConfigError(
                "this trainer has no run directory; pass run_dir= to save checkpoints"
            )
        return self.run_dir / "checkpoint.pt"

    def save_checkpoint(self) -> Path:
        """Write model, optimizer, scheduler, progress and callback states atomically, with a
        SHA-256 checksum beside the file (``checkpoint.pt.sha256``)."""
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "lr": self.config.lr,
            "global_step": self.global_step,
            "history": self.history,
            "callbacks": [callback.state_dict() for callback in self.callbacks],
        }
        return save_checked(state, self.checkpoint_path())

    def load_checkpoint(self, path: str | Path | None = None) -> None:
        """Restore the state written by :meth:`save_checkpoint` (its checksum verified);
        training continues after its epoch.

        Two fields of the config may differ from the saved run: ``epochs`` (more epochs; the
        schedule is stretched over the new total) and ``lr`` (every parameter group's rate,
        and the schedule's base rates, are scaled by ``new lr / saved lr``)."""
        path = Path(path) if path is not None else self.checkpoint_path()
        if not path.exists():
            raise ConfigError(f"no checkpoint at {path}; nothing to resume")
        state = load_checked(path, "checkpoint", map_location=self.device)
        if not isinstance(state, dict) or not {"model", "optimizer", "epoch"} <= state.keys():
            raise ConfigError(f"checkpoint {path} was not written by smallfoot's Trainer")
        if state["epoch"] > self.config.epochs:
            raise ConfigError(
                f"the checkpoint in {path.parent} is after epoch {state['epoch']}, more than "
                f"the {self.config.epochs} epochs asked for; give --epochs {state['epoch']} or more"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.global_step, self.history = (
            state["epoch"],
            state["global_step"],
            state["history"],
        )
        saved_lr = state.get("lr", self.config.lr)
        if saved_lr != self.config.lr:
            self._scale_learning_rate(self.config.lr / saved_lr)
        for callback, callback_state in zip(self.callbacks, state["callbacks"], strict=True):
            callback.load_state_dict(callback_state)
        MetricsLog(self.run_dir).rewrite(self.history)

    def _scale_learning_rate(self, factor: float) -> None:
        """Multiply every group's current and initial rate, and the schedule's base rates."""
        for group in self.optimizer.param_groups:
            group["lr"] *= factor
            if "initial_lr" in group:
                group["initial_lr"] *= factor
        if hasattr(self.scheduler, "base_lrs"):
            self.scheduler.base_lrs = [lr * factor for lr in self.scheduler.base_lrs]
