"""Cross-check against PyTorch's own tracker, ``torch.distributed._tools.mem_tracker.MemTracker``.

MemTracker is a dispatch-mode tracker too, written independently of ours; agreement on the
peak is evidence that neither is missing allocations. It does not charge the input batch
(created before tracking) unless an op returns a view of it (a ``Flatten``): then the batch
counts as an activation. So compare its peak with ``report.peak - report.inputs``, plus the
batch's bytes when the model starts with a view.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.distributed._tools.mem_tracker import MemTracker

from smallfoot.memory.meter import _Restore, _zero_grad, default_loss, split_batch


def memtracker_peak(
    model: nn.Module,
    batch,
    loss_fn: Callable | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    steps: int = 2,
) -> dict[str, int]:
    """MemTracker's peak over ``steps`` training steps (``reset_mod_stats`` between them), in
    bytes: ``total`` and one entry per MemTracker category (Parameter, Buffer, Gradient,
    Activation, Temp, Optstate, Other). The model and optimizer are restored afterwards."""
    x, y = split_batch(batch)
    loss_fn = loss_fn if loss_fn is not None else default_loss
    with _Restore(model, optimizer):
        model.train()
        tracker = MemTracker()
        tracker.track_external(model, *([optimizer] if optimizer is not None else []))
        with tracker:
            for step in range(steps):
                if step:
                    tracker.reset_mod_stats()
                _zero_grad(model, optimizer)
                loss_fn(model(x), y).backward()
                if optimizer is not None:
                    optimizer.step()
        snapshot = next(iter(tracker.get_tracker_snapshot("peak").values()))
    out = {str(getattr(k, "value", k)): int(v) for k, v in snapshot.items()}
    out["total"] = out.pop("Total")
    return out
