"""ResNets: CIFAR-style resnet8/20/32/56 (He et al. 2016, sec. 4.2) and ResNet-18.

Every network is an ``nn.Sequential`` of (stem, residual blocks..., head), so layer-wise
training and checkpointing can split it at block boundaries.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from smallfoot.models.basic import image_shape
from smallfoot.models.registry import register_model


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN projection) shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def resnet(
    input_shape, num_classes: int, blocks_per_stage, widths, imagenet_stem: bool = False
) -> nn.Sequential:
    """A ResNet of BasicBlocks: stem, stages (``blocks_per_stage[i]`` blocks of ``widths[i]``
    channels, stride 2 at each new stage), global average pooling and a linear head."""
    c, _, _ = image_shape("resnet", input_shape, min_side=2 ** len(widths))
    if imagenet_stem:
        stem = nn.Sequential(
            nn.Conv2d(c, widths[0], 7, 2, 3, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
    else:
        stem = nn.Sequential(
            nn.Conv2d(c, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
    modules = {"stem": stem}
    channels = widths[0]
    for stage, (blocks, width) in enumerate(zip(blocks_per_stage, widths, strict=True), start=1):
        for index in range(blocks):
            stride = 2 if stage > 1 and index == 0 else 1
            modules[f"stage{stage}_block{index}"] = BasicBlock(channels, width, stride)
            channels = width
    modules["head"] = nn.Sequential(
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)
    )
    return nn.Sequential(OrderedDict(modules))


def _cifar_resnet(depth: int):
    def build(input_shape, num_classes, width: int = 16, blocks_per_stage: int | None = None):
        n = blocks_per_stage if blocks_per_stage is not None else (depth - 2) // 6
        return resnet(input_shape, num_classes, (n, n, n), (width, 2 * width, 4 * width))

    return build


for _depth in (8, 20, 32, 56):
    register_model(
        f"resnet{_depth}",
        f"CIFAR-style ResNet-{_depth}: 3 stages of {(_depth - 2) // 6} basic blocks, 16/32/64 channels",
    )(_cifar_resnet(_depth))


@register_model(
    "resnet18",
    "ResNet-18: 4 stages of 2 basic blocks, 64-512 channels; 3x3 stem below 64px, 7x7 + max-pool above",
)
def resnet18(
    input_shape,
    num_classes,
    width: int = 64,
    blocks_per_stage: int = 2,
    imagenet_stem: bool | None = None,
):
    """ResNet-18 (``blocks_per_stage`` sets the depth for sweeps; ``width`` the first stage's channels)."""
    if imagenet_stem is None:
        imagenet_stem = min(input_shape[1:]) >= 64
    widths = (width, 2 * width, 4 * width, 8 * width)
    return resnet(input_shape, num_classes, (blocks_per_stage,) * 4, widths, imagenet_stem)
