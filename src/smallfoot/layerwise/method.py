"""The ``layerwise`` method: ``smallfoot train --method layerwise --unit-size 1 --budget 0.3 ...``."""

from __future__ import annotations

import dataclasses

import torch

from smallfoot.layerwise.training import LayerwiseOptions, LayerwiseTrainer, train_layerwise
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

    def step_memory(self, ctx: RunContext, *, fake: bool = False) -> MemoryReport:
        """The largest segment's training step (``report.stage`` names it), planned exactly as
        :meth:`train` plans it: same decision blocks (budget search included), feed, optimizer
        and loss, on a random batch of ``config.batch_size`` inputs. With ``fake`` the steps are
        estimated on fake tensors (the model's parameters are built for real)."""
        from smallfoot.memory import estimate, measure

        loss_fn, predict_fn = self.make_loss(ctx)
        torch.manual_seed(ctx.config.seed)
        model = self.build_model(ctx)
        batch = ctx.config.batch_size
        x = torch.randn(batch, *ctx.input_shape)
        y = torch.randint(ctx.num_classes, (batch,))
        # ctx.train_set is one synthetic sample: nothing to hold out for validation
        options = dataclasses.replace(self.options, val_fraction=0.0, patience=0)
        trainer = LayerwiseTrainer(
            model, ctx.train_set, ctx.test_set, ctx.train_config(), options, loss_fn, predict_fn
        )
        planned = trainer.plan_segments((x, y), meter=estimate if fake else measure)
        index = max(range(len(planned)), key=lambda i: planned[i]["report"].peak)
        report = planned[index]["report"]
        report.stage = f"unit {index + 1} of {len(planned)}"
        return report
