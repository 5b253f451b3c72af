"""``--method facto``: Facto-CNN through the method registry (CLI, runs, benchmarks)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from smallfoot.errors import ConfigError
from smallfoot.lowrank.convert import Conversion, convert, set_low_rank
from smallfoot.lowrank.schedule import FactoSchedule
from smallfoot.methods import Method, RunContext, TrainOutcome, register_method


@register_method
class Facto(Method):
    """Converts the model at build time, trains ``frt_epochs`` epochs full-rank, then
    low-rank with merge/redraw (:class:`FactoSchedule`)."""

    name = "facto"
    description = "Facto-CNN: train only M of W + M D, keep D X, 1-bit ReLU/max-pool masks"
    custom_backward = True

    @dataclass
    class Options:
        """Facto-CNN knobs (facto-cnn.txt section 3-4)."""

        inr: float = field(default=0.3, metadata={"help": "internal node ratio R/I (C_R/C_I)"})
        kernel: int = field(
            default=2, metadata={"help": "mean-pool kernel of stored feature maps (1 = none)"}
        )
        apply_ratio: float = field(
            default=0.6,
            metadata={"help": "fraction of conv/linear/scaling layers converted, input side first"},
        )
        frt_epochs: int = field(
            default=1, metadata={"help": "full-rank epochs before low-rank training"}
        )
        merge_every: int = field(
            default=1, metadata={"help": "merge M D into W and redraw every N low-rank epochs"}
        )
        direct_decay: bool = field(
            default=True, metadata={"help": "apply W := W - lr * weight_decay * Omega (eq. 14)"}
        )

        def validate(self) -> None:
            """Raise ``ConfigError`` for values outside their range."""
            if not 0 < self.inr <= 1:
                raise ConfigError(f"--inr must be in (0, 1], got {self.inr}")
            if self.kernel < 1:
                raise ConfigError(f"--kernel must be >= 1 (1 = no pooling), got {self.kernel}")
            if not 0 < self.apply_ratio <= 1:
                raise ConfigError(f"--apply-ratio must be in (0, 1], got {self.apply_ratio}")
            if self.frt_epochs < 0 or self.merge_every < 1:
                raise ConfigError("--frt-epochs must be >= 0 and --merge-every >= 1")

    conversion: Conversion | None = None

    def build_model(self, ctx: RunContext) -> nn.Module:
        """The configured model, converted (identical function) in low-rank mode, the steady
        state that ``smallfoot memory --method facto`` measures; the schedule switches it to
        full rank for the first ``frt_epochs``."""
        model = super().build_model(ctx)
        o = self.options
        self.conversion = convert(model, o.inr, o.kernel, o.apply_ratio, seed=ctx.config.seed)
        return model

    def make_optimizer(self, ctx: RunContext, model: nn.Module) -> torch.optim.Optimizer:
        """The configured optimizer over every parameter the run trains in either phase: the
        frozen W join (full-rank epochs train them; in low-rank ones they get no gradient and
        no optimizer state)."""
        set_low_rank(model, False)
        optimizer = super().make_optimizer(ctx, model)
        set_low_rank(model, True)
        return optimizer

    def callbacks(self, ctx: RunContext, model: nn.Module) -> list:
        """The FRT -> LRT schedule."""
        o = self.options
        return [FactoSchedule(o.frt_epochs, o.merge_every, o.direct_decay, ctx.config.seed)]

    def train(self, ctx: RunContext) -> TrainOutcome:
        """Default training; the per-layer conversion report goes to ``extra["conversion"]``."""
        outcome = super().train(ctx)
        outcome.extra["conversion"] = self.conversion.rows()
        return outcome
