"""Output losses, built by name: ``build_loss(name, num_classes, **options)``.

Every loss comes with a ``predict_fn`` turning raw outputs into class indices, so the
Trainer reports accuracy the same way whatever the output activation.

Besides softmax + cross-entropy, this module holds the gradient-amplifying (GA) losses of
chapter 4 of the thesis (Øland, *Efficient Deep Learning*, CMU PhD thesis, 2024). All of them share the
canonical error gradient ``dL/dx = y - t`` with respect to the raw network output ``x`` (the
pre-activation of the output layer), but with a non-saturating activation ``y = f(x)``:

=============  ==========================  ==========================================  ==========
name           activation ``y(x)``          loss per sample (summed over classes)      targets
=============  ==========================  ==========================================  ==========
``exp-ga``     ``alpha exp(x)``             sparse cross-entropy ``|y| - t ln y``       {0, 16}
``pow3-ga``    ``alpha x^3 + beta``         negative correlation                        {0, 10}
                                            ``alpha x^4 / 4 + beta x - t x``
``linear-mse`` ``x``                        ``(x - t)^2 / 2``                           {-1, 1}
=============  ==========================  ==========================================  ==========

``sigmoid-ce`` (sigmoid outputs ``y = 1 / (1 + exp(-x))`` with the cross-entropy of each
output, targets {0, 1}) is table 4.1's bounded reference: the same delta ``y - t``, with ``y``
confined to [0, 1].

Defaults: exp-GA ``alpha = 0.1`` and ``t in {0, 16}`` (section 4.5), pow3-GA ``alpha = 0.001``,
``beta = 0.4``, ``t in {0, 10}`` (section 4.7), linear + MSE ``t in {-1, 1}`` (table 4.2).

Scale. Each GA loss is the thesis' loss times ``scale``, averaged over the batch like
``F.cross_entropy``, so the gradient of one sample's logits is ``scale (y - t) / B``: the
direction and the amplification of ``y - t`` are the thesis', only the step size changes
(like a factor on the learning rate). The default scale is ``1 / (K (t_true - t_other))``:
the loss averaged over the ``K`` classes (as ``nn.MSELoss`` averages) and measured in units
of the target gap (softmax-CE's one-hot gap is 1). Summed over the classes with targets up to
16 apart, the thesis' losses diverge at the learning rates that suit softmax-CE (the thesis
tunes a lower rate per loss); with the default scale the usual learning rate trains them.
``scale=1`` gives the thesis' loss exactly (``dL/dx = (y - t) / B``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from smallfoot.errors import ConfigError, ShapeError, UnknownNameError


def argmax_predict(output: torch.Tensor) -> torch.Tensor:
    """Class indices ``(B,)`` of the largest raw output ``(B, K)``."""
    return output.argmax(dim=1)


@dataclass(frozen=True)
class LossInfo:
    """A registered loss: its name, description and builder ``(num_classes, **options) -> nn.Module``."""

    name: str
    description: str
    builder: Callable[..., nn.Module]


_REGISTRY: dict[str, LossInfo] = {}


def register_loss(name: str, description: str):
    """Decorator registering a loss builder ``(num_classes, **options) -> nn.Module`` as ``name``."""

    def decorate(builder):
        _REGISTRY[name] = LossInfo(name, description, builder)
        return builder

    return decorate


def list_losses() -> list[LossInfo]:
    """The registered losses, sorted by name."""
    return [info for _, info in sorted(_REGISTRY.items())]


def build_loss(
    name: str, num_classes: int, **options
) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    """Build loss ``name``; returns ``(loss_fn(output, target) -> scalar, predict_fn(output) -> classes)``.

    ``options`` are the loss' keyword arguments (``target_values``, ``alpha``, ``beta``,
    ``scale``);
    one the loss does not take raises :class:`ConfigError`.
    """
    if name not in _REGISTRY:
        raise UnknownNameError("loss", name, sorted(_REGISTRY))
    builder = _REGISTRY[name].builder
    accepted = [p for p in inspect.signature(builder).parameters if p != "num_classes"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        takes = ", ".join(accepted) if accepted else "no options"
        raise ConfigError(
            f"loss {name!r} does not take {', '.join(unknown)}; it takes: {takes} "
            "(drop --target-values/--ga-alpha/--ga-beta or choose another --loss)"
        )
    loss = builder(num_classes, **options)
    return loss, getattr(loss, "predict", argmax_predict)


def encode_targets(
    target: torch.Tensor,
    num_classes: int,
    values: Sequence[float] = (0.0, 1.0),
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Target vectors ``(B, K)`` from class indices ``(B,)``.

    The true class gets ``values[1]``, every other class ``values[0]`` (e.g. ``(0, 16)`` gives
    the thesis' "larger target values"; ``(0, 1)`` is one-hot).
    """
    if target.dim() != 1:
        raise ShapeError(f"targets must be class indices of shape (B,), got {tuple(target.shape)}")
    low, high = values
    encoded = torch.full((len(target), num_classes), float(low), dtype=dtype, device=target.device)
    encoded[torch.arange(len(target), device=target.device), target] = float(high)
    return encoded


