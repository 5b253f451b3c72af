"""The ``layerwise`` method: ``smallfoot train --method layerwise --unit-size 1 --budget 0.3 ...``."""

from __future__ import annotations

from smallfoot.layerwise.training import LayerwiseOptions, train_layerwise
from smallfoot.methods import (
    Method,
    RunContext,
    TrainOutcome,
    load_initial_weights,
    register_method,
)
from smallfoot.train.trainer import Trainer


@register_method
class Layerwise(Method):
    """Deep layer-wise / segment-wise learning: one unit or segment at a time (thesis ch. 6)."""

    name = "layerwise"
    description = (
        "deep layer-wise / segment-wise learning: one unit at a time with a decision block "
        "sized to a memory budget (thesis ch. 6)"
    )
    Options = LayerwiseOptions
    staged = True

    def train(self, ctx: RunContext) -> TrainOutcome:
        """Train (or resume) segment by segment; the memory report is the largest segment's."""
        model = self.build_model(ctx)
        if ctx.config.init:
            load_initial_weights(model, ctx.config.init)
        loss_fn, predict_fn = self.make_loss(ctx)
        config = ctx.train_config()
        result = train_layerwise(
            model,
            ctx.train_set,
            ctx.test_set,
            config,
            self.options,
            loss_fn=loss_fn,
            predict_fn=predict_fn,
            progress=ctx.config.progress,
            measure_memory=ctx.config.measure_memory,
            run_dir=ctx.run_dir,
            resume=ctx.resume,
        )
        evaluator = Trainer(
            result.model,
            ctx.train_set,
            ctx.test_set,
            config,
            loss_fn,
            predict_fn=predict_fn,
            progress=False,
        )
        test = evaluator.evaluate(ctx.test_set)
        train = evaluator.evaluate(ctx.train_set)
        metrics = {
            "train_loss": train["loss"],
            "train_accuracy": train["accuracy"],
            "test_loss": test["loss"],
            "test_accuracy": test["accuracy"],
        }
        extra = {"layerwise": {"units": result.units, "peak_unit": result.peak_unit}}
        return TrainOutcome(result.model, metrics, result.history, result.memory, extra)
