"""``convert``: turn a plain CNN into a Facto-CNN, and the model-wide operations of the schedule."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from smallfoot.errors import ConfigError
from smallfoot.facto.layers import (
    CompactBatchNorm2d,
    FactoConv2d,
    FactoLinear,
    MaskMaxPool2d,
    MaskReLU,
    OffsetMaxPool2d,
    PooledScale,
    _check_kernel,
    _Factorized,
    internal_size,
)
from smallfoot.models.fixup import Scale

_CONVERTED = (
    FactoConv2d,
    FactoLinear,
    MaskReLU,
    MaskMaxPool2d,
    OffsetMaxPool2d,
    PooledScale,
    CompactBatchNorm2d,
)


@dataclass
class LayerChange:
    """What :func:`convert` did to one layer.

    Attributes:
        name: the module's qualified name in the model.
        kind: ``conv``, ``linear``, ``scale``, ``relu``, ``maxpool`` or ``batchnorm``.
        converted: whether the layer was replaced.
        detail: the new layer (rank, kernel), or why the layer was kept.
        saved_ratio: expected fraction of this layer's saved bytes removed (Table 2 of the
            paper: ``1 - C_R / (C_I k k)`` for a conv with compression kernel k, ``1 - R/I``
            for a linear layer, ``1 - 1/k^2`` for a scaling layer, ``1 - 1/32`` for ReLU,
            ``1 - (1/8) / (4 + 8 / (k_h k_w))`` for a max pool with a bit mask,
            ``1 - (1/(s_h s_w)) / (4 + 8/(s_h s_w))`` with uint8 offsets, ``1 - 1/4`` for a
            batch norm keeping an int8 normalised input of a float32 net), 0 when kept.
        trainable_before: trainable parameter elements before.
        trainable_after: trainable parameter elements during low-rank training.
    """

    name: str
    kind: str
    converted: bool
    detail: str
    saved_ratio: float
    trainable_before: int
    trainable_after: int


@dataclass
class Conversion:
    """The result of :func:`convert`: the (same, modified) model and one entry per layer."""

    model: nn.Module
    layers: list[LayerChange]

    def rows(self) -> list[dict]:
        """The per-layer entries as plain dicts (for JSON and tables)."""
        return [asdict(change) for change in self.layers]

    def __str__(self) -> str:
        lines = [f"{'layer':<28} {'kind':<9} {'action':<9} {'saved':>6}  detail"]
        for c in self.layers:
            action = "converted" if c.converted else "kept"
            lines.append(
                f"{c.name:<28} {c.kind:<9} {action:<9} {100 * c.saved_ratio:5.1f}%  {c.detail}"
            )
        return "\n".join(lines)


def _kind(module: nn.Module) -> str | None:
    if isinstance(module, nn.Conv2d):
        return "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, Scale):
        return "scale"
    if isinstance(module, nn.ReLU):
        return "relu"
    if isinstance(module, nn.MaxPool2d):
        return "maxpool"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "batchnorm"
    return None


def _trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _convert_pool(pool: nn.MaxPool2d) -> tuple[nn.Module | None, float, str]:
    """(new pool or None, expected saved ratio, detail) for a max pool."""
    try:
        new = MaskMaxPool2d.from_pool(pool)
    except ConfigError:
        pass
    else:
        kh, kw = new._window
        return new, 1 - (1 / 8) / (4 + 8 / (kh * kw)), "1-bit mask"
    try:
        new = OffsetMaxPool2d.from_pool(pool)
    except ConfigError as exc:
        return None, 0.0, str(exc)
    sh, sw = nn.modules.utils._pair(new.stride)
    ratio = 1 - (1 / (sh * sw)) / (4 + 8 / (sh * sw))
    return new, ratio, "uint8 window offsets (windows overlap or are padded)"


def _convert_batchnorm(
    bn: nn.Module, wanted: bool, low_rank: bool
) -> tuple[nn.Module | None, float, str]:
    """(new batch norm or None, expected saved ratio, detail) for a batch-norm layer."""
    if not wanted:
        return None, 0.0, "keeps its input for backward (outside the converted range)"
    if type(bn) is not nn.BatchNorm2d:
        return None, 0.0, f"keeps its input for backward ({type(bn).__name__} is not compacted)"
    return CompactBatchNorm2d.from_batchnorm(bn, low_rank), 1 - 1 / 4, "int8 normalised input"


INPUT_KEPT = "input_kept"
"""A layer whose attribute of this name is true keeps its weights as they are: the model keeps
its input alive anyway (a reversible chain's output feeding a downsampling convolution), so
storing a compressed copy for backward would add bytes instead of saving them."""


def convert(
    model: nn.Module,
    inr: float = 0.3,
    kernel: int = 2,
    apply_ratio: float = 0.6,
    low_rank: bool = True,
    seed: int = 0,
    batchnorm: bool = True,
) -> Conversion:
    """Replace layers of ``model`` (in place) by their Facto-CNN versions; returns the model and
    a per-layer report.

    The conv, linear and scaling layers are taken in module order (from the input side);
    the first is never converted. The apply ratio counts conv and scaling layers, as the
    paper's table 3 does: of their ``n``, the next ``round(apply_ratio * n)`` (at most
    ``n - 1``) after the first become :class:`FactoConv2d` (``inr`` = C_R/C_I, feature maps
    pooled with ``kernel``) and :class:`PooledScale`; linear layers before the last of them,
    and every linear layer once all ``n - 1`` are converted, become :class:`FactoLinear`
    (a model without conv or scaling layers counts its linear layers instead). ReLU and non-overlapping max-pool layers
    between the first layer and the last converted one become :class:`MaskReLU` /
    :class:`MaskMaxPool2d` (overlapping or padded pools: :class:`OffsetMaxPool2d`). The converted model computes exactly what ``model`` computed
    (M = 0). ``low_rank=False`` converts in full-rank mode (W trains; for the FRT epochs).
    Directions D are drawn from a generator seeded with ``seed``. A layer marked
    :data:`INPUT_KEPT` (its input stays alive anyway) is counted but left as it is.

    ``BatchNorm2d`` layers after the first layer and before the first weighted layer that
    follows the last converted one (those normalising the output of a converted layer, or of
    the input layer) become :class:`CompactBatchNorm2d` when ``batchnorm`` is true: they keep
    their normalised input as int8 instead of their float32 input, which otherwise would undo
    the saving of the convolution before them (their input gradient becomes approximate).
    """
    if not 0.0 < apply_ratio <= 1.0:
        raise ConfigError(f"apply_ratio must be in (0, 1], got {apply_ratio}; the paper uses 0.6")
    internal_size(1, inr)  # validates inr
    kernel = _check_kernel(kernel)
    named = [(name, m) for name, m in model.named_modules() if name]
    if any(isinstance(m, _CONVERTED) for _, m in named):
        raise ConfigError("the model is already converted to Facto-CNN layers; convert it once")
    generator = torch.Generator().manual_seed(seed)
    weighted = [i for i, (_, m) in enumerate(named) if _kind(m) in ("conv", "linear", "scale")]
    if len(weighted) < 2:
        raise ConfigError(
            "Facto-CNN needs at least two conv/linear/scaling layers (the first is never "
            f"converted); this model has {len(weighted)}"
        )
    # the paper's apply ratio (table 3) counts conv and scaling layers; a model without them
    # (an MLP) counts its linear layers instead
    counted = [i for i in weighted if _kind(named[i][1]) != "linear"]
    if len(counted) < 2:
        counted = weighted
    count = min(round(apply_ratio * len(counted)), len(counted) - 1)
    chosen = set(counted[1 : count + 1])
    last = max(chosen, default=-1)
    # linear layers among the converted ones, or all of them once every counted layer is
    every = count == len(counted) - 1
    linear = [i for i in weighted[1:] if _kind(named[i][1]) == "linear"]
    chosen |= {i for i in linear if every or i < last}
    last = max(chosen, default=-1)
    # a batch norm normalises the layer before it: compact up to the first kept layer after
    # the last converted one
    norm_end = next((i for i in weighted if i > last), len(named)) if chosen else -1
    changes = []
    for index, (name, module) in enumerate(named):
        kind = _kind(module)
        if kind is None:
            continue
        before = _trainable(module)
        new, detail, ratio = None, "", 0.0
        if kind in ("conv", "linear", "scale") and getattr(module, INPUT_KEPT, False):
            detail = "its input is kept by the model anyway"
        elif kind in ("conv", "linear", "scale") and index not in chosen:
            detail = "first layer" if index == weighted[0] else "beyond the apply ratio"
        elif kind == "conv":
            try:
                new = FactoConv2d.from_conv(module, inr, kernel, low_rank, generator)
            except ConfigError as exc:
                detail = str(exc)
            else:
                fan_in = new.in_channels * kernel * kernel
                ratio = 1 - new.rank / fan_in
                detail = f"C_R={new.rank} of C_I={new.in_channels}, k={kernel}"
        elif kind == "linear":
            new = FactoLinear.from_linear(module, inr, low_rank, generator)
            ratio = 1 - new.rank / new.in_features
            detail = f"R={new.rank} of I={new.in_features}"
        elif kind == "scale":
            new = PooledScale.from_scale(module, kernel, low_rank)
            ratio = 1 - 1 / kernel**2
            detail = f"input mean-pooled, k={kernel}"
        elif kind == "batchnorm":
            new, ratio, detail = _convert_batchnorm(
                module, batchnorm and weighted[0] < index < norm_end, low_rank
            )
        elif not 0 < index < last:
            detail = "outside the converted range"
        elif kind == "relu":
            new, ratio, detail = MaskReLU(), 1 - 1 / 32, "1-bit mask"
        else:  # max pool
            new, ratio, detail = _convert_pool(module)
        if new is not None:
            _replace(model, name, new)
        after = _trainable(new) if new is not None else before
        changes.append(LayerChange(name, kind, new is not None, detail, ratio, before, after))
    return Conversion(model, changes)


def factorized_layers(model: nn.Module) -> list[nn.Module]:
    """The :class:`FactoConv2d` and :class:`FactoLinear` layers of ``model``."""
    return [m for m in model.modules() if isinstance(m, _Factorized)]


def set_low_rank(model: nn.Module, enabled: bool) -> None:
    """Switch every Facto layer of ``model`` to low-rank (W frozen, compressed feature maps,
    int8 batch-norm inputs) or full-rank mode (M D merged into W, plain autograd)."""
    for module in model.modules():
        if isinstance(module, (_Factorized, PooledScale, CompactBatchNorm2d)):
            module.set_low_rank(enabled)


def merge_and_redraw(model: nn.Module, generator: torch.Generator | None = None) -> None:
    """``W := W + M D`` and a new D with M = 0 in every factorized layer (function unchanged)."""
    for layer in factorized_layers(model):
        layer.merge_and_redraw_(generator)


@torch.no_grad()
def direct_decay(model: nn.Module, amount: float) -> None:
    """Eq. 14: ``W := W - amount * Omega`` in every factorized layer in low-rank mode."""
    for layer in factorized_layers(model):
        if layer.low_rank:
            layer.weight.sub_(amount * layer.omega())


def magnitude_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The magnitude matrices M of ``model``'s factorized layers."""
    return [layer.magnitude for layer in factorized_layers(model)]


def trainable_elements(model: nn.Module) -> int:
    """Parameter elements that train: those requiring gradients, less the magnitudes M of
    layers in full-rank mode (they stay 0 and get no gradient there)."""
    idle = {id(layer.magnitude) for layer in factorized_layers(model) if not layer.low_rank}
    return sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in idle)
