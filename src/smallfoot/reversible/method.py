"""The ``reversible`` method: train a reversible / invertible network with the memory-free
backward (``--variant revnet|irevnet|layerwise|hybrid``).

The method trains the variant's model in place of ``--model``; unless ``--width`` is given,
that model gets the first-stage width whose parameter count is closest to ``--model``'s, so
a comparison with other methods on the same ``--model`` is at about equal parameters.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch._subclasses.fake_tensor import unset_fake_temporarily

from smallfoot.errors import ConfigError, SmallfootError
from smallfoot.methods import Method, RunContext, register_method
from smallfoot.models import build_model
from smallfoot.references import is_reference
from smallfoot.train import Callback, Trainer

VARIANT_MODELS = {
    "revnet": "revnet18",
    "irevnet": "irevnet18",
    "layerwise": "layerwise18",
    "hybrid": "hybrid18",
}
WIDTH_STEP = {"revnet": 2, "irevnet": 2, "layerwise": 2, "hybrid": 4}
"""the first-stage width must be a multiple of this (channels split in halves; hybrid: in
halves of halves)"""
SIDE_MULTIPLE = 8
"""every variant halves the image 3 times (4 stages), so H and W must be multiples of 8"""


def parameter_count(name: str, input_shape, num_classes: int, **options) -> int:
    """Parameters of the registered model ``name`` built for ``input_shape`` (on the meta
    device: nothing is allocated)."""
    # The meter's estimate builds the model under a FakeTensorMode, which rejects meta tensors.
    with unset_fake_temporarily(), torch.device("meta"):
        model = build_model(name, input_shape, num_classes, **options)
    return sum(p.numel() for p in model.parameters())


class _NamesTheReconstruction(Callback):
    """Tells the trainer why a reversible net's gradients can become NaN under a finite loss."""

    def on_train_start(self, trainer: Trainer) -> None:
        trainer.nonfinite_gradient_hint = (
            " (reconstructed activations can be lost to rounding error, more so with depth "
            "and a small --negative-slope; `--activations stored` shows whether that is the "
            "cause)"
        )


