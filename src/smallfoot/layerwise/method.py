"""The ``layerwise`` method: ``smallfoot train --method layerwise --unit-size 1 --budget 0.3 ...``."""

from __future__ import annotations

import torch

from smallfoot.layerwise.training import LayerwiseOptions, segment_memory, train_layerwise
from smallfoot.memory.meter import MemoryReport
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
    user_model = "an nn.Sequential: its children are the units"
    description = (
        "deep layer-wise / segment-wise learning: one unit at a time with a decision block "
        "sized to a memory budget (thesis ch. 6)"
    )
    Options = LayerwiseOptions
    staged = True
    online_filters = False
    streams = False

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

    def step_memory(self, ctx: RunContext, *, fake: bool = False) -> MemoryReport:
        """The largest segment's training step (``report.stage`` names it), planned as
        :meth:`train` plans it (:func:`segment_memory`: same decision blocks, budget search
        included, feed, optimizer and loss) on a random batch of ``config.batch_size`` inputs.
        With ``fake`` the steps are estimated on fake tensors (the model's parameters are built
        for real). Without data, ``--decision auto`` is bounded by its largest candidate."""
        loss_fn, _ = self.make_loss(ctx)
        torch.manual_seed(ctx.config.seed)
        model = self.build_model(ctx)
        planned = segment_memory(
            model,
            ctx.input_shape,
            ctx.num_classes,
            ctx.train_config(),
            self.options,
            loss_fn,
            fake=fake,
        )
        reports = planned["reports"]
        return max(reports, key=lambda report: report.peak)
