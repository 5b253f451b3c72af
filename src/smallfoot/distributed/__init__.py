"""Data-parallel training on torch.distributed, with the thesis' compressed exchanges.

``average_parameters(model)`` averages entropy-coded parameters across ranks (thesis
chapter 3); ``entropy_hook`` is a DDP communication hook for gradients with error feedback;
``launch(config, nproc)`` runs the normal training data-parallel on local processes.
"""

from smallfoot.distributed.averaging import (
    CompressedAveraging,
    all_gather_bytes,
    average_parameters,
)
from smallfoot.distributed.groups import end_process_group
from smallfoot.distributed.hooks import EntropyHookState, entropy_hook
from smallfoot.distributed.launcher import (
    DistributedTrainer,
    ShardedLoader,
    check_launch,
    launch,
    train_rank,
)

__all__ = [
    "CompressedAveraging",
    "DistributedTrainer",
    "EntropyHookState",
    "ShardedLoader",
    "all_gather_bytes",
    "average_parameters",
    "check_launch",
    "end_process_group",
    "entropy_hook",
    "launch",
    "train_rank",
]
