"""Decision blocks: the temporary classifier put on top of a unit while it trains (thesis 6.2.2,
figure 6.4), and the search that sizes one to a memory budget.

A decision block is ``convs`` down-convolutions (3x3, stride 2, batch norm, ReLU) of ``width``
channels, an adaptive average pool to ``pool x pool`` (``pool=1``: global pooling; ``pool=0``:
no pooling, the full map is flattened: the thesis' single affine layer for its 4-layer CNN),
and a linear layer. Flat inputs ``(B, D)`` get a single linear layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from smallfoot.errors import BudgetError, ShapeError


def decision_block(
    input_shape: tuple[int, ...],
    num_classes: int,
    convs: int = 0,
    width: int | None = None,
    pool: int = 2,
) -> nn.Sequential:
    """A decision block for inputs of ``input_shape`` (one sample: ``(C, H, W)`` or ``(D,)``).

    ``width`` (channels of each down-conv) defaults to the input's channel count.
    """
    if len(input_shape) == 1:
        if convs:
            raise ShapeError(f"down-convolutions need (C, H, W) inputs, got {input_shape}")
        return nn.Sequential(nn.Linear(input_shape[0], num_classes))
    if len(input_shape) != 3:
        raise ShapeError(f"decision blocks take (C, H, W) or (D,) inputs, got {input_shape}")
    if pool < 0:
        raise ShapeError(f"decision pool size must be at least 0 (0: no pooling), got {pool}")
    c, h, w = input_shape
    width = c if width is None else int(width)
    layers: list[nn.Module] = []
    for _ in range(convs):
        stride = 2 if min(h, w) >= 2 * pool else 1
        layers += [
            nn.Conv2d(c, width, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        c, h, w = width, (h - 1) // stride + 1, (w - 1) // stride + 1
    if pool == 0:
        layers += [nn.Flatten(), nn.Linear(c * h * w, num_classes)]
        return nn.Sequential(*layers)
    side = min(pool, h, w)
    layers += [nn.AdaptiveAvgPool2d(side), nn.Flatten(), nn.Linear(c * side * side, num_classes)]
    return nn.Sequential(*layers)


def candidate_configs(
    input_shape: tuple[int, ...], max_convs: int = 4, widths: Sequence[int] | None = None
) -> list[tuple[int, int | None]]:
    """``(convs, width)`` pairs the search tries, smallest first: no conv, then 1..max_convs
    down-convs of each width (default: half, equal and double the input's channels)."""
    if len(input_shape) != 3:
        return [(0, None)]
    c = input_shape[0]
    widths = sorted(set(widths or (max(8, c // 2), c, 2 * c)))
    return [(0, None)] + [(n, w) for n in range(1, max_convs + 1) for w in widths]


def fit_decision_block(
    subnet_for: Callable[[nn.Module], nn.Module],
    input_shape: tuple[int, ...],
    num_classes: int,
    batch: tuple[torch.Tensor, torch.Tensor],
    reference_peak: int,
    budget: float = 0.3,
    loss_fn: Callable | None = None,
    make_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None = None,
    max_convs: int = 4,
    widths: Sequence[int] | None = None,
    pool: int = 2,
    strict: bool = True,
    meter: Callable | None = None,
) -> tuple[nn.Sequential, dict[str, Any]]:
    """The largest decision block whose *measured* training peak stays within the budget.

    ``subnet_for(decision)`` builds the module trained in one step (feed + unit + decision);
    each candidate of :func:`candidate_configs` on ``input_shape`` (the unit's output shape) is
    measured by ``smallfoot.memory.measure`` on ``batch`` with the optimizer
    ``make_optimizer(trainable parameters)`` (default SGD with momentum over the subnet's
    trainable parameters). The candidate with the highest peak not above
    ``budget * reference_peak`` bytes wins (the thesis fills its memory budget). Wider
    candidates of a conv count are skipped once one exceeds the budget.

    Returns ``(block, record)`` where ``record`` has ``convs``, ``width``, ``peak`` (bytes),
    ``fraction`` (of ``reference_peak``), ``within_budget``, ``memory`` (the meter's report as
    a dict), ``report`` (the :class:`MemoryReport` itself) and ``tried``. When no candidate fits, raises :class:`BudgetError` (``strict``) or returns
    the cheapest candidate measured, with ``within_budget`` False. ``meter`` is
    ``smallfoot.memory.measure`` (default) or ``smallfoot.memory.estimate``.
    """
    from smallfoot.memory import measure

    meter = meter or measure
    if budget <= 0:
        raise BudgetError(f"the memory budget must be a positive fraction, got {budget}")
    limit = budget * reference_peak
    tried: list[dict[str, Any]] = []
    best: tuple[nn.Sequential, dict[str, Any]] | None = None
    cheapest: tuple[nn.Sequential, dict[str, Any]] | None = None
    skip_convs: set[int] = set()
    for convs, width in candidate_configs(input_shape, max_convs, widths):
        if convs in skip_convs:
            continue
        block = decision_block(input_shape, num_classes, convs, width, pool)
        subnet = subnet_for(block)
        trainable = [p for p in subnet.parameters() if p.requires_grad]
        if hasattr(subnet, "trainable_parameters"):
            trainable = subnet.trainable_parameters()
        optimizer = (
            make_optimizer(trainable)
            if make_optimizer is not None
            else torch.optim.SGD(trainable, lr=0.01, momentum=0.9)
        )
        measured = meter(subnet, batch, loss_fn=loss_fn, optimizer=optimizer)
        peak = int(measured.peak)
        tried.append({"convs": convs, "width": width, "peak": peak})
        record = {
            "convs": convs,
            "width": width,
            "peak": peak,
            "fraction": peak / reference_peak,
            "within_budget": peak <= limit,
            "memory": measured.to_dict(),
            "report": measured,
        }
        if cheapest is None or peak < cheapest[1]["peak"]:
            cheapest = (block, record)
        if peak > limit:
            skip_convs.add(convs)
            continue
        if best is None or peak > best[1]["peak"]:
            best = (block, record)
    if best is None and not strict:
        best = cheapest
    if best is None:
        smallest = min(t["peak"] for t in tried)
        needed = math.ceil(100 * smallest / reference_peak + 1e-6) / 100
        raise BudgetError(
            f"no decision block fits a budget of {budget:.0%} of full backprop "
            f"({limit / 2**20:.1f} MiB): the smallest measured needs {smallest / 2**20:.1f} MiB "
            f"({smallest / reference_peak:.1%}) for a unit with output {tuple(input_shape)}; "
            f"pass --budget {needed:g}, or --strict-budget false to train with the cheapest "
            "block anyway, or --budget 0 for no budget"
        )
    block, record = best
    record["tried"] = tried
    return block, record
