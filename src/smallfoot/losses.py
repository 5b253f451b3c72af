"""Output losses, built by name: ``build_loss(name, num_classes, **options)``.

Every loss comes with a ``predict_fn`` turning raw outputs into class indices, so the
Trainer reports accuracy the same way whatever the output activation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from smallfoot.errors import UnknownNameError


def argmax_predict(output: torch.Tensor) -> torch.Tensor:
    """Class indices ``(B,)`` of the largest raw output ``(B, K)``."""
    return output.argmax(dim=1)


@dataclass(frozen=True)
class LossInfo:
    """A registered loss: its name, description and builder ``(num_classes, **options) -> nn.Module``."""

    name: str
    description: str
    builder: Callable[..., nn.Module]


_REGISTRY: dict[str, LossInfo] = {}


def register_loss(name: str, description: str):
    """Decorator registering a loss builder ``(num_classes, **options) -> nn.Module`` as ``name``."""

    def decorate(builder):
        _REGISTRY[name] = LossInfo(name, description, builder)
        return builder

    return decorate


def list_losses() -> list[LossInfo]:
    """The registered losses, sorted by name."""
    return [info for _, info in sorted(_REGISTRY.items())]


def build_loss(
    name: str, num_classes: int, **options
) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    """Build loss ``name``; returns ``(loss_fn(output, target) -> scalar, predict_fn(output) -> classes)``."""
    if name not in _REGISTRY:
        raise UnknownNameError("loss", name, sorted(_REGISTRY))
    loss = _REGISTRY[name].builder(num_classes, **options)
    return loss, getattr(loss, "predict", argmax_predict)


class SoftmaxCrossEntropy(nn.Module):
    """Softmax + cross-entropy on logits ``(B, K)`` and class indices ``(B,)``; mean over the batch."""

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output, target)


@register_loss("softmax-ce", "softmax + cross-entropy (the usual classifier loss)")
def _softmax_ce(num_classes: int) -> nn.Module:
    return SoftmaxCrossEntropy()
