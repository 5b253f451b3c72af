"""Facto-CNN (Lee, Ko, Hong, *Facto-CNN*): low-rank training with compressed feature maps.

``convert(model, inr=0.3, kernel=2, apply_ratio=0.6)`` swaps a CNN's layers for the ones
below; :class:`FactoSchedule` runs full-rank then low-rank training with merge/redraw and
:func:`step_scheduler` the paper's learning-rate steps; ``--method facto`` does all of it
from the CLI.
"""

from smallfoot.facto._bits import pack_bits, unpack_bits
from smallfoot.facto.convert import (
    Conversion,
    LayerChange,
    convert,
    direct_decay,
    factorized_layers,
    magnitude_parameters,
    merge_and_redraw,
    set_low_rank,
    trainable_elements,
)
from smallfoot.facto.layers import (
    CompactBatchNorm2d,
    CompactBatchNormFunction,
    FactoConv2d,
    FactoConv2dFunction,
    FactoLinear,
    FactoLinearFunction,
    MaskMaxPool2d,
    MaskReLU,
    OffsetMaxPool2d,
    PooledScale,
    draw_direction,
)
from smallfoot.facto.schedule import FactoSchedule, decay_amount, drop_epochs, step_scheduler

__all__ = [
    "CompactBatchNorm2d",
    "CompactBatchNormFunction",
    "Conversion",
    "FactoConv2d",
    "FactoConv2dFunction",
    "FactoLinear",
    "FactoLinearFunction",
    "FactoSchedule",
    "LayerChange",
    "MaskMaxPool2d",
    "MaskReLU",
    "OffsetMaxPool2d",
    "PooledScale",
    "convert",
    "decay_amount",
    "direct_decay",
    "draw_direction",
    "drop_epochs",
    "factorized_layers",
    "magnitude_parameters",
    "merge_and_redraw",
    "pack_bits",
    "set_low_rank",
    "step_scheduler",
    "trainable_elements",
    "unpack_bits",
]
