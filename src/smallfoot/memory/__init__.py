"""The memory meter: every memory figure in smallfoot comes from here.

``measure`` runs one real training step and follows every tensor storage; ``estimate`` runs
the same step on fake tensors. Both return a :class:`MemoryReport`.
"""

from smallfoot.memory.meter import (
    CATEGORIES,
    LOSS_MODULE,
    MemoryReport,
    default_loss,
    estimate,
    measure,
    unique_storage_bytes,
)
from smallfoot.memory.timeline import plot_timeline, save_timeline

__all__ = [
    "CATEGORIES",
    "LOSS_MODULE",
    "MemoryReport",
    "default_loss",
    "estimate",
    "measure",
    "plot_timeline",
    "save_timeline",
    "unique_storage_bytes",
]
