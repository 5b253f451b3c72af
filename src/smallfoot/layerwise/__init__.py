"""Deep layer-wise and segment-wise learning within a memory budget (thesis chapter 6).

Train a network one unit (layer or residual block) or one sliding-window segment of units at a
time, each with a temporary decision block on top sized to a measured memory budget, fed by
the frozen prefix (feednet) or by checkpointed features. See ``docs/layerwise.md``.
"""

from smallfoot.layerwise.decision import candidate_configs, decision_block, fit_decision_block
from smallfoot.layerwise.dropout import BackwardDropout, GradientDropout, InputDropout
from smallfoot.layerwise.feeding import FeatureStore, Subnet, output_shape
from smallfoot.layerwise.training import (
    LayerwiseOptions,
    LayerwiseResult,
    LayerwiseTrainer,
    UnitState,
    split_validation,
    train_layerwise,
)
from smallfoot.layerwise.units import assemble, chain, is_core, segments, split_units

__all__ = [
    "BackwardDropout",
    "FeatureStore",
    "GradientDropout",
    "InputDropout",
    "LayerwiseOptions",
    "LayerwiseResult",
    "LayerwiseTrainer",
    "Subnet",
    "UnitState",
    "assemble",
    "candidate_configs",
    "chain",
    "decision_block",
    "fit_decision_block",
    "is_core",
    "output_shape",
    "segments",
    "split_units",
    "split_validation",
    "train_layerwise",
]
