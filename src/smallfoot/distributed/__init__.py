"""Data-parallel training on torch.distributed, with the thesis' compressed exchanges.

``average_parameters(model)`` averages entropy-coded parameters across ranks (thesis
chapter 3); ``entropy_hook`` is a DDP communication hook for gradients with error feedback.
"""

from smallfoot.distributed.averaging import (
    CompressedAveraging,
    all_gather_bytes,
    average_parameters,
)
from smallfoot.distributed.hooks import EntropyHookState, entropy_hook

__all__ = [
    "CompressedAveraging",
    "EntropyHookState",
    "all_gather_bytes",
    "average_parameters",
    "entropy_hook",
]
