"""Numerical-error analysis of invertible layers and chains (sections 4.1 and 5.1 of
Hascoet et al., *Reversible designs for extreme memory cost reduction of CNN training*).

A memory-free backward pass reconstructs every activation from the layer above it, so any
error in an output ``y`` reaches the input ``x`` through the layer's inverse. The signal to
noise ratio of a noisy estimate is ``snr = |x|^2 / |x_est - x|^2`` (eq. 15) and a layer's
inverse changes it by the factor ``alpha = snr_in / snr_out`` (eq. 16):

- :func:`alpha_batchnorm_toy` (eq. 19c), :func:`alpha_batchnorm` (any parameterisation,
  eq. 20-22 derived again) and :func:`alpha_leaky_relu` (eq. 28c, also for skewed inputs)
  are the theory;
- :func:`measure_alpha` measures ``alpha`` of one layer by injecting Gaussian noise;
- :func:`snr_through_chain` follows the SNR down a whole chain (a
  :class:`~smallfoot.reversible.RevSequence` body of ``layerwise18`` or ``hybrid18``), also
  inside hybrid blocks, where the hidden activations of F and G are reconstructed layer-wise.

Measurements run on a float64 copy of the module (the caller's module is left untouched) so
that injected noise, not rounding, is what is measured; ``snr_through_chain`` can instead
measure the plain float32 rounding drift of the reconstruction.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from smallfoot.errors import ConfigError, InvertibilityError, ShapeError
from smallfoot.reversible.core import RevBlock
from smallfoot.reversible.layers import BatchPool, BatchUnpool, ChannelPool


def snr(signal: torch.Tensor, estimate: torch.Tensor) -> float:
    """Signal to noise ratio ``|x|^2 / |x_est - x|^2`` of ``estimate`` against the true
    ``signal`` (eq. 15), a plain ratio (not dB), computed in float64.

    Both tensors have the same shape. An exact estimate gives ``inf``; an estimate with
    non-finite entries (the reconstruction overflowed) gives ``0.0``.
    """
    if signal.shape != estimate.shape:
        raise ShapeError(
            f"snr needs the signal and its estimate in the same shape, got "
            f"{tuple(signal.shape)} and {tuple(estimate.shape)}"
        )
    signal, estimate = signal.detach().double(), estimate.detach().double()
    if not torch.isfinite(estimate).all():
        return 0.0
    noise = (estimate - signal).pow(2).sum().item()
    power = signal.pow(2).sum().item()
    return math.inf if noise == 0 else power / noise


def to_db(ratio: float) -> float:
    """A power ratio in decibels, ``10 log10(ratio)`` (``inf`` stays ``inf``, ``0`` gives
    ``-inf``)."""
    if ratio < 0:
        raise ConfigError(f"to_db needs a power ratio >= 0, got {ratio}")
    return -math.inf if ratio == 0 else 10 * math.log10(ratio)


def alpha_batchnorm_toy(rho: float) -> float:
    """SNR factor of the paper's toy batch norm (eq. 19c): two unit-variance, zero-mean input
    channels scaled by ``[1, rho]``, noise of equal power on both outputs:
    ``alpha = 4 / ((1 + 1/rho^2)(1 + rho^2))``, at most 1 (at ``rho = 1``)."""
    if rho <= 0:
        raise ConfigError(f"alpha_batchnorm_toy needs a scale rho > 0, got {rho}")
    return 4 / ((1 + 1 / rho**2) * (1 + rho**2))


def alpha_batchnorm(mean, std, scale, bias) -> float:
    """SNR factor ``alpha`` of an invertible batch norm with any parameters.

    Per channel ``i`` the layer maps ``y_i = s_i (x_i - mean_i) / std_i + beta_i``, where
    ``mean_i`` and ``std_i`` are the input's mean and standard deviation (those the layer
    normalises with: batch statistics in training mode), ``s_i`` its ``scale`` and
    ``beta_i`` its ``bias``; all four are sequences or tensors of shape ``(C,)``. The inverse
    maps output noise to ``eps^x_i = (std_i / s_i) eps^y_i``, so with noise of equal power on
    every output channel

    ``alpha = [sum_i (mean_i^2 + std_i^2) / sum_i (s_i^2 + beta_i^2)] * [C / sum_i std_i^2 / s_i^2]``

    (the first factor is ``|x|^2 / |y|^2``, the second ``|eps^y|^2 / |eps^x|^2``; the paper's
    eq. 21f-22c garble both). With ``mean = 0``, ``std = 1``, ``s = [1, rho]``, ``beta = 0``
    it is :func:`alpha_batchnorm_toy`. Channels with a large mean raise ``alpha`` (the mean
    is signal that the normalisation removes), scales that differ between channels lower it.
    """
    mean, std, scale, bias = (
        torch.as_tensor(v).detach().to(torch.float64).flatten() for v in (mean, std, scale, bias)
    )
    if not mean.numel() == std.numel() == scale.numel() == bias.numel():
        raise ShapeError(
            "alpha_batchnorm needs one mean, std, scale and bias per channel, got "
            f"{mean.numel()}, {std.numel()}, {scale.numel()} and {bias.numel()} values"
        )
    if (scale <= 0).any() or (std <= 0).any():
        raise ConfigError(
            "alpha_batchnorm needs every scale and std > 0 (the layer is not invertible "
            "otherwise); pass InvertibleBatchNorm2d.scale(), which is >= eps_i"
        )
    signal = (mean.square() + std.square()).sum() / (scale.square() + bias.square()).sum()
    noise = scale.numel() / (std.square() / scale.square()).sum()
    return (signal * noise).item()


def alpha_leaky_relu(
    n: float, negative_fraction: float = 0.5, negative_power: float = 0.5
) -> float:
    """SNR factor of an invertible Leaky ReLU with ``n = 1 / negative_slope``, for output
    noise much smaller than the outputs (no sign flips) and of equal power on every element.

    The layer splits its input into a channel kept as it is and one scaled by ``1/n`` (and by
    ``n`` in the inverse), like the toy batch norm. With ``negative_fraction`` the share of
    input elements ``<= 0`` and ``negative_power`` their share of ``|x|^2``:

    ``alpha = 1 / ([(1 - P) + P / n^2] * [(1 - f) + f n^2])``  (``P``: power, ``f``: fraction)

    the first factor being ``|y|^2 / |x|^2``, the second ``|eps^x|^2 / |eps^y|^2``. For an
    input symmetric about 0 (the defaults, 0.5 and 0.5) it is the paper's eq. 28c, ``4 / ((1 +
    1/n^2)(1 + n^2))``: the same for ``n`` and ``1/n``, 1 at ``n = 1``. A skewed input (e.g.
    a batch norm's output after a Leaky ReLU and a convolution) changes it.
    """
    if n <= 0:
        raise ConfigError(f"alpha_leaky_relu needs n = 1/negative_slope > 0, got {n}")
    if not (0 <= negative_fraction <= 1 and 0 <= negative_power <= 1):
        raise ConfigError(
            "alpha_leaky_relu needs negative_fraction and negative_power in [0, 1], got "
            f"{negative_fraction} and {negative_power}"
        )
    signal = (1 - negative_power) + negative_power / n**2
    noise = (1 - negative_fraction) + negative_fraction * n**2
    return 1 / (signal * noise)


def _relative_noise(y: torch.Tensor, noise_std: float, generator) -> torch.Tensor:
    """Gaussian noise of standard deviation ``noise_std`` times the RMS of ``y``."""
    if noise_std <= 0:
        raise ConfigError(f"noise_std must be > 0 (relative to the output RMS), got {noise_std}")
    rms = y.pow(2).mean().sqrt()
    return torch.randn(y.shape, generator=generator, dtype=y.dtype) * (noise_std * rms)


def _check_invertible(module: nn.Module, what: str) -> None:
    if not callable(getattr(module, "inverse", None)):
        raise InvertibilityError(
            f"{what} is a {type(module).__name__}, which has no inverse(); the SNR analysis "
            "needs invertible modules (smallfoot.reversible layers, RevBlock, RevSequence)"
        )


@torch.no_grad()
def measure_alpha(
    layer: nn.Module,
    x: torch.Tensor,
    noise_std: float = 1e-5,
    generator: torch.Generator | None = None,
) -> float:
    """Measured SNR factor ``alpha = snr(x, x_est) / snr(y, y_est)`` of ``layer``'s inverse.

    Runs ``y = layer(x)`` on a float64 copy of ``layer`` (in ``layer``'s train/eval mode; the
    layer itself is not changed), adds Gaussian noise of standard deviation ``noise_std``
    times the RMS of ``y`` (so ``snr(y, y_est)`` is about ``1 / noise_std^2``), and
    reconstructs ``x_est = layer.inverse(y_est)``. ``x`` is any shape ``layer`` takes;
    ``generator`` seeds the noise.
    """
    _check_invertible(layer, "the layer")
    layer = copy.deepcopy(layer).double()
    x = x.double()
    y = layer(x)
    y_noisy = y + _relative_noise(y, noise_std, generator)
    return snr(x, layer.inverse(y_noisy)) / snr(y, y_noisy)


@dataclass(frozen=True)
class HiddenSNR:
    """SNR of one hidden activation of a hybrid block, reconstructed layer-wise.

    ``member``: index of the block in the chain; ``branch``: ``"F"`` or ``"G"``; ``layer``:
    index of the layer in the branch whose input this activation is (>= 1; layer 0's input is
    the block's own half, known exactly); ``depth``: layers from the chain input (as
    :attr:`ChainSNR.depth`); ``snr_db``: its SNR in dB.
    """

    member: int
    branch: str
    layer: int
    depth: int
    snr_db: float


@dataclass(frozen=True)
class ChainSNR:
    """The result of :func:`snr_through_chain`.

    Index ``k`` of ``snr_db``, ``depth`` and ``names`` is the activation after the chain's
    first ``k`` members (``k = 0``: the chain input, reconstructed last; ``k = len(chain)``:
    the output, where the reconstruction starts). ``depth`` counts layers from the chain
    input: each member is one layer, except pooling (0, a permutation) and hybrid blocks
    (the layers of F and G), so layer-wise and hybrid chains of the same layers line up.
    ``hidden`` holds the hybrid blocks' hidden activations.
    """

    snr_db: list[float]
    depth: list[int]
    names: list[str]
    hidden: list[HiddenSNR]

    def worst_db(self) -> float:
        """The lowest SNR (dB) of any reconstructed activation, hidden ones included."""
        return min([*self.snr_db, *(h.snr_db for h in self.hidden)])


def _is_hybrid(module: nn.Module) -> bool:
    return isinstance(module, RevBlock) and module.layerwise


def _branch_layers(branch: nn.Module) -> list[nn.Module]:
    """The layers a hybrid block's layer-wise backward walks (as ``core`` does)."""
    return list(branch) if isinstance(branch, nn.Sequential) else [branch]


def _layer_count(module: nn.Module) -> int:
    if isinstance(module, (ChannelPool, BatchPool, BatchUnpool)):
        return 0
    if _is_hybrid(module):
        layers = _branch_layers(module.f) + _branch_layers(module.g)
        return sum(_layer_count(layer) for layer in layers)
    return 1


def _forward_recording(member: nn.Module, x: torch.Tensor):
    """``(output, {"F": [inputs of F's layers], "G": [...]})``; the dict is empty unless
    ``member`` is a hybrid block."""
    if not _is_hybrid(member):
        return member(x), {}
    inputs: dict[str, list[torch.Tensor]] = {"F": [], "G": []}
    handles = [
        layer.register_forward_pre_hook(lambda _, args, key=key: inputs[key].append(args[0]))
        for key, branch in (("F", member.f), ("G", member.g))
        for layer in _branch_layers(branch)
    ]
    try:
        y = member(x)
    finally:
        for handle in handles:
            handle.remove()
    return y, inputs


def _hidden_snr(block: RevBlock, index: int, depth: int, y, x, true) -> list[HiddenSNR]:
    """SNR of a hybrid block's hidden activations reconstructed as its backward does: from
    the reconstructed output ``y`` and input ``x``, ``F(x2) = y1 - x1`` and ``G(y1) = y2 -
    x2``, then each branch layer-wise (``true``: the layer inputs recorded in the forward;
    ``depth``: the block input's depth)."""
    y1, y2 = y.chunk(2, dim=1)
    x1, x2 = x.chunk(2, dim=1)
    f_layers = _branch_layers(block.f)
    offset_g = sum(_layer_count(layer) for layer in f_layers)
    out = []
    for key, branch, h, offset in (("F", block.f, y1 - x1, 0), ("G", block.g, y2 - x2, offset_g)):
        layers = _branch_layers(branch)
        starts = [
            offset + sum(_layer_count(layer) for layer in layers[:k]) for k in range(len(layers))
        ]
        for position in range(len(layers) - 1, 0, -1):
            h = layers[position].inverse(h)
            db = to_db(snr(true[key][position], h))
            out.append(HiddenSNR(index, key, position, depth + starts[position], db))
    return out


@torch.no_grad()
def snr_through_chain(
    chain: Iterable[nn.Module],
    x: torch.Tensor,
    noise_std: float | None = 1e-5,
    generator: torch.Generator | None = None,
) -> ChainSNR:
    """SNR (dB) of every activation of an invertible chain as its backward reconstructs it.

    ``chain`` is a :class:`~smallfoot.reversible.RevSequence` (its ``blocks``) or any iterable
    of invertible modules; ``x`` its input, e.g. ``(N, C, H, W)``. A deep copy of the chain
    is analysed in the train/eval mode the chain is in: train mode, as during training, makes
    batch norms normalise with the batch statistics and invert with the statistics of the
    forward pass. The chain itself is not changed.

    1. Forward member by member, storing every member's output (the true activations, what a
       stored-activation backward would use).
    2. Start from the output and invert member by member, comparing each reconstruction with
       the stored activation. A hybrid block (``RevBlock(layerwise=True)``) is inverted as its
       backward does it: the block input by the block inverse, then the hidden activations of
       G and F layer-wise from ``G(y1) = y2 - x2`` and ``F(x2) = y1 - x1``.

    ``noise_std`` chooses what is measured:

    - a float: everything runs in float64 and the output gets Gaussian noise of standard
      deviation ``noise_std`` times its RMS (output SNR ``-20 log10(noise_std)`` dB), the
      paper's setting: how the chain's inverses amplify a given error;
    - ``None``: the chain runs in its own dtype (float32) with no injected noise; the output
      is exact (as the memory-free backward saves it) and the errors are the rounding of the
      inverses, compared with the forward's activations in the same dtype: the drift a
      float32 training run actually sees.
    """
    members = list(chain.blocks if hasattr(chain, "blocks") else chain)
    if not members:
        raise ConfigError("snr_through_chain needs a chain with at least one module")
    for index, member in enumerate(members):
        _check_invertible(member, f"member {index} of the chain")
    members = copy.deepcopy(nn.ModuleList(members))
    if noise_std is not None:
        members, x = members.double(), x.double()

    activations, hidden_true, names, depth = [x], [], ["input"], [0]
    for member in members:
        y, hidden = _forward_recording(member, activations[-1])
        activations.append(y)
        hidden_true.append(hidden)
        names.append(type(member).__name__)
        depth.append(depth[-1] + _layer_count(member))

    y = activations[-1]
    if noise_std is not None:
        y = y + _relative_noise(y, noise_std, generator)
    snr_db = [to_db(snr(activations[-1], y))]
    hidden_snr: list[HiddenSNR] = []
    for index in range(len(members) - 1, -1, -1):
        member, y_rec = members[index], y
        y = member.inverse(y_rec)
        snr_db.append(to_db(snr(activations[index], y)))
        if not hidden_true[index]:
            continue
        hidden_snr += _hidden_snr(member, index, depth[index], y_rec, y, hidden_true[index])
    snr_db.reverse()
    hidden_snr.sort(key=lambda h: h.depth)
    return ChainSNR(snr_db=snr_db, depth=depth, names=names, hidden=hidden_snr)
