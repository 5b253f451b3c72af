"""Invertible layers: space-to-depth pooling (i-RevNet's invertible downsampling)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from smallfoot.errors import ShapeError


class InvertibleDownsample(nn.Module):
    """Space-to-depth: ``(N, C, H, W) -> (N, C*b*b, H/b, W/b)``, an exact invertible pooling."""

    invertible = True

    def __init__(self, block_size: int = 2):
        super().__init__()
        self.block_size = block_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rearrange each ``b x b`` patch into channels."""
        b = self.block_size
        if x.dim() != 4 or x.shape[2] % b or x.shape[3] % b:
            raise ShapeError(
                f"InvertibleDownsample({b}) needs (N, C, H, W) with H and W divisible by {b}, "
                f"got {tuple(x.shape)}; pad the input (e.g. --pad-to 32)"
            )
        return F.pixel_unshuffle(x, b)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Depth-to-space, the exact inverse of :meth:`forward`."""
        return F.pixel_shuffle(y, self.block_size)
