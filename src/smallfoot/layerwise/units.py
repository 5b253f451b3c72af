"""Split an ``nn.Sequential`` model into trainable units and sliding-window segments (thesis 6.2, 6.5).

A *unit* is one layer with parameters (a convolution, a linear layer, a residual block, ...)
together with the parameter-free and normalisation layers that follow it (batch norm,
activation, pooling, flatten, dropout). The last unit of a classifier is its head. A
*segment* is ``size`` consecutive units trained together as one subnet; consecutive segments
overlap by ``overlap`` units (segment-wise learning, section 6.5).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from smallfoot.errors import ConfigError

_NORM_TYPES = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


def is_core(module: nn.Module) -> bool:
    """Whether ``module`` starts a new unit: it has parameters and is not a normalisation layer."""
    has_parameters = any(True for _ in module.parameters())
    return has_parameters and not isinstance(module, _NORM_TYPES)


def split_units(model: nn.Module) -> list[nn.Sequential]:
    """The units of ``model``, bottom to top; the last one is the model's head.

    Each unit is an ``nn.Sequential`` holding the model's own child modules under their
    original names, so training a unit trains the model in place. Layers before the first
    core layer go with the first unit.
    """
    if not isinstance(model, nn.Sequential):
        raise ConfigError(
            f"layer-wise training splits nn.Sequential models, got {type(model).__name__}; "
            "use a Sequential baseline (mlp, cnn4, vgg*, resnet*) or wrap your layers in one"
        )
    groups: list[list[tuple[str, nn.Module]]] = []
    for name, child in model.named_children():
        if not groups or (is_core(child) and any(is_core(m) for _, m in groups[-1])):
            groups.append([(name, child)])
        else:
            groups[-1].append((name, child))
    if len(groups) < 2:
        raise ConfigError(
            f"layer-wise training needs at least one trainable unit below the head; "
            f"{type(model).__name__} has {len(groups)} unit(s)"
        )
    return [nn.Sequential(OrderedDict(group)) for group in groups]


def segments(num_units: int, size: int = 1, overlap: int | None = None) -> list[tuple[int, int]]:
    """Half-open ``(start, end)`` unit ranges of a sliding window of ``size`` units.

    ``overlap`` (default ``size - 1``) units are shared by consecutive segments; the last
    segment always ends at ``num_units``, so every unit is trained.
    """
    overlap = size - 1 if overlap is None else overlap
    if not 1 <= size <= num_units:
        raise ConfigError(
            f"unit size {size} must lie between 1 and the model's {num_units} trainable units"
        )
    if not 0 <= overlap < size:
        raise ConfigError(f"overlap {overlap} must lie between 0 and unit size - 1 = {size - 1}")
    stride = size - overlap
    starts = list(range(0, num_units - size + 1, stride))
    if starts[-1] + size < num_units:
        starts.append(num_units - size)
    return [(start, start + size) for start in starts]


def chain(units: list[nn.Sequential]) -> nn.Sequential:
    """One ``nn.Sequential`` of the units' layers, under their original names (shares modules)."""
    return nn.Sequential(OrderedDict((n, m) for unit in units for n, m in unit.named_children()))


def assemble(units: list[nn.Sequential], decision: nn.Module) -> nn.Sequential:
    """The layers of ``units`` followed by a decision block named ``decision`` (shares modules).

    The full trained model with its own head is ``chain(all_units)`` instead, which keeps the
    original layer names, so its ``state_dict`` loads into the original architecture.
    """
    model = chain(units)
    model.add_module("decision", decision)
    return model
