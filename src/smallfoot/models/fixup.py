"""Fixup-ResNet-18/34 (Zhang, Dauphin & Ma 2019): residual nets without normalisation.

Fixup replaces batch norm by scalar biases before each convolution and activation and a
scalar multiplier (a "scaling layer") at the end of each residual branch, with the
branch's last convolution and the classifier initialised to zero and the first branch
convolution scaled by ``L ** -0.5`` (L residual branches). Facto-CNN evaluates these nets,
and their scaling layers store a whole feature map for one scalar's gradient.

One departure from the Fixup authors' code (hongyi-zhang/Fixup), whose shortcut
convolutions are He fan-out and whose stem keeps PyTorch's default: here both are He fan-in,
so that narrow nets (width 8) keep the signal's scale down to the classifier and train.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from smallfoot.errors import ConfigError
from smallfoot.models.basic import image_shape
from smallfoot.models.registry import register_model


class Bias(nn.Module):
    """Adds one learned scalar (initially 0) to its input; saves nothing for backward. Trains
    at a tenth of the rate (``lr_scale``, read by ``make_optimizer``), as in the Fixup
    authors' code."""

    lr_scale = 0.1

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x + b``, any shape."""
        return x + self.bias


class Scale(nn.Module):
    """Multiplies its input by one learned scalar (initially 1): Fixup's scaling layer.

    Autograd keeps the whole input for the scalar's gradient; Facto-CNN replaces it by a
    :class:`smallfoot.facto.PooledScale` that keeps a mean-pooled input. Trains at a tenth of
    the rate (``lr_scale``), as in the Fixup authors' code.
    """

    lr_scale = 0.1

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x * s``, any shape."""
        return x * self.weight


class FixupBasicBlock(nn.Module):
    """``relu(scale(conv2(relu(conv1(x + b1a) + b1b) + b2a)) + b2b + shortcut(x + b1a))``.

    Every step is a module (biases, ReLUs, the scale) so that Facto-CNN's ``convert`` can
    replace it; the shortcut reuses ``x + b1a`` instead of recomputing it.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.bias1a = Bias()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bias1b = Bias()
        self.relu1 = nn.ReLU()
        self.bias2a = Bias()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.scale = Scale()
        self.bias2b = Bias()
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H / stride, W / stride)."""
        x = self.bias1a(x)
        out = self.relu1(self.bias1b(self.conv1(x)))
        out = self.bias2b(self.scale(self.conv2(self.bias2a(out))))
        identity = x if self.shortcut is None else self.shortcut(x)
        return self.relu2(out + identity)


def fixup_resnet(
    input_shape,
    num_classes: int,
    blocks_per_stage: tuple[int, ...],
    width: int = 64,
    stem: str = "auto",
) -> nn.Sequential:
    """A Fixup-ResNet of :class:`FixupBasicBlock` s as one ``nn.Sequential``.

    ``stem``: ``"imagenet"`` (7x7/2 conv, 3x3/2 max pool), ``"cifar"`` (3x3/1 conv) or
    ``"auto"`` (imagenet from 64 pixels up). ``width``: channels of the first stage
    (doubled at each of the 4 stages).
    """
    c, h, w = image_shape("fixup_resnet", input_shape, min_side=8)
    if stem == "auto":
        stem = "imagenet" if min(h, w) >= 64 else "cifar"
    if stem == "imagenet":
        layers = [
            ("conv1", nn.Conv2d(c, width, 7, 2, 3, bias=False)),
            ("bias1", Bias()),
            ("relu", nn.ReLU()),
            ("maxpool", nn.MaxPool2d(3, 2, 1)),
        ]
    elif stem == "cifar":
        layers = [
            ("conv1", nn.Conv2d(c, width, 3, 1, 1, bias=False)),
            ("bias1", Bias()),
            ("relu", nn.ReLU()),
        ]
    else:
        raise ConfigError(f"unknown Fixup-ResNet stem {stem!r}; choose auto, cifar or imagenet")
    channels = width
    num_blocks = sum(blocks_per_stage)
    blocks = []
    for stage, count in enumerate(blocks_per_stage):
        out = width * 2**stage
        for index in range(count):
            stride = 2 if stage > 0 and index == 0 else 1
            block = FixupBasicBlock(channels, out, stride)
            blocks.append(block)
            layers.append((f"layer{stage + 1}_{index}", block))
            channels = out
    fc = nn.Linear(channels, num_classes)
    layers += [
        ("avgpool", nn.AdaptiveAvgPool2d(1)),
        ("flatten", nn.Flatten()),
        ("bias2", Bias()),
        ("fc", fc),
    ]
    net = nn.Sequential(OrderedDict(layers))
    # The stem and the shortcut convolutions keep the forward signal's scale (He, fan-in).
    # With fan-out every downsampling shortcut halved the variance: at width 8 the pooled
    # features reached the zero-initialised classifier at 0.07 rms, and three seeds of three
    # stayed at chance through a 6,000-image epoch (fan-in: all three learning).
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
    for block in blocks:
        fan = block.conv1.weight.shape[0] * math.prod(block.conv1.weight.shape[2:])
        nn.init.normal_(block.conv1.weight, 0.0, math.sqrt(2.0 / fan) * num_blocks**-0.5)
        nn.init.zeros_(block.conv2.weight)
    nn.init.zeros_(fc.weight)
    nn.init.zeros_(fc.bias)
    return net


@register_model(
    "fixup_resnet18", "Fixup-ResNet-18: no batch norm; scalar biases and scaling layers"
)
def fixup_resnet18(input_shape, num_classes, width: int = 64, stem: str = "auto") -> nn.Sequential:
    """Fixup-ResNet-18 (2, 2, 2, 2 basic blocks); see :func:`fixup_resnet`."""
    return fixup_resnet(input_shape, num_classes, (2, 2, 2, 2), width, stem)


@register_model(
    "fixup_resnet34", "Fixup-ResNet-34: no batch norm; scalar biases and scaling layers"
)
def fixup_resnet34(input_shape, num_classes, width: int = 64, stem: str = "auto") -> nn.Sequential:
    """Fixup-ResNet-34 (3, 4, 6, 3 basic blocks); see :func:`fixup_resnet`."""
    return fixup_resnet(input_shape, num_classes, (3, 4, 6, 3), width, stem)
