"""Forward and backward dropout: explicit stand-ins for the implicit interlayer regularisation
that a unit loses when it is trained alone (thesis section 6.6.3).

* Forward dropout drops the unit's *input* with a probability that decays by ``decay`` per
  epoch, imitating the input distribution that keeps changing while lower layers learn.
* Backward dropout leaves the forward value untouched and drops elements of the *gradient*
  flowing from the decision block into the unit, imitating the noisy gradient a layer gets
  from the layers above it. The decision block itself still sees the exact gradient.
"""

from __future__ import annotations

import torch
from torch import nn

from smallfoot.errors import ConfigError


def _check_probability(p: float, what: str) -> float:
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"{what} probability must lie in [0, 1), got {p}")
    return float(p)


class GradientDropout(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by a Bernoulli(1 - p) mask / (1 - p).

    The mask is drawn in backward from the default generator of the gradient's device, so
    seeding that generator before the step replays the same mask.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        """Return ``x`` unchanged (a view: nothing is copied or saved)."""
        ctx.p = p
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        """Inverted dropout of ``grad`` (same shape); no gradient for ``p``."""
        keep = torch.rand_like(grad) >= ctx.p
        return grad * keep / (1.0 - ctx.p), None


class BackwardDropout(nn.Module):
    """Dropout of the gradient only (forward is the identity); active in training mode."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = _check_probability(p, "backward dropout")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` unchanged; in training mode its gradient is dropped with probability ``p``."""
        if self.training and self.p > 0 and x.requires_grad:
            return GradientDropout.apply(x, self.p)
        return x

    def extra_repr(self) -> str:
        return f"p={self.p}"


class InputDropout(nn.Module):
    """Element-wise dropout of the unit's input, probability ``p0 * decay ** epoch``."""

    def __init__(self, p0: float = 0.0, decay: float = 0.95):
        super().__init__()
        self.p0 = _check_probability(p0, "forward dropout")
        if not 0.0 < decay <= 1.0:
            raise ConfigError(f"forward dropout decay must lie in (0, 1], got {decay}")
        self.decay = float(decay)
        self.p = self.p0

    def set_epoch(self, epoch: int) -> None:
        """Use the probability of epoch ``epoch`` (0-based, counted per unit)."""
        self.p = self.p0 * self.decay**epoch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Inverted dropout of ``x`` in training mode; identity in eval mode."""
        return nn.functional.dropout(x, self.p, self.training) if self.p > 0 else x

    def extra_repr(self) -> str:
        return f"p0={self.p0}, decay={self.decay}, p={self.p:.4f}"
