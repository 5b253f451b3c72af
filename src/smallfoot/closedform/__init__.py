"""Closed-form training of MLPs with Platonic projections (thesis ch. 7): ``fit_mlp``."""

from smallfoot.closedform.platonic import (
    ACTIVATIONS,
    CODINGS,
    SOLVERS,
    TARGETS,
    FitResult,
    LayerReport,
    encode_targets,
    fit_mlp,
    layer_projections,
    platonic_pca_projection,
    predicted_classes,
    sorted_pca_indices,
    sorted_pca_weights,
)

__all__ = [
    "ACTIVATIONS",
    "CODINGS",
    "SOLVERS",
    "TARGETS",
    "FitResult",
    "LayerReport",
    "encode_targets",
    "fit_mlp",
    "layer_projections",
    "platonic_pca_projection",
    "predicted_classes",
    "sorted_pca_indices",
    "sorted_pca_weights",
]
