"""Reversible networks: activations reconstructed in the backward pass instead of stored."""

from smallfoot.reversible.core import RevBlock, RevSequence, basic_rev_block
from smallfoot.reversible.layers import InvertibleDownsample
from smallfoot.reversible.models import revnet, revnet18

__all__ = [
    "InvertibleDownsample",
    "RevBlock",
    "RevSequence",
    "basic_rev_block",
    "revnet",
    "revnet18",
]
