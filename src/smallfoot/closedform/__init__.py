"""Closed-form training of MLPs with Platonic projections (thesis ch. 7): ``fit_mlp``."""

from smallfoot.closedform.platonic import (
    ACTIVATIONS,
    SOLVERS,
    TARGETS,
    FitResult,
    LayerReport,
    fit_mlp,
    layer_projections,
    platonic_pca_projection,
    sorted_pca_indices,
    sorted_pca_weights,
)

__all__ = [
    "ACTIVATIONS",
    "SOLVERS",
    "TARGETS",
    "FitResult",
    "LayerReport",
    "fit_mlp",
    "layer_projections",
    "platonic_pca_projection",
    "sorted_pca_indices",
    "sorted_pca_weights",
]
