"""The layer-wise distance-preserving loss of Sartipi & Bernal (eq. 3-4).

For bottleneck layers ``k = 0 .. L-1`` with activations ``x^(k)`` of a mini-batch of ``N``::

    L_u = sum_{k=1}^{L-1} alpha_k L_u^(k)
    L_u^(k) = mean_{n != m} (d(x_n^(k), x_m^(k)) - d(x_n^(k-1), x_m^(k-1)))^2 + lambda ||theta^(k)||^2

with ``d`` the Euclidean distance and ``theta^(k)`` the parameters of layers ``k-1`` and ``k``.
Eq. 4 sums over all ``N^2`` ordered pairs; we average over the ``N(N-1)`` pairs of distinct
samples instead, so one ``alpha`` means the same at every batch size (the sum grows with
``N^2``: at the CLI's batch of 128 it is 16256 times a pair's mismatch and overflowed the
cross-entropy within 3 steps). ``alpha_sum = alpha_mean / (N(N-1))`` converts between the two.
Each term is local (figure 1): its gradient reaches only layers ``k-1`` and ``k``. We get that
scope exactly by recomputing the two layers from a detached copy of the input of layer ``k-1``
(the head's input ``z`` for ``k = 1``); the cross-entropy keeps flowing through everything.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from smallfoot.errors import ConfigError, ShapeError


def pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distance matrix ``(N, N)`` of the rows of ``x`` ``(N, D)``.

    From explicit differences (not the Gram-matrix shortcut, whose rounding leaves coincident
    rows a tiny non-zero distance and a huge gradient): coincident rows give an exact zero with a
    zero (sub)gradient, never NaN. ``cdist`` does that without keeping the ``(N, N, D)``
    differences for the backward, which at batch 128 would outweigh the rest of the step."""
    if x.dim() != 2:
        raise ShapeError(f"pairwise_distances takes (N, D) activations, got {tuple(x.shape)}")
    return torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")


def distance_mismatch(previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """``mean_{n != m} (d(current_n, current_m) - d(previous_n, previous_m))^2`` over the
    ``N(N-1)`` ordered pairs of distinct samples of the mini-batch (eq. 4 without the weight
    penalty, divided by the number of pairs); ``previous`` ``(N, D1)``, ``current`` ``(N, D2)``,
    result in squared activation units. A batch of one sample has no pair: an exact zero."""
    if previous.shape[0] != current.shape[0]:
        raise ShapeError(
            f"both activations need the same batch, got {previous.shape[0]} and {current.shape[0]}"
        )
    n = previous.shape[0]
    total = (pairwise_distances(current) - pairwise_distances(previous)).pow(2).sum()
    # The diagonal (n == m) is zero in both matrices, so the sum already runs over n != m only.
    return total / max(n * (n - 1), 1)


def relative_mismatch(previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """:func:`distance_mismatch` divided by the batch's mean squared input-space distance
    ``mean_{n != m} d(previous_n, previous_m)^2`` (Kruskal's stress normalisation): a pure number,
    unchanged when ``previous`` and ``current`` are scaled by the same factor, so the term's
    weight does not depend on how large the activations have grown. ``previous`` ``(N, D1)``,
    ``current`` ``(N, D2)``; a batch of one sample, or of coincident inputs, gives an exact zero."""
    if previous.shape[0] != current.shape[0]:
        raise ShapeError(
            f"both activations need the same batch, got {previous.shape[0]} and {current.shape[0]}"
        )
    d_prev = pairwise_distances(previous)
    mismatch = (pairwise_distances(current) - d_prev).pow(2).sum()
    spread = d_prev.pow(2).sum()
    # Zero spread (no pair, or identical inputs) comes with a zero mismatch: 0 / tiny = 0, not NaN.
    return mismatch / spread.clamp_min(torch.finfo(spread.dtype).tiny)


def alpha_schedule(terms: int, alpha: float, first_half_ratio: float) -> list[float]:
    """Weights ``alpha_1 .. alpha_{terms}``: ``alpha * first_half_ratio`` for the first half of the
    bottleneck (terms ``k <= terms // 2``), ``alpha`` for the rest (section 4.2: smaller weights
    where distances are less meaningful, near the data)."""
    return [alpha * first_half_ratio if k <= terms // 2 else alpha for k in range(1, terms + 1)]


def squared_norm(module: nn.Module) -> torch.Tensor:
    """``||theta||^2``: sum of the squares of all parameters of ``module`` (weights and biases)."""
    return sum(p.pow(2).sum() for p in module.parameters())


class DistancePreservingLoss(nn.Module):
    """``L_u`` of eq. 3 over the bottleneck ``layers`` (a sequence of modules, e.g.
    ``BottleneckHead.layers``), with one weight per consecutive pair.

    ``alphas``: ``len(layers) - 1`` weights ``alpha_1 .. alpha_{L-1}``; ``lam``: the weight
    ``lambda`` of the squared parameter norm of the two layers of each term.

    ``forward(activations)`` takes ``[z, x^(0), ..., x^(L-1)]`` as returned by
    ``BottleneckHead.forward_activations`` and returns the scalar ``L_u``; only
    ``activations[k-1]`` (detached) is read for term ``k``, the layers are recomputed from it.

    ``relative``: use :func:`relative_mismatch` (scale-free, ``--relative true``) instead of
    eq. 4's absolute :func:`distance_mismatch` (the paper's, the default).
    """

    def __init__(
        self,
        layers: Sequence[nn.Module],
        alphas: Sequence[float],
        lam: float = 0.0,
        relative: bool = False,
    ):
        super().__init__()
        if len(layers) < 2:
            raise ConfigError(
                f"the distance-preserving loss needs at least 2 bottleneck layers, got {len(layers)}; "
                "widen head_width or narrow bottleneck_width"
            )
        if len(alphas) != len(layers) - 1:
            raise ConfigError(
                f"give one alpha per consecutive pair of bottleneck layers: {len(layers) - 1} "
                f"for {len(layers)} layers, got {len(alphas)}"
            )
        if any(a < 0 for a in alphas) or lam < 0:
            raise ConfigError(f"alphas and lambda must be >= 0, got {list(alphas)} and {lam}")
        # A plain list: the layers belong to the model, not to the loss (no double registration).
        self.layers = list(layers)
        self.alphas = [float(a) for a in alphas]
        self.lam = float(lam)
        self.mismatch = relative_mismatch if relative else distance_mismatch

    def terms(self, activations: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``[L_u^(1), ..., L_u^(L-1)]`` (unweighted by alpha), each a scalar whose gradient reaches
        only the parameters of layers ``k-1`` and ``k``."""
        if len(activations) != len(self.layers) + 1:
            raise ShapeError(
                f"expected {len(self.layers) + 1} activations [z, x^(0), ..., x^(L-1)], "
                f"got {len(activations)}"
            )
        out = []
        for k in range(1, len(self.layers)):
            # Recompute from a detached input so the graph of this term stops at layer k-1.
            previous = self.layers[k - 1](activations[k - 1].detach())
            current = self.layers[k](previous)
            term = self.mismatch(previous, current)
            if self.lam:
                term = term + self.lam * (
                    squared_norm(self.layers[k - 1]) + squared_norm(self.layers[k])
                )
            out.append(term)
        return out

    def forward(self, activations: Sequence[torch.Tensor]) -> torch.Tensor:
        """The weighted sum ``sum_k alpha_k L_u^(k)`` (a scalar)."""
        terms = self.terms(activations)
        return sum(alpha * term for alpha, term in zip(self.alphas, terms, strict=True))
