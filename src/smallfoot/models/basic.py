"""Plain baselines: an MLP and the thesis' 4-conv "vanilla CNN" (chapters 5-6)."""

from __future__ import annotations

import math

from torch import nn

from smallfoot.errors import ConfigError, ShapeError
from smallfoot.models.registry import register_model


def conv_bn_relu(in_channels: int, out_channels: int, batch_norm: bool = True) -> list[nn.Module]:
    """A 3x3 same-padding convolution, optional batch norm, ReLU."""
    layers = [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.ReLU(inplace=True))
    return layers


def image_shape(name: str, input_shape, min_side: int = 1) -> tuple[int, int, int]:
    """Validate a (C, H, W) input shape for model ``name``; raise ``ShapeError`` otherwise."""
    if len(input_shape) != 3:
        raise ShapeError(f"{name} needs image inputs (C, H, W), got {tuple(input_shape)}")
    c, h, w = input_shape
    if min(h, w) < min_side:
        raise ShapeError(
            f"{name} needs images of at least {min_side}x{min_side}, got {h}x{w}; "
            f"pad them (e.g. pad_to={min_side} in the data options)"
        )
    return c, h, w


MLP_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


@register_model(
    "mlp", "multi-layer perceptron: Flatten, (Linear, ReLU or tanh) x len(widths), Linear"
)
def mlp(
    input_shape,
    num_classes,
    widths=(256, 128),
    dropout: float = 0.0,
    bias: bool = True,
    activation: str = "relu",
) -> nn.Sequential:
    """Fully connected net on flattened inputs; ``widths`` are the hidden layer sizes (an int:
    one layer), ``activation`` the hidden non-linearity: ``"relu"`` or ``"tanh"`` (the
    thesis' networks, e.g. chapter 3's 784-392-50-10)."""
    if activation not in MLP_ACTIVATIONS:
        raise ConfigError(
            f"mlp activation={activation!r} is not one of {', '.join(MLP_ACTIVATIONS)}; "
            "set e.g. --model-opt activation=tanh"
        )
    widths = (widths,) if isinstance(widths, int) else tuple(widths)
    layers: list[nn.Module] = [nn.Flatten()]
    features = math.prod(input_shape)
    for width in widths:
        layers += [nn.Linear(features, int(width), bias=bias), MLP_ACTIVATIONS[activation]()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        features = int(width)
    layers.append(nn.Linear(features, num_classes, bias=bias))
    return nn.Sequential(*layers)


@register_model(
    "cnn4",
    "vanilla 4-conv CNN (thesis ch. 5-6): 4 x (conv3x3-BN-ReLU), max-pools, one linear layer",
)
def cnn4(
    input_shape,
    num_classes,
    widths=(32, 64, 128, 128),
    batch_norm: bool = True,
    pool_after=(1, 2, 4),
) -> nn.Sequential:
    """Four 3x3 conv blocks (``widths`` channels), a 2x2 max-pool after the blocks named in
    ``pool_after`` (1-based), then flatten and a single affine decision layer."""
    c, h, w = image_shape("cnn4", input_shape, min_side=2 ** len(pool_after))
    if len(widths) != 4:
        raise ShapeError(f"cnn4 takes 4 widths, got {len(widths)}")
    layers: list[nn.Module] = []
    for i, width in enumerate(widths, start=1):
        layers += conv_bn_relu(c, int(width), batch_norm)
        c = int(width)
        if i in pool_after:
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
    layers += [nn.Flatten(), nn.Linear(c * h * w, num_classes)]
    return nn.Sequential(*layers)
