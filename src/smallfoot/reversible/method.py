"""The ``reversible`` method: train ``revnet18`` with the memory-free reversible backward."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from smallfoot.methods import Method, RunContext, register_method
from smallfoot.models import build_model


@register_method
class Reversible(Method):
    """Train a RevNet whose reversible stages recompute activations in the backward pass."""

    name = "reversible"
    description = "RevNet-18: reversible blocks, activations reconstructed in the backward pass"
    custom_backward = True

    @dataclass
    class Options:
        width: int = 64
        """channels of the first stage (doubled per stage)"""
        blocks_per_stage: int = 2
        """reversible blocks per stage"""
        dropout: float = 0.0
        """dropout inside each residual branch (replayed exactly in the backward pass)"""

    def build_model(self, ctx: RunContext) -> nn.Module:
        """``revnet18`` with the method's width/depth/dropout (``--model`` is ignored)."""
        return build_model(
            "revnet18",
            ctx.input_shape,
            ctx.num_classes,
            width=self.options.width,
            blocks_per_stage=self.options.blocks_per_stage,
            dropout=self.options.dropout,
        )
