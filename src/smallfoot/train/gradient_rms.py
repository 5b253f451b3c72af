"""RMS of the error gradients per layer and epoch (thesis figure 4.3), as a Trainer callback."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from smallfoot.errors import ConfigError
from smallfoot.train.trainer import Callback, Trainer

WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the model's linear and convolutional layers, in registration order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)]


class GradientRMS(Callback):
    """Records, per epoch, the RMS of the error gradient ``dL/dz`` at the output of the
    network's last layer and of every ``every``-th hidden weight layer (2nd, 4th, ...).

    ``z`` is a layer's pre-activation output (what a ``Linear``/``Conv`` module returns). The
    gradients are those of the batch-summed loss, i.e. per-sample error deltas such as ``y - t``
    at the output (the batch-mean gradient times the batch size), so runs with different batch
    sizes compare. The RMS runs over every element of every training batch of the epoch.

    ``metrics["grad_rms"]`` gets ``{layer name: rms}`` at each epoch end; the names are the
    module names, with ``"output"`` for the last layer.
    """

    def __init__(self, model: nn.Module, every: int = 2):
        if every < 1:
            raise ConfigError(f"GradientRMS every must be >= 1, got {every}")
        layers = weight_layers(model)
        if not layers:
            raise ConfigError("GradientRMS needs a model with Linear or Conv layers")
        hidden = layers[:-1]
        chosen = [(name, m) for i, (name, m) in enumerate(hidden, start=1) if i % every == 0]
        self.layers = [("output", layers[-1][1])] + chosen
        self.handles: list[Any] = []
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def on_train_start(self, trainer: Trainer) -> None:
        """Hook the chosen layers (their outputs' gradients are recorded in training mode)."""
        for name, module in self.layers:
            self.handles.append(module.register_forward_hook(self._forward_hook(name)))
        self._reset()

    def _reset(self) -> None:
        self.sums = {name: 0.0 for name, _ in self.layers}
        self.counts = {name: 0 for name, _ in self.layers}

    def _forward_hook(self, name: str):
        def hook(module: nn.Module, inputs, output: torch.Tensor) -> None:
            if module.training and torch.is_grad_enabled() and output.requires_grad:
                batch = output.shape[0]

                def record(grad: torch.Tensor) -> None:
                    self.sums[name] += float((grad.detach().double() * batch).pow(2).sum())
                    self.counts[name] += grad.numel()

                output.register_hook(record)

        return hook

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Start a fresh accumulation for this epoch."""
        self._reset()

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, Any]) -> None:
        """Add ``grad_rms`` ``{layer: rms}`` to the epoch's metrics."""
        metrics["grad_rms"] = {
            name: math.sqrt(self.sums[name] / self.counts[name]) if self.counts[name] else None
            for name, _ in self.layers
        }

    def on_train_end(self, trainer: Trainer) -> None:
        """Remove the hooks."""
        for handle in self.handles:
            handle.remove()
        self.handles = []
