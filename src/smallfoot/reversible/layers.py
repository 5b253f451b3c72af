"""Layer-wise invertible layers (section 4.1 of Hascoet et al., *Reversible designs for extreme memory cost reduction of CNN training*).

Each layer has ``forward`` and an exact ``inverse`` and the class attribute
``invertible = True``, so it can sit in a :class:`~smallfoot.reversible.RevSequence` chain
whose backward pass reconstructs every layer's input from its output:

- :class:`ChannelPool` (i-RevNet space-to-depth) and :class:`BatchPool` (the paper's pooling
  along the batch), volume-preserving 2x2 pooling (eq. 29);
- :class:`InvertibleBatchNorm2d` (eq. 23), :class:`InvertibleLeakyReLU` (eq. 24);
- :class:`InvertibleConv2d`, a minimal additive coupling of two convolutions (section 4.1.3).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn import functional as F

from smallfoot.errors import ConfigError, InvertibilityError, ShapeError


def _check_poolable(x: torch.Tensor, block: int, name: str) -> None:
    if x.dim() != 4 or x.shape[2] % block or x.shape[3] % block:
        raise ShapeError(
            f"{name}({block}) needs (N, C, H, W) with H and W divisible by {block}, "
            f"got {tuple(x.shape)}; pad the input (e.g. --data-opt pad_to=32)"
        )


class ChannelPool(nn.Module):
    """Space-to-depth: ``(N, C, H, W) -> (N, C*b*b, H/b, W/b)``, an exact invertible pooling
    (i-RevNet; the paper's channel pooling P_c, eq. 29b)."""

    invertible = True

    def __init__(self, block_size: int = 2):
        super().__init__()
        self.block_size = block_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rearrange each ``b x b`` patch into channels."""
        _check_poolable(x, self.block_size, "ChannelPool")
        return F.pixel_unshuffle(x, self.block_size)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Depth-to-space, the exact inverse of :meth:`forward`."""
        return F.pixel_shuffle(y, self.block_size)

    def backward_from_output(self, y, grad_y, known_input=None):
        """``(x, grad_x, [])``: a permutation, so the gradient goes back through the inverse."""
        x = known_input if known_input is not None else self.inverse(y)
        return x, self.inverse(grad_y), []


class BatchPool(nn.Module):
    """Batch pooling P_b (eq. 29d): ``(N, C, H, W) -> (b*b*N, C, H/b, W/b)``.

    Output sample ``k*N + n`` is the sub-image ``x[n, :, i::b, j::b]`` with ``k = i*b + j``:
    the pooled tensor keeps the channel count, so following convolutions do not grow
    quadratically as after channel pooling. Undo it before anything per-sample (the loss)
    with :class:`BatchUnpool`.
    """

    invertible = True

    def __init__(self, block_size: int = 2):
        super().__init__()
        self.block_size = block_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (b*b*N, C, H/b, W/b)``."""
        _check_poolable(x, self.block_size, "BatchPool")
        n, c, h, w = x.shape
        b = self.block_size
        y = x.reshape(n, c, h // b, b, w // b, b).permute(3, 5, 0, 1, 2, 4)
        return y.reshape(b * b * n, c, h // b, w // b)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """``(b*b*N, C, h, w) -> (N, C, h*b, w*b)``, the exact inverse of :meth:`forward`."""
        b = self.block_size
        if y.dim() != 4 or y.shape[0] % (b * b):
            raise ShapeError(
                f"BatchPool({b}).inverse needs (N, C, H, W) with N divisible by {b * b}, "
                f"got {tuple(y.shape)}"
            )
        bn, c, h, w = y.shape
        n = bn // (b * b)
        x = y.reshape(b, b, n, c, h, w).permute(2, 3, 4, 0, 5, 1)
        return x.reshape(n, c, h * b, w * b)

    def backward_from_output(self, y, grad_y, known_input=None):
        """``(x, grad_x, [])``: a permutation, so the gradient goes back through the inverse."""
        x = known_input if known_input is not None else self.inverse(y)
        return x, self.inverse(grad_y), []


class BatchUnpool(nn.Module):
    """The inverse of :class:`BatchPool` as a layer: ``(b*b*N, C, h, w) -> (N, C, h*b, w*b)``,
    used in a model head to give every sample its own row again before pooling and the loss."""

    invertible = True

    def __init__(self, block_size: int = 2):
        super().__init__()
        self.pool = BatchPool(block_size)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """Undo one batch pooling."""
        return self.pool.inverse(y)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """Batch-pool again."""
        return self.pool(x)

    def backward_from_output(self, y, grad_y, known_input=None):
        """``(x, grad_x, [])``: a permutation, so the gradient goes back through the inverse."""
        x = known_input if known_input is not None else self.inverse(y)
        return x, self.inverse(grad_y), []


class InvertibleBatchNorm2d(nn.Module):
    """Batch normalisation with an exact inverse (eq. 23), keeping only per-channel statistics.

    ``y = s * (x - mean) / sqrt(var + eps) + beta`` with the scale ``s = |gamma| + eps_i``.
    The paper writes ``|gamma + eps_i|``; we bound the scale below by ``eps_i`` for every
    ``gamma`` (with ``|gamma + eps_i|`` a weight ``gamma = -eps_i`` makes the layer singular),
    which serves both purposes the paper gives eps_i: the noise amplification ``1/s`` of the
    inverse is at most ``1/eps_i``, and the inverse never divides by zero.

    Training mode normalises with the batch statistics and remembers them (2 x C numbers) for
    :meth:`inverse` and :meth:`backward_from_output`; running statistics are updated as in ``nn.BatchNorm2d`` (once per
    forward call). Eval mode uses the running statistics both ways.
    """

    invertible = True

    def __init__(self, channels: int, eps_i: float = 0.1, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        if eps_i <= 0:
            raise ConfigError(
                f"InvertibleBatchNorm2d needs eps_i > 0 (the smallest scale), got {eps_i}"
            )
        self.channels, self.eps_i, self.eps, self.momentum = channels, eps_i, eps, momentum
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        self._batch_stats: tuple[torch.Tensor, torch.Tensor] | None = None
        self.replaying = False
        """set by :func:`replaying_batch_stats`: training-mode forward with the remembered
        batch statistics, updating nothing (the backward pass's reconstruction)"""

    def scale(self) -> torch.Tensor:
        """The per-channel scale ``|gamma| + eps_i``, shape ``(C,)``."""
        return self.weight.abs() + self.eps_i

    def _view(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(1, -1, 1, 1)

    def _statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, 1 / sqrt(var + eps))`` per channel: the last training forward's batch
        statistics in training mode, the running ones in eval mode."""
        if not self.training:
            return self.running_mean, torch.rsqrt(self.running_var + self.eps)
        if self._batch_stats is None:
            raise InvertibilityError(
                "InvertibleBatchNorm2d.inverse in training mode needs the batch statistics "
                "of a forward call; run forward first (or switch to eval mode)"
            )
        return self._batch_stats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (N, C, H, W)``."""
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ShapeError(
                f"InvertibleBatchNorm2d({self.channels}) needs (N, {self.channels}, H, W), "
                f"got {tuple(x.shape)}"
            )
        if not self.training:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.scale(), self.bias, eps=self.eps
            )
        if self.replaying:
            mean, invstd = self._statistics()
            return (x - self._view(mean)) * self._view(invstd * self.scale()) + self._view(
                self.bias
            )
        # the native kernel (a Python var_mean over (N, H, W) was several times slower on CPU)
        # normalises, updates the running statistics (unbiased variance, momentum) and returns
        # the batch statistics that the inverse needs
        out, mean, invstd = torch.ops.aten.native_batch_norm(
            x, self.scale(), self.bias, self.running_mean, self.running_var, True,
            self.momentum, self.eps,
        )  # fmt: skip
        self.num_batches_tracked.add_(1)
        self._batch_stats = (mean.detach(), invstd.detach())
        return out

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """``x = sqrt(var + eps) * (y - beta) / s + mean`` with the statistics of the last
        training forward (eval mode: the running statistics)."""
        mean, invstd = self._statistics()
        unscaled = (y - self._view(self.bias)) / self._view(self.scale())
        return unscaled / self._view(invstd) + self._view(mean)

    def backward_from_output(self, y, grad_y, known_input=None):
        """Rebuild the input from the output ``y`` and back-propagate ``grad_y`` analytically
        (the batch statistics' own gradient included), without recomputing the forward.

        Returns ``(x, grad_x, [(weight, grad), (bias, grad)])``; nothing is updated.
        """
        mean, invstd = self._statistics()
        with torch.no_grad():
            x = known_input if known_input is not None else self.inverse(y)
            grad_x, grad_scale, grad_bias = torch.ops.aten.native_batch_norm_backward(
                grad_y, x, self.scale(), self.running_mean, self.running_var, mean, invstd,
                self.training, self.eps, [True, True, True],
            )  # fmt: skip
            grad_weight = grad_scale * torch.sign(self.weight)  # d|gamma|/dgamma
        return x, grad_x, [(self.weight, grad_weight), (self.bias, grad_bias)]

    def extra_repr(self) -> str:
        return f"{self.channels}, eps_i={self.eps_i}, eps={self.eps}, momentum={self.momentum}"


class InvertibleLeakyReLU(nn.Module):
    """Leaky ReLU with its inverse (eq. 24): ``y = x`` for ``x > 0``, ``y = slope * x``
    otherwise; ``x = y / slope`` for ``y <= 0``.

    ``negative_slope`` follows ``nn.LeakyReLU``; the paper's ``n`` is ``1 / negative_slope``
    (its SNR factor ``4 / ((1 + 1/n^2)(1 + n^2))``, eq. 28, is the same for n and 1/n).
    """

    invertible = True

    def __init__(self, negative_slope: float = 0.5):
        super().__init__()
        if negative_slope <= 0:
            raise ConfigError(
                f"InvertibleLeakyReLU needs negative_slope > 0 (0 is not invertible), got "
                f"{negative_slope}"
            )
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Element-wise, any shape."""
        return F.leaky_relu(x, self.negative_slope)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Element-wise inverse: a Leaky ReLU of slope ``1 / negative_slope``."""
        return F.leaky_relu(y, 1 / self.negative_slope)

    def backward_from_output(self, y, grad_y, known_input=None):
        """``(x, grad_x, [])`` from the output ``y`` (the sign of ``y`` is that of ``x``)."""
        x = known_input if known_input is not None else self.inverse(y)
        grad_x = torch.ops.aten.leaky_relu_backward(grad_y, y, self.negative_slope, True)
        return x, grad_x, []

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class InvertibleSequential(nn.Sequential):
    """An ``nn.Sequential`` of invertible layers, with ``inverse`` applying theirs in reverse.

    Inside a :class:`~smallfoot.reversible.RevBlock` built with ``layerwise=True`` (the
    hybrid design) the backward pass walks these layers one at a time.
    """

    invertible = True

    def __init__(self, *layers: nn.Module):
        for index, layer in enumerate(layers):
            if not getattr(layer, "invertible", False) or not callable(
                getattr(layer, "inverse", None)
            ):
                raise InvertibilityError(
                    f"layer {index} of an InvertibleSequential is a {type(layer).__name__}, "
                    "which has no exact inverse; use the invertible layers of "
                    "smallfoot.reversible (InvertibleBatchNorm2d, InvertibleLeakyReLU, "
                    "InvertibleConv2d, ChannelPool, BatchPool)"
                )
        super().__init__(*layers)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """The input that ``forward`` maps to ``y``."""
        for layer in reversed(self):
            y = layer.inverse(y)
        return y


@contextlib.contextmanager
def replaying_batch_stats(module: nn.Module):
    """Within the body, every :class:`InvertibleBatchNorm2d` in ``module`` normalises with the
    batch statistics of its last forward call and updates nothing: the backward pass rebuilds
    activations with the statistics the forward pass used, without recomputing them."""
    layers = [m for m in module.modules() if isinstance(m, InvertibleBatchNorm2d)]
    for layer in layers:
        layer.replaying = True
    try:
        yield
    finally:
        for layer in layers:
            layer.replaying = False
