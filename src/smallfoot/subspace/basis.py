"""Dynamic linear dimensionality reduction (Li et al., *Low dimensional landscape hypothesis is true: DNNs can be trained in tiny subspaces*, algorithm 1).

Given ``t`` sampled parameter vectors ``w_1..w_t`` (each of length ``n``): centre them,
``W = [w_1 - w_mean, ..., w_t - w_mean]`` (n x t), eigendecompose the small ``W^T W``
(t x t, float64) into ``sigma_i^2, v_i`` and return ``u_i = W v_i / sigma_i``, the top-``d``
orthonormal directions of the trajectory (its principal components), as ``P`` (n x d).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from smallfoot._io import atomic_torch_save
from smallfoot.errors import ConfigError
from smallfoot.subspace.trajectory import TrajectoryStore, parameter_layout

# Columns of the (t, n) samples processed at once: bounds the float64 working memory to
# t * CHUNK * 8 bytes whatever n is (the samples may be a disk memmap).
CHUNK = 1 << 18


@dataclass
class Basis:
    """An orthonormal basis of a parameter subspace, tied to the parameter layout it came from.

    Attributes:
        P: ``(n, d)`` float32, orthonormal columns (the principal directions).
        mean: ``(n,)`` float32, the mean of the sampled parameters.
        singular_values: ``(d,)`` float64, ``sigma_i`` of the centred samples.
        explained_variance_ratio: ``(t,)`` float64, every eigenvalue of ``W^T W`` over their
            sum, largest first (the "PCA ratio"); the first ``d`` are the kept directions.
        layout: ``(name, shape)`` of each parameter, in the order of the flat vectors.
    """

    P: torch.Tensor
    mean: torch.Tensor
    singular_values: torch.Tensor
    explained_variance_ratio: torch.Tensor
    layout: list[tuple[str, tuple[int, ...]]]

    @property
    def dim(self) -> int:
        """``d``, the subspace dimension."""
        return self.P.shape[1]

    @property
    def size(self) -> int:
        """``n``, the number of parameters."""
        return self.P.shape[0]

    def truncate(self, dim: int) -> Basis:
        """The basis of the top ``dim`` directions (the same as DLDR with ``dim``: they are sorted)."""
        if not 1 <= dim <= self.dim:
            raise ConfigError(f"cannot keep {dim} of the basis' {self.dim} directions")
        return Basis(
            self.P[:, :dim].contiguous(),
            self.mean,
            self.singular_values[:dim],
            self.explained_variance_ratio,
            self.layout,
        )

    def to(self, device: str | torch.device) -> Basis:
        """The basis with ``P`` and ``mean`` on ``device``."""
        return Basis(
            self.P.to(device),
            self.mean.to(device),
            self.singular_values,
            self.explained_variance_ratio,
            self.layout,
        )

    def coordinates(self, vector: torch.Tensor) -> torch.Tensor:
        """``P^T (w - w_mean)`` ``(d,)`` of a flat parameter vector ``w`` ``(n,)``."""
        return self.P.T @ (vector.to(self.P) - self.mean)

    def point(self, coordinates: torch.Tensor) -> torch.Tensor:
        """The flat parameter vector ``w_mean + P c`` ``(n,)`` of coordinates ``c`` ``(d,)``."""
        return self.mean + self.P @ coordinates.to(self.P)

    def check(self, model: nn.Module) -> None:
        """Raise ``ConfigError`` unless ``model``'s trainable parameters have this basis' layout."""
        layout = parameter_layout(model)
        if layout != self.layout:
            mismatch = next(
                (
                    f"{a} vs {b}"
                    for a, b in zip(layout, self.layout, strict=False)
                    if tuple(a) != tuple(b)
                ),
                f"{len(layout)} vs {len(self.layout)} parameters",
            )
            raise ConfigError(
                f"the basis was extracted from a different model (first difference: {mismatch}); "
                "build the same model with the same options"
            )

    def save(self, path: str | Path) -> Path:
        """Write the basis (with its parameter layout) atomically to ``path``."""
        state = {
            "P": self.P.cpu(),
            "mean": self.mean.cpu(),
            "singular_values": self.singular_values.cpu(),
            "explained_variance_ratio": self.explained_variance_ratio.cpu(),
            "layout": [[name, list(shape)] for name, shape in self.layout],
        }
        return atomic_torch_save(state, path)

    @classmethod
    def load(cls, path: str | Path) -> Basis:
        """Read a basis written by :meth:`save`."""
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"basis file {path} not found")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            return cls(
                state["P"],
                state["mean"],
                state["singular_values"],
                state["explained_variance_ratio"],
                [(name, tuple(shape)) for name, shape in state["layout"]],
            )
        except (RuntimeError, KeyError, TypeError, ValueError, pickle.UnpicklingError) as exc:
            raise ConfigError(
                f"{path} is not a subspace basis ({exc}); write one with Basis.save"
            ) from None


def dldr(
    samples: TrajectoryStore | torch.Tensor,
    dim: int,
    layout: list[tuple[str, tuple[int, ...]]] | None = None,
) -> Basis:
    """The top-``dim`` DLDR basis of sampled parameters (algorithm 1).

    Args:
        samples: a :class:`TrajectoryStore` or a ``(t, n)`` tensor of flattened parameters.
        dim: ``d``; at most ``t - 1`` (centring removes one direction).
        layout: the parameter layout the samples were flattened from (kept with the basis).

    Returns:
        The :class:`Basis`. Works through the ``n`` columns in chunks, so a memmap store is
        read twice without being loaded whole.
    """
    store = samples if isinstance(samples, TrajectoryStore) else _TensorColumns(samples)
    t, n = len(store), store.size
    if t < 2:
        raise ConfigError(f"DLDR needs at least 2 sampled parameter vectors, got {t}")
    if not 1 <= dim <= t - 1:
        raise ConfigError(
            f"--dim {dim} is not possible with {t} samples (centred, they span at most {t - 1} "
            "directions); lower --dim or take more --samples"
        )
    mean = torch.zeros(n, dtype=torch.float64)
    gram = torch.zeros(t, t, dtype=torch.float64)
    for start in range(0, n, CHUNK):
        block = store.columns(start, min(start + CHUNK, n))  # (t, c)
        mean[start : start + block.shape[1]] = block.mean(0)
        centred = block - block.mean(0)
        gram += centred @ centred.T
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0).clamp_min(0), eigenvectors.flip(1)
    total = eigenvalues.sum()
    if not total > 0:
        raise ConfigError("the sampled parameters are all equal; sample while the model trains")
    if eigenvalues[dim - 1] <= 1e-12 * eigenvalues[0]:
        rank = int((eigenvalues > 1e-12 * eigenvalues[0]).sum())
        raise ConfigError(
            f"the trajectory spans only {rank} directions, fewer than --dim {dim}; "
            "lower --dim or sample over more steps"
        )
    sigma = eigenvalues[:dim].sqrt()
    scaled = eigenvectors[:, :dim] / sigma  # (t, d): u_i = W v_i / sigma_i
    P = torch.empty(n, dim, dtype=torch.float32)
    for start in range(0, n, CHUNK):
        block = store.columns(start, min(start + CHUNK, n))
        P[start : start + block.shape[1]] = ((block - block.mean(0)).T @ scaled).float()
    return Basis(
        P, mean.float(), sigma, eigenvalues / total, list(layout) if layout is not None else []
    )


class _TensorColumns:
    """A ``(t, n)`` tensor seen through the store's ``columns`` interface."""

    def __init__(self, samples: torch.Tensor):
        if samples.dim() != 2:
            raise ConfigError(f"samples must be a (t, n) matrix, got shape {tuple(samples.shape)}")
        self.samples, self.size = samples, samples.shape[1]

    def __len__(self) -> int:
        return self.samples.shape[0]

    def columns(self, start: int, stop: int) -> torch.Tensor:
        return self.samples[:, start:stop].to(torch.float64)
