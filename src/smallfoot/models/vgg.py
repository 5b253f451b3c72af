"""VGG-11/13/16 (Simonyan & Zisserman), CIFAR or ImageNet head.

Names follow torchvision: ``vgg11`` has no batch norm (as in the paper), ``vgg11_bn`` has a
BatchNorm2d after every convolution (same for 13 and 16)."""

from __future__ import annotations

from torch import nn

from smallfoot.errors import ConfigError
from smallfoot.models.basic import image_shape
from smallfoot.models.registry import register_model

VGG_CONFIGS = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        "M",
    ),
}


def vgg(
    name: str,
    input_shape,
    num_classes: int,
    batch_norm: bool = True,
    width: float = 1.0,
    head: str = "auto",
    dropout: float = 0.5,
    init: str = "default",
) -> nn.Sequential:
    """VGG ``name`` as one ``nn.Sequential`` (features, then head).

    ``width`` scales every channel count (0.25 gives a CPU-sized net). ``head``: ``"cifar"``
    (a single linear layer on the 1x1 map of 32x32 inputs), ``"imagenet"`` (7x7 adaptive
    average pooling, then 4096-4096 with dropout), or ``"auto"`` (imagenet from 64 pixels up).
    ``init="kaiming"`` draws the convolutions He-normal (fan-out) with zero bias, as
    torchvision's VGG does; without batch norm PyTorch's default init shrinks the signal at
    every layer and VGG-11 stalls.
    """
    if init not in ("default", "kaiming"):
        raise ConfigError(f"unknown VGG init {init!r}; choose default or kaiming")
    c, h, w = image_shape(name, input_shape, min_side=32)
    layers: list[nn.Module] = []
    for item in VGG_CONFIGS[name]:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
            continue
        out = max(1, round(item * width))
        layers.append(nn.Conv2d(c, out, 3, padding=1, bias=not batch_norm))
        if init == "kaiming":
            nn.init.kaiming_normal_(layers[-1].weight, mode="fan_out", nonlinearity="relu")
            if layers[-1].bias is not None:
                nn.init.zeros_(layers[-1].bias)
        if batch_norm:
            layers.append(nn.BatchNorm2d(out))
        layers.append(nn.ReLU(inplace=True))
        c = out
    if head == "auto":
        head = "imagenet" if min(input_shape[1:]) >= 64 else "cifar"
    if head == "imagenet":
        hidden = max(1, round(4096 * width))
        layers += [
            nn.AdaptiveAvgPool2d((7, 7)),
            nn.Flatten(),
            nn.Linear(c * 49, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        ]
    elif head == "cifar":
        layers += [nn.Flatten(), nn.Linear(c * h * w, num_classes)]
    else:
        raise ConfigError(f"unknown VGG head {head!r}; choose auto, cifar or imagenet")
    return nn.Sequential(*layers)


def _register(name: str, batch_norm: bool) -> None:
    registered = f"{name}_bn" if batch_norm else name

    def build(
        input_shape,
        num_classes,
        width: float = 1.0,
        head: str = "auto",
        dropout=0.5,
        init="default",
    ):
        return vgg(name, input_shape, num_classes, batch_norm, width, head, dropout, init)

    kind = "batch norm after every convolution" if batch_norm else "no batch norm, as the paper"
    register_model(
        registered,
        f"{name.upper()} ({kind}; CIFAR head below 64px, ImageNet head above)",
    )(build)


for _name in VGG_CONFIGS:
    _register(_name, batch_norm=False)
    _register(_name, batch_norm=True)
