"""Decision blocks: the temporary classifier put on top of a unit while it trains (thesis 6.2.2,
figure 6.4), and the search that sizes one to a memory budget.

A decision block is ``convs`` down-convolutions (3x3, stride 2, batch norm, ReLU) of ``width``
channels, an adaptive average pool to ``pool x pool`` (``pool=1``: global pooling; ``pool=0``:
no pooling, the full map is flattened: the thesis' single affine layer for its 4-layer CNN),
and a linear layer, or, with ``head``, fresh copies of the model's own fully connected head
(the thesis' block for VGG, section 6.4). Flat inputs ``(B, D)`` get a single linear layer.

A choice among blocks is a dict ``{"convs", "width", "pool", "head"}`` (``head``: whether the
model's head replaces the linear layer); :func:`block_name` names it for tables.
:func:`fit_decision_block` measures every candidate and keeps, within a memory budget, the
largest (the thesis fills its budget) or, given a ``probe``, the best probe accuracy per byte
of training peak; :func:`probe_accuracy` is that probe: a few training steps on real data.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from smallfoot.data import ArrayDataset, BatchLoader
from smallfoot.errors import BudgetError, ShapeError


def fresh_head(head: nn.Sequential, in_features: int) -> nn.Sequential:
    """Re-initialised copy of the fully connected ``head`` (starting with an ``nn.Linear``) whose
    first linear layer takes ``in_features`` inputs."""
    if not len(head) or not isinstance(head[0], nn.Linear):
        raise ShapeError("a decision head must start with an nn.Linear layer")
    layers = [nn.Linear(in_features, head[0].out_features)]
    for layer in copy.deepcopy(list(head)[1:]):
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
        layers.append(layer)
    return nn.Sequential(*layers)


def decision_block(
    input_shape: tuple[int, ...],
    num_classes: int,
    convs: int = 0,
    width: int | None = None,
    pool: int = 2,
    head: nn.Sequential | None = None,
) -> nn.Sequential:
    """A decision block for inputs of ``input_shape`` (one sample: ``(C, H, W)`` or ``(D,)``).

    ``width`` (channels of each down-conv) defaults to the input's channel count. ``head`` (the
    model's fully connected layers, see :func:`model_head`) replaces the final linear layer by
    re-initialised copies of those layers, the first one sized to the pooled map.
    """
    if len(input_shape) == 1:
        if convs:
            raise ShapeError(f"down-convolutions need (C, H, W) inputs, got {input_shape}")
        if head is not None:
            return fresh_head(head, input_shape[0])
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
        layers.append(nn.Flatten())
        features = c * h * w
    else:
        side = min(pool, h, w)
        layers += [nn.AdaptiveAvgPool2d(side), nn.Flatten()]
        features = c * side * side
    if head is not None:
        layers += list(fresh_head(head, features))
    else:
        layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)


def model_head(
    units: Sequence[nn.Sequential], input_shape: tuple[int, ...]
) -> tuple[nn.Sequential, int] | None:
    """The model's own fully connected head and the side of the map it is fed.

    ``units`` are :func:`~smallfoot.layerwise.split_units` of the model, ``input_shape`` one
    input sample. The head is the run of trailing units that start with an ``nn.Linear`` (their
    layers, shared); the side is that of the last 4-D map a layer puts out before the model
    flattens it (7 for VGG's ImageNet head, the final map's side for its CIFAR head). None for
    models without such a map (an MLP: the block is then a single linear layer).
    """
    first = len(units)
    while first > 0 and isinstance(units[first - 1][0], nn.Linear):
        first -= 1
    if first in (0, len(units)):
        return None
    head = nn.Sequential(*[layer for unit in units[first:] for layer in unit])
    parameter = next(units[0].parameters())
    z = torch.zeros(2, *input_shape, dtype=parameter.dtype, device=parameter.device)
    side = None
    with torch.no_grad():
        for unit in units[:first]:
            was_training = unit.training
            unit.eval()
            for layer in unit:
                z = layer(z)
                if z.dim() == 4:
                    side = min(z.shape[2], z.shape[3])
            unit.train(was_training)
    return (head, side) if side is not None else None


def block_name(choice: dict[str, Any]) -> str:
    """A short name of a decision-block choice: ``flatten``, ``pool2``, ``head``, ``2conv16+pool2``."""
    end = "head" if choice.get("head") else None
    pool = choice.get("pool", 2)
    if end is None:
        end = "flatten" if pool == 0 else f"pool{pool}"
    elif pool != 0:
        end = f"pool{pool}+head"
    convs = choice.get("convs") or 0
    return f"{convs}conv{choice.get('width') or ''}+{end}" if convs else end


@torch.no_grad()
def _accuracy(net: nn.Module, data: ArrayDataset, prefix, predict_fn, batch_size: int) -> float:
    net.eval()
    correct = 0
    device = next(net.parameters()).device
    for x, y in BatchLoader(data, batch_size, shuffle=False).epoch(0):
        x, y = x.to(device), y.to(device)
        out = net(prefix(x))
        predicted = predict_fn(out) if predict_fn is not None else out.argmax(dim=1)
        correct += int((predicted == y).sum())
    return correct / len(data)


def probe_accuracy(
    subnet: nn.Module,
    train_set: ArrayDataset,
    eval_set: ArrayDataset,
    loss_fn: Callable,
    make_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
    steps: int = 20,
    batch_size: int = 128,
    seed: int = 0,
    predict_fn: Callable | None = None,
    prefix: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """Accuracy (fraction) on ``eval_set`` of ``subnet`` after ``steps`` training steps on
    shuffled batches of ``train_set``; the subnet's weights and batch-norm statistics are
    restored afterwards, so probing leaves the model as it was.

    ``subnet`` has ``trainable_parameters()`` (a :class:`~smallfoot.layerwise.Subnet`);
    ``make_optimizer(parameters)`` builds the optimizer it trains with; ``prefix`` maps raw
    inputs to what the subnet takes (default: the identity).
    """
    prefix = prefix or (lambda x: x)
    saved = copy.deepcopy(subnet.state_dict())
    optimizer = make_optimizer(subnet.trainable_parameters())
    loader = BatchLoader(train_set, min(batch_size, len(train_set)), seed=seed)
    device = next(subnet.parameters()).device
    done, epoch = 0, 0
    subnet.train()
    while done < steps:
        for x, y in loader.epoch(epoch):
            x, y = x.to(device), y.to(device)
            with torch.no_grad():
                x = prefix(x)
            optimizer.zero_grad(set_to_none=True)
            loss_fn(subnet(x), y).backward()
            optimizer.step()
            done += 1
            if done == steps:
                break
        epoch += 1
    accuracy = _accuracy(subnet, eval_set, prefix, predict_fn, 512)
    subnet.load_state_dict(saved)
    subnet.train()
    return accuracy


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
    candidates: Sequence[dict[str, Any]] | None = None,
    head: nn.Sequential | None = None,
    probe: Callable[[nn.Module], float] | None = None,
) -> tuple[nn.Sequential, dict[str, Any]]:
    """Choose a decision block by its *measured* training peak (and, given ``probe``, its accuracy).

    ``subnet_for(decision)`` builds the module trained in one step (feed + unit + decision);
    each candidate on ``input_shape`` (the unit's output shape) is measured by ``meter``
    (``smallfoot.memory.measure`` by default, or ``estimate``) on ``batch`` with the optimizer
    ``make_optimizer(trainable parameters)`` (default SGD with momentum). ``candidates`` are
    choices ``{"convs", "width", "pool", "head"}`` (``head``: use the model's ``head`` layers);
    by default :func:`candidate_configs` pooled to ``pool``. Among the candidates whose peak is
    at most ``budget * reference_peak`` bytes (``budget=math.inf``: no limit), the winner is
    the one with the highest ``probe(subnet) / peak`` (probe accuracy per byte; ties go to the
    cheaper) or, without ``probe``, the largest peak (the thesis fills its memory budget).
    Wider default candidates of a conv count are skipped once one exceeds the budget.

    Returns ``(block, record)``: ``record`` is the winning choice with ``peak`` (bytes),
    ``fraction`` (of ``reference_peak``), ``within_budget``, ``memory`` (the meter's report as
    a dict), ``report`` (the :class:`MemoryReport`) and ``tried`` (every candidate's choice,
    peak and, probed, ``probe_accuracy``). When no candidate fits, raises
    :class:`BudgetError` (``strict``) or returns the cheapest candidate, ``within_budget`` False.
    """
    from smallfoot.memory import measure

    meter = meter or measure
    if budget <= 0:
        raise BudgetError(f"the memory budget must be a positive fraction, got {budget}")
    if candidates is None:
        candidates = [
            {"convs": convs, "width": width, "pool": pool, "head": False}
            for convs, width in candidate_configs(input_shape, max_convs, widths)
        ]
    limit = budget * reference_peak
    tried: list[dict[str, Any]] = []
    fitting: list[tuple[nn.Sequential, dict[str, Any], nn.Module]] = []
    cheapest: tuple[nn.Sequential, dict[str, Any]] | None = None
    skip_convs: set[int] = set()
    for choice in candidates:
        convs = choice.get("convs") or 0
        if convs in skip_convs:
            continue
        block = decision_block(
            input_shape,
            num_classes,
            convs,
            choice.get("width"),
            choice.get("pool", pool),
            head if choice.get("head") else None,
        )
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
        entry = {**choice, "peak": peak}
        tried.append(entry)
        record = {
            **choice,
            "peak": peak,
            "fraction": peak / reference_peak,
            "within_budget": peak <= limit,
            "memory": measured.to_dict(),
            "report": measured,
        }
        if cheapest is None or peak < cheapest[1]["peak"]:
            cheapest = (block, record)
        if peak > limit:
            if convs:
                skip_convs.add(convs)
            continue
        fitting.append((block, record, subnet, entry))
    if not fitting and strict:
        smallest = min(t["peak"] for t in tried)
        needed = math.ceil(100 * smallest / reference_peak + 1e-6) / 100
        raise BudgetError(
            f"no decision block fits a budget of {budget:.0%} of full backprop "
            f"({limit / 2**20:.1f} MiB): the smallest measured needs {smallest / 2**20:.1f} MiB "
            f"({smallest / reference_peak:.1%}) for a unit with output {tuple(input_shape)}; "
            f"pass --budget {needed:g}, or --strict-budget false to train with the cheapest "
            "block anyway, or --budget 0 for no budget"
        )
    if not fitting:
        block, record = cheapest
    elif probe is not None and len(fitting) > 1:
        for _, record, subnet, entry in fitting:
            record["probe_accuracy"] = entry["probe_accuracy"] = probe(subnet)
        block, record, _, _ = max(
            fitting, key=lambda f: (f[1]["probe_accuracy"] / f[1]["peak"], -f[1]["peak"])
        )
    else:
        block, record, _, _ = max(fitting, key=lambda f: f[1]["peak"])
    record["tried"] = tried
    return block, record
