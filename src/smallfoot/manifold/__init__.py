"""Manifold regularisation with bottleneck heads (Sartipi & Bernal): train a network with a narrow
fully connected cascade and layer-local distance-preserving losses at mini-batches of 2-9 samples.

``DistancePreservingLoss`` is eq. 3-4; ``Manifold`` is ``--method manifold``; the bottleneck
models live in :mod:`smallfoot.models.bottleneck`; :mod:`smallfoot.manifold.analysis` has the
t-SNE/LDA representation analysis and :mod:`smallfoot.manifold.profile` the memory by phase.
"""

from smallfoot.manifold.loss import (
    DistancePreservingLoss,
    alpha_schedule,
    distance_mismatch,
    pairwise_distances,
    relative_mismatch,
)

__all__ = [
    "DistancePreservingLoss",
    "alpha_schedule",
    "distance_mismatch",
    "pairwise_distances",
    "relative_mismatch",
]