def _check_values(values, name: str) -> tuple[float, float]:
    if isinstance(values, str) or not isinstance(values, Sequence) or len(values) != 2:
        raise ConfigError(
            f"{name}: target values must be two numbers (other class, true class), e.g. 0,16; "
            f"got {values!r}"
        )
    low, high = (float(v) for v in values)
    if not high > low:
        raise ConfigError(
            f"{name}: the true-class target ({high}) must exceed the other-class target ({low})"
        )
    return low, high


def _check_scale(scale, values: tuple[float, float], num_classes: int, name: str) -> float:
    """The loss factor: ``scale``, or by default ``1 / (K (t_true - t_other))``: the mean over
    the ``K`` classes, in units of the target gap (see the module docstring)."""
    if scale is None:
        return 1.0 / (num_classes * (values[1] - values[0]))
    if not float(scale) > 0:
        raise ConfigError(f"{name}: scale must be positive (it multiplies the loss), got {scale}")
    return float(scale)


def _check_logits(output: torch.Tensor, num_classes: int, name: str) -> None:
    if output.dim() != 2 or output.shape[1] != num_classes:
        raise ShapeError(
            f"{name} expects raw outputs of shape (B, {num_classes}), got {tuple(output.shape)}"
        )


class OutputLoss(nn.Module):
    """Base of the losses here: per-sample losses, class scores and a prediction helper.

    Subclasses implement :meth:`per_sample` (``(B,)`` losses from raw outputs ``(B, K)`` and
    class indices ``(B,)``) and :meth:`activation` (the output activation ``y = f(x)``).
    """

    num_classes: int

    def per_sample(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of each sample ``(B,)``, summed over the classes."""
        raise NotImplementedError

    def activation(self, output: torch.Tensor) -> torch.Tensor:
        """The output activation ``y = f(x)`` applied to raw outputs ``x`` ``(B, K)``."""
        raise NotImplementedError

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of :meth:`per_sample`: a scalar."""
        return self.per_sample(output, target).mean()

    def scores(self, output: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Class scores ``(B, K)``: the activation ``y``; with ``normalize``, probabilities.

        The thesis (section 4.2) argues that normalisation can be applied after training;
        ``normalize=True`` does so: non-negative scores are divided by their row sum (for
        exp-GA this is exactly ``softmax(x)``); scores that can be negative are first shifted
        by their row minimum. Rows then lie in [0, 1] and sum to one; the argmax is unchanged
        (a row of equal scores becomes uniform).
        """
        y = self.activation(output)
        if not normalize:
            return y
        return normalize_scores(y)

    def predict(self, output: torch.Tensor) -> torch.Tensor:
        """Class indices ``(B,)``: the argmax of the raw outputs (every activation is increasing)."""
        return output.argmax(dim=1)


def normalize_scores(scores: torch.Tensor) -> torch.Tensor:
    """Rows of ``scores`` ``(B, K)`` made non-negative (shift by the row minimum when negative) and summing to one."""
    low = scores.min(dim=1, keepdim=True).values
    shifted = torch.where(low < 0, scores - low, scores)
    total = shifted.sum(dim=1, keepdim=True)
    uniform = torch.full_like(shifted, 1.0 / shifted.shape[1])
    return torch.where(
        total > 0, shifted / total.clamp_min(torch.finfo(shifted.dtype).tiny), uniform
    )


class SoftmaxCrossEntropy(OutputLoss):
    """Softmax + cross-entropy on logits ``(B, K)`` and class indices ``(B,)``; mean over the batch."""

    def __init__(self, num_classes: int | None = None):
        super().__init__()
        self.num_classes = num_classes

    def per_sample(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of each sample ``(B,)``."""
        return F.cross_entropy(output, target, reduction="none")

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy (a scalar)."""
        return F.cross_entropy(output, target)

    def activation(self, output: torch.Tensor) -> torch.Tensor:
        """``softmax(x)`` over the classes."""
        return output.softmax(dim=1)


class SparseCrossEntropy(OutputLoss):
    """exp-GA (thesis section 4.5-4.6): exponential outputs ``y = alpha exp(x)`` with the sparse
    cross-entropy ``L = sum_k |y_k| - t_k ln y_k`` (cross-entropy plus an L1 penalty).

    ``dL/dx = scale (y - t)`` (for ``alpha > 0``; ``scale`` as in the module docstring).
    Computed from the logits: ``ln y = ln(alpha) + x``,
    never ``log(exp(x))``, and in float64, so the loss stays finite for logits up to about 700 in
    magnitude (in float32 ``alpha exp(x)`` itself overflows above about 88).
    """

    def __init__(
        self,
        num_classes: int,
        alpha: float = 0.1,
        target_values: Sequence[float] = (0.0, 16.0),
        scale: float | None = None,
    ):
        super().__init__()
        if not alpha > 0:
            raise ConfigError(f"exp-ga needs alpha > 0 (the output is alpha exp(x)), got {alpha}")
        self.num_classes, self.alpha = num_classes, float(alpha)
        self.target_values = _check_values(target_values, "exp-ga")
        if self.target_values[0] < 0:
            raise ConfigError(
                f"exp-ga outputs are positive, so targets must be >= 0; got {self.target_values}"
            )
        self.scale = _check_scale(scale, self.target_values, num_classes, "exp-ga")

    def per_sample(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Sparse cross-entropy of each sample ``(B,)`` (float64)."""
        _check_logits(output, self.num_classes, "exp-ga")
        x = output.double()
        t = encode_targets(target, self.num_classes, self.target_values, torch.float64)
        log_alpha = torch.log(torch.tensor(self.alpha, dtype=torch.float64))
        y = torch.exp(x + log_alpha)
        return self.scale * (y - t * (x + log_alpha)).sum(dim=1)

    def activation(self, output: torch.Tensor) -> torch.Tensor:
        """``alpha exp(x)``."""
        return self.alpha * torch.exp(output)

    def scores(self, output: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """``alpha exp(x)``; normalised, ``softmax(x)`` (alpha cancels), computed stably."""
        return output.softmax(dim=1) if normalize else self.activation(output)


class NegativeCorrelationLoss(OutputLoss):
    """pow3-GA (thesis sections 4.7-4.8): linear outputs ``x`` with the negative-correlation loss
    ``L = sum_k alpha x_k^4 / 4 + beta x_k - t_k x_k``.

    ``dL/dx = alpha x^3 + beta - t = y - t`` with the cubic activation ``y = alpha x^3 + beta``
    (times ``scale``, as in the module docstring).
    """

    def __init__(
        self,
        num_classes: int,
        alpha: float = 0.001,
        beta: float = 0.4,
        target_values: Sequence[float] = (0.0, 10.0),
        scale: float | None = None,
    ):
        super().__init__()
        if not alpha > 0:
            raise ConfigError(f"pow3-ga needs alpha > 0, got {alpha}")
        if beta < 0:
            raise ConfigError(f"pow3-ga needs beta >= 0, got {beta}")
        self.num_classes, self.alpha, self.beta = num_classes, float(alpha), float(beta)
        self.target_values = _check_values(target_values, "pow3-ga")
        self.scale = _check_scale(scale, self.target_values, num_classes, "pow3-ga")

    def per_sample(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Negative-correlation loss of each sample ``(B,)``."""
        _check_logits(output, self.num_classes, "pow3-ga")
        t = encode_targets(target, self.num_classes, self.target_values, output.dtype)
        loss = 0.25 * self.alpha * output**4 + self.beta * output - t * output
        return self.scale * loss.sum(dim=1)

    def activation(self, output: torch.Tensor) -> torch.Tensor:
        """``alpha x^3 + beta``."""
        return self.alpha * output**3 + self.beta


class LinearMSE(OutputLoss):
    """Linear outputs with the squared error ``L = sum_k (x_k - t_k)^2 / 2``: ``dL/dx = x - t``
    (times ``scale``, as in the module docstring)."""

    def __init__(
        self,
        num_classes: int,
        target_values: Sequence[float] = (-1.0, 1.0),
        scale: float | None = None,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.target_values = _check_values(target_values, "linear-mse")
        self.scale = _check_scale(scale, self.target_values, num_classes, "linear-mse")

    def per_sample(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Half the squared error of each sample ``(B,)``."""
        _check_logits(output, self.num_classes, "linear-mse")
        t = encode_targets(target, self.num_classes, self.target_values, output.dtype)
        return 0.5 * self.scale * ((output - t) ** 2).sum(dim=1)

    def activation(self, output: torch.Tensor) -> torch.Tensor:
        """The identity."""
        return output


class SigmoidCrossEntropy(OutputLoss):
    """Sigmoid outputs ``y = 1 / (1 + exp(-x))`` with the cross-entropy of each output,
    ``L = sum_k -t_k ln y_k - (1 - t_k) ln(1 - y_k)`` (times ``scale``): the canonical pair
    whose error delta is ``dL/dx = scale (y - t)``, bounded because the sigmoid is (table 4.1's
    sigmoid outputs, section 4.3). Targets lie in [0, 1]; computed from the logits."""

    def __init__(
        self,
        num_classes: int,
        target_values: Sequence[float] = (0.0, 1.0),
        scale: float | None = None,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.target_values = _check_values(target_values, "sigmoid-ce")
        low, high = self.target_values
        if low < 0.0 or high > 1.0:
            raise ConfigError(
                f"sigmoid-ce targets must lie in [0, 1] (sigmoid outputs); got {self.target_values}"
            )
        self.scale = _check_scale(scale, self.target_values, num_classes, "sigmoid-ce")

    def per_sample(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the sigmoid outputs, summed over the classes ``(B,)``."""
        _check_logits(output, self.num_classes, "sigmoid-ce")
        t = encode_targets(target, self.num_classes, self.target_values, output.dtype)
        loss = F.binary_cross_entropy_with_logits(output, t, reduction="none")
        return self.scale * loss.sum(dim=1)

    def activation(self, output: torch.Tensor) -> torch.Tensor:
        """``sigmoid(x)``."""
        return torch.sigmoid(output)


def class_scores(loss: nn.Module, output: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """Class scores ``(B, K)`` of raw outputs under ``loss``'s activation; probabilities with ``normalize``.

    Works for every loss built here; a foreign loss module is treated as softmax + CE.
    """
    if isinstance(loss, OutputLoss):
        return loss.scores(output, normalize)
    return output.softmax(dim=1)


@register_loss("softmax-ce", "softmax + cross-entropy (the usual classifier loss)")
def _softmax_ce(num_classes: int) -> nn.Module:
    return SoftmaxCrossEntropy(num_classes)


@register_loss("exp-ga", "exp-GA: y = alpha exp(x), sparse cross-entropy (thesis 4.5-4.6)")
def _exp_ga(
    num_classes: int, alpha: float = 0.1, target_values=(0.0, 16.0), scale: float | None = None
) -> nn.Module:
    return SparseCrossEntropy(num_classes, alpha, target_values, scale)


@register_loss("pow3-ga", "pow3-GA: linear outputs, negative-correlation loss (thesis 4.7-4.8)")
def _pow3_ga(
    num_classes: int,
    alpha: float = 0.001,
    beta: float = 0.4,
    target_values=(0.0, 10.0),
    scale: float | None = None,
) -> nn.Module:
    return NegativeCorrelationLoss(num_classes, alpha, beta, target_values, scale)


@register_loss("linear-mse", "linear outputs + squared error (thesis 4.3)")
def _linear_mse(
    num_classes: int, target_values=(-1.0, 1.0), scale: float | None = None
) -> nn.Module:
    return LinearMSE(num_classes, target_values, scale)


@register_loss("sigmoid-ce", "sigmoid outputs + cross-entropy: bounded y - t (table 4.1)")
def _sigmoid_ce(
    num_classes: int, target_values=(0.0, 1.0), scale: float | None = None
) -> nn.Module:
    return SigmoidCrossEntropy(num_classes, target_values, scale)