@register_method
class Reversible(Method):
    """Train a network whose invertible parts reconstruct activations in the backward pass."""

    name = "reversible"
    user_model = "refused: it trains its own invertible nets, matched to a registered --model"
    description = (
        "reversible nets (revnet18, irevnet18, layerwise18, hybrid18) in place of --model, "
        "at about its parameter count: activations reconstructed in the backward pass"
    )
    custom_backward = True

    @dataclass
    class Options:
        variant: Literal["revnet", "irevnet", "layerwise", "hybrid"] = "revnet"
        """which design: revnet18, irevnet18, layerwise18 or hybrid18"""
        width: int | None = None
        """channels of the first stage (default: the width whose parameter count is closest to
        --model's)"""
        blocks_per_stage: int = 2
        """reversible blocks per stage (the depth)"""
        dropout: float = 0.0
        """dropout inside each residual branch (revnet/irevnet; replayed exactly in backward)"""
        negative_slope: float = 0.5
        """invertible Leaky ReLU slope (layerwise/hybrid)"""
        eps_i: float = 0.1
        """smallest scale of the invertible batch norm (layerwise/hybrid)"""
        pooling: str = "cbc"
        """the 3 poolings between stages (layerwise/hybrid): c channel pooling (x4 channels),
        b batch pooling (x4 batch); e.g. ccb"""
        activations: Literal["reconstructed", "stored"] = "reconstructed"
        """reconstructed: rebuilt by the inverses in the backward pass (the memory-free,
        numerically noisy training); stored: kept by autograd (the paper's ideal
        activations, same model and seeds, no memory saving)"""

        def validate(self) -> None:
            """Reject options the chosen variant does not have."""
            layerwise = self.variant in ("layerwise", "hybrid")
            if layerwise and self.dropout:
                raise ConfigError(
                    f"--dropout is not invertible, so the {self.variant} variant has none; "
                    "use --variant revnet or irevnet for dropout"
                )
            if not layerwise and self.pooling != "cbc":
                raise ConfigError(
                    f"--pooling sets the layerwise and hybrid variants' poolings; {self.variant} "
                    "has its own; use --variant hybrid or layerwise with --pooling"
                )
            if len(self.pooling) != 3 or set(self.pooling) - {"c", "b"}:
                raise ConfigError(
                    f"--pooling must be 3 letters of c (channel) and b (batch), got "
                    f"{self.pooling!r}; e.g. --pooling ccb"
                )

    def model_name(self, ctx: RunContext | None = None) -> str:
        """The registered name of the model that trains: the variant's, whatever ``--model``."""
        return VARIANT_MODELS[self.options.variant]

    def model_options(self, width: int) -> dict[str, Any]:
        """The builder options of the variant's model at first-stage ``width``."""
        opts = self.options
        kwargs: dict[str, Any] = {
            "width": width,
            "blocks_per_stage": opts.blocks_per_stage,
            "memory_free": opts.activations == "reconstructed",
        }
        if opts.variant in ("layerwise", "hybrid"):
            kwargs.update(
                negative_slope=opts.negative_slope, eps_i=opts.eps_i, pooling=opts.pooling
            )
        else:
            kwargs["dropout"] = opts.dropout
        return kwargs

    def width(self, ctx: RunContext) -> int:
        """``--width``, or the multiple of the variant's width step whose model has the
        parameter count closest to ``--model``'s (with its ``--model-opt`` options)."""
        if self.options.width is not None:
            return self.options.width
        config, shape, classes = ctx.config, ctx.input_shape, ctx.num_classes
        try:
            target = parameter_count(config.model, shape, classes, **config.model_options)
        except SmallfootError as exc:
            raise ConfigError(
                f"--method reversible sizes {self.model_name()} to the parameter count of "
                f"--model {config.model}, which cannot be built here ({exc}); pass --width "
                f"(e.g. --width 16) or another --model"
            ) from None
        step, name = WIDTH_STEP[self.options.variant], self.model_name()

        def count(units: int) -> int:
            return parameter_count(name, shape, classes, **self.model_options(units * step))

        # The count grows with the width: bisect for the first width reaching the target,
        # then keep it or the one below, whichever is closer.
        low, high = 1, 1024
        while low < high:
            mid = (low + high) // 2
            low, high = (mid + 1, high) if count(mid) < target else (low, mid)
        if low > 1 and target - count(low - 1) < count(low) - target:
            low -= 1
        return low * step

    def check_run(self, ctx: RunContext) -> None:
        """Refuse a user's module (``--model package.module:function``: there is no invertible
        twin of it), inputs the variant cannot pool (not images, or sides not multiples of 8)
        and a ``--model`` whose parameter count cannot be matched, before any work."""
        name, shape = self.model_name(), tuple(ctx.input_shape)
        if is_reference(ctx.config.model):
            raise ConfigError(
                f"--method reversible cannot make {ctx.config.model} invertible: it trains its "
                f"own invertible net ({name}) at the parameter count of a registered --model; "
                "use a registered --model (e.g. resnet18) or another method"
            )
        if len(shape) != 3:
            raise ConfigError(
                f"--method reversible trains {name}, which needs images (C, H, W), got input "
                f"shape {shape}; use an image dataset"
            )
        _, h, w = shape
        if h % SIDE_MULTIPLE or w % SIDE_MULTIPLE:
            raise ConfigError(
                f"--method reversible trains {name}, which halves the image 3 times, so its "
                f"sides must be multiples of {SIDE_MULTIPLE}; got {h}x{w}: add "
                f"--data-opt pad_to={_padded_side(h, w)}"
            )
        self.width(ctx)

    def adapt(self, config: Any, input_shape: tuple[int, ...]) -> tuple[Any, list[str]]:
        """Pad images whose sides are not multiples of 8 (``data_options`` ``pad_to``) and
        note that the variant's model trains in place of ``config.model``."""
        name, notes = self.model_name(), []
        if config.model != name:
            size = (
                f"width {self.options.width}"
                if self.options.width is not None
                else f"width matched to the parameter count of {config.model}"
            )
            notes.append(f"trains {name} ({size}) in place of {config.model}")
        if len(input_shape) == 3:
            _, h, w = input_shape
            if h % SIDE_MULTIPLE or w % SIDE_MULTIPLE:
                side = _padded_side(h, w)
                data_options = {**config.data_options, "pad_to": side}
                config = dataclasses.replace(config, data_options=data_options)
                notes.append(
                    f"pads the {h}x{w} images to {side}x{side} (--data-opt pad_to={side}): "
                    f"{name} halves them 3 times"
                )
        return config, notes

    def callbacks(self, ctx: RunContext, model: nn.Module) -> list[Callback]:
        """The composed method's callbacks and one that makes the trainer's non-finite-gradient
        error name the reconstruction."""
        return [*super().callbacks(ctx, model), _NamesTheReconstruction()]

    def build_model(self, ctx: RunContext) -> nn.Module:
        """The variant's model with the method's options, in place of ``--model``."""
        return build_model(
            self.model_name(),
            ctx.input_shape,
            ctx.num_classes,
            **self.model_options(self.width(ctx)),
        )


def _padded_side(h: int, w: int) -> int:
    """The smallest multiple of :data:`SIDE_MULTIPLE` that holds both sides."""
    return -(-max(h, w) // SIDE_MULTIPLE) * SIDE_MULTIPLE
