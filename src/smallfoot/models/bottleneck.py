"""Bottleneck heads (Sartipi & Bernal, figure 2): a cascade of fully connected layers halving in
width from ``K`` down to the narrowest width ``W``, attached to a convolutional feature extractor
in place of a wide classifier.

``FeatureNet(features, head)`` keeps the two sections apart so the memory profile can tell the
forward/backward through the features (fwd1/bwd1) from those through the head (fwd2/bwd2), and
so the manifold regulariser can read the activations of every bottleneck layer.
"""

from __future__ import annotations

import torch
from torch import nn

from smallfoot.errors import ConfigError, ShapeError
from smallfoot.models.registry import build_model, register_model


def bottleneck_widths(head_width: int, bottleneck_width: int) -> list[int]:
    """Widths ``[K, K/2, K/4, ..., W]`` of the cascade: halve ``head_width`` K while the half is
    still wider than ``bottleneck_width`` W, then end at W (so W need not divide K)."""
    if bottleneck_width < 1:
        raise ConfigError(f"bottleneck_width must be at least 1, got {bottleneck_width}")
    if head_width < bottleneck_width:
        raise ConfigError(
            f"head_width (K={head_width}) must be at least bottleneck_width (W={bottleneck_width}); "
            "raise head_width or lower bottleneck_width"
        )
    widths = [int(head_width)]
    while widths[-1] // 2 > bottleneck_width:
        widths.append(widths[-1] // 2)
    if widths[-1] != bottleneck_width:
        widths.append(int(bottleneck_width))
    return widths


def relu_linear(in_features: int, out_features: int) -> nn.Linear:
    """A Linear layer feeding a ReLU, He-initialised (normal, fan-in) with zero bias: PyTorch's
    default init shrinks the signal by about 3x per layer, which starves a deep narrow cascade."""
    layer = nn.Linear(in_features, out_features)
    nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    nn.init.zeros_(layer.bias)
    return layer


class BottleneckHead(nn.Module):
    """``in_features -> K -> K/2 -> ... -> W -> num_classes``: each bottleneck layer is Linear + ReLU,
    the classifier a plain Linear.

    ``forward(z)`` maps features ``z`` of shape ``(N, in_features)`` to logits ``(N, num_classes)``;
    ``forward_activations(z)`` also returns ``[z, x^(0), ..., x^(L-1)]``, the head's input and the
    output of each of its ``L`` bottleneck layers (each ``(N, width)``).
    """

    def __init__(self, in_features: int, num_classes: int, widths: list[int]):
        super().__init__()
        if not widths:
            raise ConfigError("a bottleneck head needs at least one layer width")
        self.widths = [int(w) for w in widths]
        layers, previous = [], int(in_features)
        for width in self.widths:
            layers.append(nn.Sequential(relu_linear(previous, width), nn.ReLU()))
            previous = width
        self.layers = nn.ModuleList(layers)
        self.classifier = nn.Linear(previous, num_classes)

    def forward_activations(self, z: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(logits, [z, x^(0), ..., x^(L-1)])`` for features ``z`` of shape ``(N, in_features)``."""
        activations = [z]
        for layer in self.layers:
            activations.append(layer(activations[-1]))
        return self.classifier(activations[-1]), activations

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` for features ``z`` of shape ``(N, in_features)``."""
        for layer in self.layers:
            z = layer(z)
        return self.classifier(z)


def wide_head(
    in_features: int, num_classes: int, hidden: int = 4096, dropout: float = 0.5
) -> nn.Sequential:
    """The vanilla VGG classifier: ``Linear(F, H)-ReLU-Dropout-Linear(H, H)-ReLU-Dropout-Linear(H, C)``."""
    return nn.Sequential(
        relu_linear(in_features, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        relu_linear(hidden, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


class FeatureNet(nn.Module):
    """A convolutional feature extractor followed by a classifier head: ``head(features(x))``.

    ``features`` maps images ``(N, C, H, W)`` to flat features ``(N, F)``; ``head`` maps those to
    logits ``(N, num_classes)``.
    """

    def __init__(self, features: nn.Module, head: nn.Module):
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` of images ``x``."""
        return self.head(self.features(x))


def feature_extractor(base: nn.Sequential) -> nn.Sequential:
    """The convolutional section of a baseline ``nn.Sequential`` (cnn4, vgg*): its layers up to and
    including the first ``nn.Flatten``; the classifier after it is dropped."""
    if not isinstance(base, nn.Sequential):
        raise ConfigError(
            f"a bottleneck head attaches to an nn.Sequential feature extractor, "
            f"not {type(base).__name__}; use --model cnn4 or --model vgg16"
        )
    for i, layer in enumerate(base):
        if isinstance(layer, nn.Flatten):
            return nn.Sequential(*list(base)[: i + 1])
    raise ConfigError(
        "the base model has no nn.Flatten separating its features from its classifier; "
        "use --model cnn4 or --model vgg16"
    )


@torch.no_grad()
def feature_size(features: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Number of flat features ``F`` that ``features`` produces for one input of ``input_shape``."""
    was_training = features.training
    features.eval()
    size = features(torch.zeros(1, *input_shape)).shape[1]
    features.train(was_training)
    return int(size)


def attach_head(
    base: str,
    input_shape,
    num_classes: int,
    head: str = "bottleneck",
    bottleneck_width: int = 16,
    head_width: int = 256,
    hidden: int = 4096,
    dropout: float = 0.5,
    **base_options,
) -> FeatureNet:
    """The features of registered model ``base`` (built with ``base_options``) with a new head.

    ``head="bottleneck"``: the cascade ``head_width -> ... -> bottleneck_width`` (figure 2);
    ``head="wide"``: the vanilla VGG classifier with two ``hidden``-wide layers and ``dropout``.
    """
    features = feature_extractor(build_model(base, input_shape, num_classes, **base_options))
    size = feature_size(features, tuple(input_shape))
    if head == "bottleneck":
        return FeatureNet(
            features,
            BottleneckHead(size, num_classes, bottleneck_widths(head_width, bottleneck_width)),
        )
    if head == "wide":
        if hidden < 1:
            raise ConfigError(f"hidden must be at least 1, got {hidden}")
        return FeatureNet(features, wide_head(size, num_classes, hidden, dropout))
    raise ConfigError(f"unknown head {head!r}; choose bottleneck or wide")


def _check_image(name: str, input_shape) -> None:
    if len(input_shape) != 3:
        raise ShapeError(f"{name} needs image inputs (C, H, W), got {tuple(input_shape)}")


for _base in ("cnn4", "vgg16"):

    def _bottleneck(input_shape, num_classes, _base=_base, **opts) -> FeatureNet:
        _check_image(f"{_base}_bottleneck", input_shape)
        return attach_head(_base, input_shape, num_classes, head="bottleneck", **opts)

    def _wide(input_shape, num_classes, _base=_base, **opts) -> FeatureNet:
        _check_image(f"{_base}_wide", input_shape)
        return attach_head(_base, input_shape, num_classes, head="wide", **opts)

    register_model(
        f"{_base}_bottleneck",
        f"{_base} features + bottleneck cascade head_width -> ... -> bottleneck_width (manifold paper)",
    )(_bottleneck)
    register_model(
        f"{_base}_wide",
        f"{_base} features + vanilla VGG classifier (two hidden-wide layers, dropout)",
    )(_wide)
