"""A DDP communication hook that sends entropy-coded gradients, with error feedback.

    state = EntropyHookState()
    ddp.register_comm_hook(state, entropy_hook)

Each bucket's gradient plus the error left over from the previous step is quantised and
range-coded by :mod:`smallfoot.compress` (one package per bucket), the packages are exchanged
with ``all_gather`` and every rank averages the decoded gradients in rank order (float64), so
all ranks step with bit-identical gradients. What quantisation dropped on this rank is kept
and added to the next step's gradient of the same bucket, as PowerSGD does.
"""

# No ``from __future__ import annotations``: ``register_comm_hook`` checks the hook's
# annotations as objects (a string "dist.GradBucket" is refused).

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from smallfoot.compress import CodecConfig, decode, encode
from smallfoot.distributed.averaging import all_gather_bytes


@dataclass
class EntropyHookState:
    """State of :func:`entropy_hook`.

    Attributes:
        config: the codec settings (thesis: c = 6, M = 4, F = 0.03).
        process_group: the group to average over (None: the default group).
        errors: per bucket index, the quantisation error to add to the next gradient.
        bytes_sent: bytes this rank sent since the state was made.
        values_sent: gradient values this rank sent since the state was made.
    """

    config: CodecConfig = field(default_factory=CodecConfig)
    process_group: dist.ProcessGroup | None = None
    errors: dict[int, torch.Tensor] = field(default_factory=dict)
    bytes_sent: int = 0
    values_sent: int = 0


def entropy_hook(
    state: EntropyHookState, bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    """Average one bucket's gradients over ranks through entropy-coded packages.

    Returns a completed Future holding the averaged flat gradient (the bucket's buffer, updated
    in place). The exchange runs synchronously inside the hook.
    """
    grad = bucket.buffer()
    index = bucket.index()
    error = state.errors.get(index)
    # DDP rebuilds its buckets after the first step; an error of another size is stale.
    corrected = grad if error is None or error.shape != grad.shape else grad + error
    name = f"bucket{index}"
    package = encode(corrected, name, state.config)
    state.errors[index] = corrected - decode(package, name).to(grad.device)
    state.bytes_sent += len(package)
    state.values_sent += grad.numel()
    received = all_gather_bytes(package, state.process_group)
    total = sum(decode(p, name, rank).to(torch.float64) for rank, p in enumerate(received))
    grad.copy_(total / len(received))
    future: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    future.set_result(grad)
    return future
