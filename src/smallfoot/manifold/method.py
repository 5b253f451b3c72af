"""``--method manifold``: a bottleneck head on the model's features, trained with cross-entropy plus
the layer-local distance-preserving loss (Sartipi & Bernal, eq. 1-4)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from smallfoot.errors import ConfigError, SmallfootError
from smallfoot.manifold.loss import DistancePreservingLoss, alpha_schedule
from smallfoot.methods import Method, RunContext, TrainOutcome, register_method
from smallfoot.models import build_model
from smallfoot.models.bottleneck import (
    BottleneckHead,
    FeatureNet,
    attach_head,
    bottleneck_widths,
    feature_extractor,
)
from smallfoot.train.trainer import Trainer, make_optimizer


class ManifoldTrainer(Trainer):
    """A :class:`Trainer` whose step minimises ``CE + L_u`` (eq. 1) on a :class:`FeatureNet` with a
    :class:`BottleneckHead`; ``regulariser=None`` trains the same net with cross-entropy alone.

    The reported ``train_loss`` is the cross-entropy (comparable with ``test_loss``); the epoch's
    mean ``L_u`` is added to the metrics as ``train_manifold_loss``.
    """

    def __init__(self, *args, regulariser: DistancePreservingLoss | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if not (isinstance(self.model, FeatureNet) and isinstance(self.model.head, BottleneckHead)):
            raise ConfigError("ManifoldTrainer needs a FeatureNet with a BottleneckHead")
        self.regulariser = regulariser
        self.regularised = RegularisedNet(self.model, regulariser)
        self._manifold_sum, self._manifold_batches = 0.0, 0

    def forward_backward_step(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy through the whole net plus the local terms; returns detached (CE, logits)."""
        logits, unsupervised = self.regularised(x)
        loss = self.loss_fn(logits, y)
        (loss + unsupervised).backward()
        self._manifold_sum += float(unsupervised.detach())
        self._manifold_batches += 1
        return loss.detach(), logits.detach()

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One epoch; adds the mean unsupervised loss ``train_manifold_loss`` when regularised."""
        self._manifold_sum, self._manifold_batches = 0.0, 0
        metrics = super().train_epoch(epoch)
        if self.regulariser is not None:
            metrics["train_manifold_loss"] = self._manifold_sum / max(self._manifold_batches, 1)
        return metrics


class RegularisedNet(nn.Module):
    """``model`` whose forward returns ``(logits, L_u)``, so a plain ``loss_fn(output, target)``
    (the meter's interface) sees the whole objective of eq. 1; ``L_u`` is 0 without regulariser."""

    def __init__(self, model: FeatureNet, regulariser: DistancePreservingLoss | None):
        super().__init__()
        self.model = model
        self.regulariser = regulariser

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits (N, classes), scalar L_u)`` of images ``x``."""
        logits, activations = self.model.head.forward_activations(self.model.features(x))
        if self.regulariser is None:
            return logits, logits.new_zeros(())
        return logits, self.regulariser(activations)

    @staticmethod
    def objective(loss_fn):
        """``loss_fn(logits, y) + L_u`` as a function of this module's output and the targets."""

        def total(output: tuple[torch.Tensor, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
            return loss_fn(output[0], target) + output[1]

        return total


def make_regulariser(
    head: BottleneckHead,
    alphas: tuple[float, ...] | None,
    alpha: float,
    alpha_ratio: float,
    lam: float,
    relative: bool = False,
) -> DistancePreservingLoss:
    """The loss over ``head.layers``: explicit ``alphas`` (one per consecutive pair), or ``alpha``
    for the second half of the bottleneck and ``alpha * alpha_ratio`` for the first half;
    ``relative`` picks the scale-free mismatch (see :class:`DistancePreservingLoss`)."""
    terms = len(head.layers) - 1
    weights = list(alphas) if alphas is not None else alpha_schedule(terms, alpha, alpha_ratio)
    return DistancePreservingLoss(head.layers, weights, lam, relative=relative)


@register_method
class Manifold(Method):
    """Bottleneck head + layer-wise distance-preserving regularisation for tiny mini-batches."""

    name = "manifold"
    user_model = "a module with an nn.Flatten between features and head"
    description = (
        "bottleneck FC cascade on the model's conv features + layer-local distance-preserving loss"
    )

    @dataclass
    class Options:
        bottleneck_width: int = field(
            default=16, metadata={"help": "narrowest width W of the bottleneck"}
        )
        head_width: int = field(
            default=256, metadata={"help": "widest layer K; widths halve from K down to W"}
        )
        alpha: float = field(
            default=1e-3,
            metadata={"help": "weight of the terms in the second half of the bottleneck"},
        )
        alpha_ratio: float = field(
            default=0.1, metadata={"help": "first-half weights are alpha * alpha_ratio"}
        )
        alphas: tuple[float, ...] | None = field(
            default=None,
            metadata={"help": "explicit weights, one per consecutive layer pair (overrides alpha)"},
        )
        lambda_: float = field(
            default=1e-4, metadata={"help": "weight of the squared parameter norm of each pair"}
        )
        relative: bool = field(
            default=False,
            metadata={
                "help": "divide each term's distance mismatch by the batch's mean squared "
                "input-space distance (scale-free); false: eq. 4's absolute mismatch"
            },
        )
        regularize: bool = field(
            default=True, metadata={"help": "false: the same bottleneck net, cross-entropy only"}
        )
        reference_batch: int = field(
            default=128,
            metadata={
                "help": "--lr is meant for this batch size; smaller batches train at "
                "lr * batch_size / reference_batch (0: use --lr as given)"
            },
        )

        def validate(self) -> None:
            """Raise ``ConfigError`` on impossible values."""
            if self.bottleneck_width < 1 or self.head_width < self.bottleneck_width:
                raise ConfigError(
                    f"need 1 <= bottleneck_width <= head_width, got W={self.bottleneck_width}, "
                    f"K={self.head_width}"
                )
            if self.alpha < 0 or self.alpha_ratio < 0 or self.lambda_ < 0:
                raise ConfigError("alpha, alpha_ratio and lambda must be >= 0")
            if self.reference_batch < 0:
                raise ConfigError(
                    f"reference_batch must be >= 0 (0 turns the scaling off), "
                    f"got {self.reference_batch}"
                )

    def learning_rate(self, ctx: RunContext) -> float:
        """The rate this method trains at: ``--lr`` scaled linearly down to the batch size,
        ``lr * batch_size / reference_batch`` when the batch is smaller than ``reference_batch``.

        The bottleneck head has no normalisation, so unlike the batch-normed features it is not
        scale-invariant: at ``--lr 0.05`` (the CLI default, meant for batch 128) and a batch of
        5, the noisy steps blow its activations up and push every unit of a narrow layer below
        zero, after which no gradient flows and the net predicts one class for good."""
        lr, reference = ctx.config.lr, self.options.reference_batch
        if reference and ctx.config.batch_size < reference:
            return lr * ctx.config.batch_size / reference
        return lr

    def make_optimizer(self, ctx: RunContext, model: nn.Module) -> torch.optim.Optimizer:
        """The run's optimizer at :meth:`learning_rate` (the batch-scaled rate)."""
        config = ctx.train_config()
        config.lr = self.learning_rate(ctx)
        return make_optimizer(model, config)

    def model_name(self, ctx: RunContext) -> str:
        """``<model>_bottleneck``: the model's features with the bottleneck head."""
        return f"{ctx.config.model}_bottleneck"

    def check_run(self, ctx: RunContext) -> None:
        """Refuse a model without a ``Flatten``-separated feature extractor, and a cascade too
        short for the regulariser (it needs two bottleneck layers), before any work."""
        o = self.options
        with torch.device("meta"):
            base = build_model(
                ctx.config.model, ctx.input_shape, ctx.num_classes, **ctx.config.model_options
            )
        feature_extractor(base)
        if o.regularize and len(bottleneck_widths(o.head_width, o.bottleneck_width)) < 2:
            raise ConfigError(
                f"the distance-preserving loss needs at least 2 bottleneck layers, but "
                f"--head-width {o.head_width} --bottleneck-width {o.bottleneck_width} gives one; "
                f"use --head-width {2 * o.bottleneck_width} or more, or --regularize false"
            )

    def adapt(self, config: Any, input_shape: tuple[int, ...]) -> tuple[Any, list[str]]:
        """``compare``: a model without a ``Flatten``-separated feature extractor (the ResNets,
        the reversible nets) is replaced by ``cnn4`` for image inputs (one note); other configs
        are returned unchanged."""
        from dataclasses import replace

        try:
            # Only the structure matters here, so any class count will do.
            with torch.device("meta"):
                base = build_model(config.model, tuple(input_shape), 10, **config.model_options)
            feature_extractor(base)
        except SmallfootError:
            if len(input_shape) != 3:
                return config, []
            note = (
                f"manifold: {config.model} has no Flatten-separated conv features; "
                "trained cnn4 features + bottleneck head instead"
            )
            return replace(config, model="cnn4", model_options={}), [note]
        return config, []

    def build_model(self, ctx: RunContext) -> FeatureNet:
        """``config.model``'s features (with ``config.model_options``) + a bottleneck head."""
        return attach_head(
            ctx.config.model,
            ctx.input_shape,
            ctx.num_classes,
            head="bottleneck",
            bottleneck_width=self.options.bottleneck_width,
            head_width=self.options.head_width,
            **ctx.config.model_options,
        )

    def regulariser(self, model: FeatureNet) -> DistancePreservingLoss | None:
        """The unsupervised loss for ``model``'s head, or ``None`` when ``regularize`` is off."""
        if not self.options.regularize:
            return None
        o = self.options
        return make_regulariser(
            model.head, o.alphas, o.alpha, o.alpha_ratio, o.lambda_, relative=o.relative
        )

    def make_trainer(self, ctx: RunContext, model: FeatureNet) -> ManifoldTrainer:
        """A :class:`ManifoldTrainer` with the run's loss, optimizer and callbacks."""
        return super().make_trainer(
            ctx, model, ManifoldTrainer, regulariser=self.regulariser(model)
        )

    def train(self, ctx: RunContext) -> TrainOutcome:
        """Train as :class:`Method` does; the summary also records the rate actually used."""
        outcome = super().train(ctx)
        outcome.extra["lr_used"] = self.learning_rate(ctx)
        return outcome

    def metered_step(self, ctx: RunContext) -> tuple[nn.Module, Any, torch.optim.Optimizer]:
        """One training step as manifold training runs it: the bottleneck net, cross-entropy
        plus the regulariser (its recomputed head layers and distance matrices included) and
        the run's optimizer."""
        loss_fn, _ = self.make_loss(ctx)
        model = self.build_model(ctx)
        net = RegularisedNet(model, self.regulariser(model))
        return net, net.objective(loss_fn), self.make_optimizer(ctx, model)

    def measure_memory(self, ctx: RunContext, trainer: Trainer) -> dict[str, Any]:
        """The meter's report of one training step, the regulariser included."""
        from smallfoot.memory import measure
        from smallfoot.methods import example_batch

        x, y = example_batch(ctx.train_set, ctx.config.batch_size, ctx.device)
        net = RegularisedNet(trainer.model, trainer.regulariser)
        return measure(
            net, (x, y), loss_fn=net.objective(trainer.loss_fn), optimizer=trainer.optimizer
        ).to_dict()
