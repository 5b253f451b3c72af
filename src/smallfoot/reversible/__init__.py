"""Reversible and invertible networks: activations reconstructed in the backward pass."""

from smallfoot.reversible.core import (
    InvertibleConv2d,
    RevBlock,
    RevSequence,
    basic_rev_block,
)
from smallfoot.reversible.layers import (
    BatchPool,
    BatchUnpool,
    ChannelPool,
    InvertibleBatchNorm2d,
    InvertibleLeakyReLU,
    InvertibleSequential,
)
from smallfoot.reversible.models import (
    hybrid18,
    hybrid_block,
    irevnet18,
    layerwise18,
    revnet,
    revnet18,
)

__all__ = [
    "BatchPool",
    "BatchUnpool",
    "ChannelPool",
    "InvertibleBatchNorm2d",
    "InvertibleConv2d",
    "InvertibleLeakyReLU",
    "InvertibleSequential",
    "RevBlock",
    "RevSequence",
    "basic_rev_block",
    "hybrid18",
    "hybrid_block",
    "irevnet18",
    "layerwise18",
    "revnet",
    "revnet18",
]
