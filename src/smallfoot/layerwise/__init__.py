"""Deep layer-wise and segment-wise learning within a memory budget (thesis chapter 6).

Train a network one unit (layer or residual block) or one sliding-window segment of units at a
time, each with a temporary decision block on top sized to a measured memory budget, fed by
the frozen prefix (feednet) or by checkpointed features. See ``docs/layerwise.md``.
"""

from smallfoot.layerwise.decision import (
    block_name,
    candidate_configs,
    decision_block,
    fit_decision_block,
    model_head,
    probe_accuracy,
)
from smallfoot.layerwise.dropout import BackwardDropout, GradientDropout, InputDropout
from smallfoot.layerwise.feeding import FeatureStore, Subnet, output_shape
from smallfoot.layerwise.training import (
    LayerwiseOptions,
    LayerwiseResult,
    LayerwiseTrainer,
    UnitState,
    segment_memory,
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
    "block_name",
    "candidate_configs",
    "chain",
    "decision_block",
    "fit_decision_block",
    "is_core",
    "model_head",
    "output_shape",
    "probe_accuracy",
    "segment_memory",
    "segments",
    "split_units",
    "split_validation",
    "train_layerwise",
]
