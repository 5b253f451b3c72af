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
from smallfoot.reversible.snr import (
    alpha_batchnorm,
    alpha_batchnorm_toy,
    alpha_leaky_relu,
    measure_alpha,
    snr,
    snr_through_chain,
    to_db,
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
    "alpha_batchnorm",
    "alpha_batchnorm_toy",
    "alpha_leaky_relu",
    "basic_rev_block",
    "hybrid18",
    "hybrid_block",
    "irevnet18",
    "layerwise18",
    "measure_alpha",
    "revnet",
    "revnet18",
    "snr",
    "snr_through_chain",
    "to_db",
]
