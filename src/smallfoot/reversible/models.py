"""Reversible model builders with the ResNet-18 layout (4 stages, ``blocks_per_stage`` each).

| name | reversible pattern | between stages |
|---|---|---|
| ``revnet18`` | RevNet blocks (block-wise backward) | 2x2 stride-2 conv (keeps its input) |
| ``irevnet18`` | RevNet blocks, one chain for the whole body | channel pooling (x4 channels) |
| ``layerwise18`` | invertible conv / BN / Leaky ReLU layers | channel, batch, channel pooling |
| ``hybrid18`` | RevBlocks of invertible layers, layer-wise backward | channel, batch, channel pooling |

Every model is a stem convolution (it keeps only the image) -> body -> head: global average
pooling, then BN-ReLU-linear on the pooled ``(N, C)`` features, so the head keeps no full
feature map either (every F/G branch starts with its own BN, so the stem needs none).
``memory_free=False`` keeps autograd's activations, for comparison.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from smallfoot.errors import ConfigError, ShapeError
from smallfoot.models import register_model
from smallfoot.reversible.core import InvertibleConv2d, RevBlock, RevSequence, basic_rev_block
from smallfoot.reversible.layers import (
    BatchPool,
    BatchUnpool,
    ChannelPool,
    InvertibleBatchNorm2d,
    InvertibleLeakyReLU,
    InvertibleSequential,
)


def _check_image(input_shape, name: str, stages: int = 4) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ShapeError(f"{name} needs image input (C, H, W), got {tuple(input_shape)}")
    c, h, w = input_shape
    size = 2 ** (stages - 1)
    if h % size or w % size:
        raise ShapeError(
            f"{name} pools {stages - 1} times by 2, so H and W must be multiples of {size}; got "
            f"{h}x{w}: pad the images (--data-opt pad_to=32)"
        )
    return c, h, w


def _stem(in_channels: int, width: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)


def _head(channels: int, num_classes: int, unpool: int = 0) -> nn.Sequential:
    layers: list[nn.Module] = [BatchUnpool(2) for _ in range(unpool)]
    layers += [
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.BatchNorm1d(channels),
        nn.ReLU(),
        nn.Linear(channels, num_classes),
    ]
    return nn.Sequential(*layers)


def revnet(
    input_shape,
    num_classes: int,
    blocks_per_stage,
    widths,
    dropout: float = 0.0,
    memory_free: bool = True,
) -> nn.Sequential:
    """Stem conv, then per stage a :class:`RevSequence` of ``blocks_per_stage[i]`` reversible
    blocks at ``widths[i]`` channels; between stages a 2x2 stride-2 convolution to the next
    width (the same map as space-to-depth followed by a 1x1 conv, without a pooled copy). These
    transitions are the only non-reversible layers and keep their inputs (the stage outputs:
    the paper's global bottleneck, a fixed count per stage); then the pooled head."""
    c, _, _ = _check_image(input_shape, "revnet", len(widths))
    if any(width % 2 for width in widths):
        raise ShapeError(f"revnet widths must be even (channels split in halves), got {widths}")
    modules = OrderedDict(stem=_stem(c, widths[0]))
    channels = widths[0]
    for stage, (blocks, width) in enumerate(zip(blocks_per_stage, widths, strict=True), start=1):
        if stage > 1:
            down = nn.Conv2d(channels, width, 2, stride=2, bias=False)
            # its input is the stage output the chain keeps anyway: compressing it (Facto-CNN)
            # would add a copy, not save one
            down.input_kept = True
            modules[f"down{stage}"] = down
            channels = width
        modules[f"stage{stage}"] = RevSequence(
            [basic_rev_block(width, dropout) for _ in range(blocks)], memory_free=memory_free
        )
    modules["head"] = _head(channels, num_classes)
    return nn.Sequential(modules)


@register_model(
    "revnet18",
    "RevNet with the ResNet-18 layout: 4 stages of 2 reversible blocks, 108-864 channels",
)
def revnet18(
    input_shape,
    num_classes,
    width: int = 108,
    blocks_per_stage: int = 2,
    dropout: float = 0.0,
    memory_free: bool = True,
):
    """RevNet-18 (``width`` the first stage's channels, doubled per stage; ``blocks_per_stage``
    sets the depth; ``memory_free=False`` keeps autograd's activations, for comparison). The
    default width gives about the parameter count of ``resnet18`` (10.9M vs 11.2M at 3x32x32)."""
    return revnet(
        input_shape,
        num_classes,
        (blocks_per_stage,) * 4,
        (width, 2 * width, 4 * width, 8 * width),
        dropout=dropout,
        memory_free=memory_free,
    )


@register_model(
    "irevnet18",
    "i-RevNet: RevNet blocks and channel pooling, fully invertible body, 16-1024 channels",
)
def irevnet18(
    input_shape,
    num_classes,
    width: int = 16,
    blocks_per_stage: int = 2,
    dropout: float = 0.0,
    memory_free: bool = True,
):
    """i-RevNet-18: stem conv to ``width`` channels, then one invertible chain of 4 stages of
    ``blocks_per_stage`` RevNet blocks with 2x2 channel pooling between stages (channels
    ``width``, 4x, 16x, 64x: the weights grow quadratically, section 3.5); the pooled head."""
    c, _, _ = _check_image(input_shape, "irevnet18")
    if width % 2:
        raise ShapeError(f"irevnet18 width must be even, got {width}")
    chain: list[nn.Module] = []
    channels = width
    for stage in range(4):
        if stage:
            chain.append(ChannelPool(2))
            channels *= 4
        chain += [basic_rev_block(channels, dropout) for _ in range(blocks_per_stage)]
    return nn.Sequential(
        OrderedDict(
            stem=_stem(c, width),
            body=RevSequence(chain, memory_free=memory_free),
            head=_head(channels, num_classes),
        )
    )


POOLINGS = {"c": ChannelPool, "b": BatchPool}


def _pooling_plan(width: int, pooling: str, name: str) -> list[tuple[nn.Module | None, int]]:
    """(pooling before the stage, channels of the stage) for the 4 stages: ``pooling`` names
    the 3 poolings between them, ``c`` channel pooling (x4 channels), ``b`` batch pooling
    (same channels, 4x the batch)."""
    if len(pooling) != 3 or set(pooling) - set(POOLINGS):
        raise ConfigError(
            f"{name} pooling must be 3 letters of c (channel) and b (batch), one per stage "
            f"transition, got {pooling!r}; e.g. --model-opt pooling=cbc"
        )
    plan: list[tuple[nn.Module | None, int]] = [(None, width)]
    for letter in pooling:
        plan.append((POOLINGS[letter](2), plan[-1][1] * (4 if letter == "c" else 1)))
    return plan


@register_model(
    "layerwise18",
    "layer-wise invertible net: invertible conv/BN/Leaky ReLU, channel-batch-channel pooling",
)
def layerwise18(
    input_shape,
    num_classes,
    width: int = 46,
    blocks_per_stage: int = 2,
    negative_slope: float = 0.5,
    eps_i: float = 0.1,
    memory_free: bool = True,
    pooling: str = "cbc",
):
    """Layer-wise invertible network (section 4.1.5): stem conv, then one invertible chain of
    4 stages, each ``2 * blocks_per_stage`` units of invertible conv -> invertible BN ->
    invertible Leaky ReLU (``negative_slope``, ``eps_i``), pooling between stages as
    ``pooling`` says (default channel / batch / channel: channels ``width``, 4x, 4x, 16x);
    the head undoes the batch poolings."""
    c, _, _ = _check_image(input_shape, "layerwise18")
    if width % 2:
        raise ShapeError(f"layerwise18 width must be even, got {width}")
    chain: list[nn.Module] = []
    plan = _pooling_plan(width, pooling, "layerwise18")
    for pool, channels in plan:
        if pool is not None:
            chain.append(pool)
        for _ in range(2 * blocks_per_stage):
            chain += [
                InvertibleConv2d(channels),
                InvertibleBatchNorm2d(channels, eps_i=eps_i),
                InvertibleLeakyReLU(negative_slope),
            ]
    return nn.Sequential(
        OrderedDict(
            stem=_stem(c, width),
            body=RevSequence(chain, memory_free=memory_free),
            head=_head(plan[-1][1], num_classes, unpool=pooling.count("b")),
        )
    )


def hybrid_block(channels: int, negative_slope: float = 0.5, eps_i: float = 0.1) -> RevBlock:
    """A hybrid reversible block (section 4.2): a RevBlock whose F and G are invertible
    BN -> Leaky ReLU -> invertible conv on ``channels // 2`` maps, back-propagated layer-wise."""
    if channels % 4:
        raise ShapeError(f"a hybrid block needs a channel count divisible by 4, got {channels}")
    half = channels // 2

    def branch() -> InvertibleSequential:
        return InvertibleSequential(
            InvertibleBatchNorm2d(half, eps_i=eps_i),
            InvertibleLeakyReLU(negative_slope),
            InvertibleConv2d(half),
        )

    return RevBlock(branch(), branch(), layerwise=True)


@register_model(
    "hybrid18",
    "hybrid: RevBlocks of invertible layers (layer-wise backward), channel-batch-channel pooling",
)
def hybrid18(
    input_shape,
    num_classes,
    width: int = 92,
    blocks_per_stage: int = 2,
    negative_slope: float = 0.5,
    eps_i: float = 0.1,
    memory_free: bool = True,
    pooling: str = "cbc",
):
    """Hybrid invertible network (section 4.2): stem conv, then one invertible chain of 4
    stages of ``blocks_per_stage`` :func:`hybrid_block` s, pooling between stages as
    ``pooling`` says (default channel / batch / channel: channels ``width``, 4x, 4x, 16x);
    the head undoes the batch poolings."""
    c, _, _ = _check_image(input_shape, "hybrid18")
    if width % 4:
        raise ShapeError(f"hybrid18 width must be divisible by 4, got {width}")
    chain: list[nn.Module] = []
    plan = _pooling_plan(width, pooling, "hybrid18")
    for pool, channels in plan:
        if pool is not None:
            chain.append(pool)
        chain += [hybrid_block(channels, negative_slope, eps_i) for _ in range(blocks_per_stage)]
    return nn.Sequential(
        OrderedDict(
            stem=_stem(c, width),
            body=RevSequence(chain, memory_free=memory_free),
            head=_head(plan[-1][1], num_classes, unpool=pooling.count("b")),
        )
    )
