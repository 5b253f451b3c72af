"""The ``reversible`` method: train a reversible / invertible network with the memory-free
backward (``--variant revnet|irevnet|layerwise|hybrid``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from smallfoot.errors import ConfigError
from smallfoot.methods import Method, RunContext, register_method
from smallfoot.models import build_model

VARIANT_MODELS = {
    "revnet": "revnet18",
    "irevnet": "irevnet18",
    "layerwise": "layerwise18",
    "hybrid": "hybrid18",
}


@register_method
class Reversible(Method):
    """Train a network whose invertible parts reconstruct activations in the backward pass."""

    name = "reversible"
    description = (
        "reversible nets (revnet18, irevnet18, layerwise18, hybrid18): activations "
        "reconstructed in the backward pass"
    )
    custom_backward = True

    @dataclass
    class Options:
        variant: Literal["revnet", "irevnet", "layerwise", "hybrid"] = "revnet"
        """which design: revnet18, irevnet18, layerwise18 or hybrid18"""
        width: int | None = None
        """channels of the first stage (default: the model's parameter-matched width)"""
        blocks_per_stage: int = 2
        """reversible blocks per stage (the depth)"""
        dropout: float = 0.0
        """dropout inside each residual branch (revnet/irevnet; replayed exactly in backward)"""
        negative_slope: float = 0.5
        """invertible Leaky ReLU slope (layerwise/hybrid)"""
        eps_i: float = 0.1
        """smallest scale of the invertible batch norm (layerwise/hybrid)"""

        def validate(self) -> None:
            """Reject options the chosen variant does not have."""
            layerwise = self.variant in ("layerwise", "hybrid")
            if layerwise and self.dropout:
                raise ConfigError(
                    f"--dropout is not invertible, so the {self.variant} variant has none; "
                    "use --variant revnet or irevnet for dropout"
                )

    def build_model(self, ctx: RunContext) -> nn.Module:
        """The variant's model with the method's options (``--model`` is ignored)."""
        opts = self.options
        kwargs = {"blocks_per_stage": opts.blocks_per_stage}
        if opts.width is not None:
            kwargs["width"] = opts.width
        if opts.variant in ("layerwise", "hybrid"):
            kwargs.update(negative_slope=opts.negative_slope, eps_i=opts.eps_i)
        else:
            kwargs["dropout"] = opts.dropout
        return build_model(VARIANT_MODELS[opts.variant], ctx.input_shape, ctx.num_classes, **kwargs)
