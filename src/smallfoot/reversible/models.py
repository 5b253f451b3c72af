"""Reversible model builders: ``revnet18`` (ResNet-18 layout with reversible stages)."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from smallfoot.errors import ShapeError
from smallfoot.models import register_model
from smallfoot.reversible.core import RevSequence, basic_rev_block
from smallfoot.reversible.layers import InvertibleDownsample


def revnet(
    input_shape,
    num_classes: int,
    blocks_per_stage,
    widths,
    dropout: float = 0.0,
    memory_free: bool = True,
) -> nn.Sequential:
    """Stem conv, then per stage a :class:`RevSequence` of ``blocks_per_stage[i]`` reversible
    blocks at ``widths[i]`` channels; between stages an invertible 2x2 space-to-depth followed
    by a 1x1 conv-BN to the next width (the only non-reversible layers, a fixed count per
    stage); global average pooling and a linear head."""
    if len(input_shape) != 3:
        raise ShapeError(f"revnet needs image input (C, H, W), got {tuple(input_shape)}")
    c, h, w = input_shape
    if min(h, w) < 2 ** (len(widths) - 1):
        raise ShapeError(
            f"revnet with {len(widths)} stages needs images of at least "
            f"{2 ** (len(widths) - 1)} px, got {h}x{w}"
        )
    if any(width % 2 for width in widths):
        raise ShapeError(f"revnet widths must be even (channels split in halves), got {widths}")
    modules = OrderedDict(
        stem=nn.Sequential(nn.Conv2d(c, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]))
    )
    channels = widths[0]
    for stage, (blocks, width) in enumerate(zip(blocks_per_stage, widths, strict=True), start=1):
        if stage > 1:
            modules[f"down{stage}"] = nn.Sequential(
                InvertibleDownsample(2),
                nn.Conv2d(4 * channels, width, 1, bias=False),
                nn.BatchNorm2d(width),
            )
            channels = width
        modules[f"stage{stage}"] = RevSequence(
            [basic_rev_block(width, dropout) for _ in range(blocks)], memory_free=memory_free
        )
    modules["head"] = nn.Sequential(
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(channels, num_classes),
    )
    return nn.Sequential(modules)


@register_model(
    "revnet18",
    "RevNet with the ResNet-18 layout: 4 stages of 2 reversible blocks, 64-512 channels",
)
def revnet18(
    input_shape,
    num_classes,
    width: int = 64,
    blocks_per_stage: int = 2,
    dropout: float = 0.0,
    memory_free: bool = True,
):
    """RevNet-18 (``width`` the first stage's channels, doubled per stage; ``blocks_per_stage``
    sets the depth; ``memory_free=False`` keeps autograd's activations, for comparison)."""
    return revnet(
        input_shape,
        num_classes,
        (blocks_per_stage,) * 4,
        (width, 2 * width, 4 * width, 8 * width),
        dropout=dropout,
        memory_free=memory_free,
    )
