"""``--method facto``: Facto-CNN through the method registry (CLI, runs, benchmarks)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from smallfoot.config import apply_overrides
from smallfoot.errors import ConfigError
from smallfoot.lowrank.convert import Conversion, convert, factorized_layers, set_low_rank
from smallfoot.lowrank.schedule import FactoSchedule
from smallfoot.memory.meter import MemoryReport
from smallfoot.methods import Method, RunContext, TrainOutcome, example_batch, register_method
from smallfoot.train.trainer import Trainer


@register_method
class Facto(Method):
    """Converts the model at build time, trains ``frt_epochs`` epochs full-rank, then
    low-rank with merge/redraw (:class:`FactoSchedule`)."""

    name = "facto"
    description = "Facto-CNN: train only M of W + M D, keep D X, 1-bit ReLU/max-pool masks"
    custom_backward = True

    @dataclass
    class Options:
        """Facto-CNN knobs (Lee, Ko, Hong, *Facto-CNN* section 3-4)."""

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

    def min_epochs(self) -> int:
        """The fewest ``--epochs`` that reach low-rank training: ``frt_epochs + 1``."""
        return self.options.frt_epochs + 1

    def check_run(self, ctx: RunContext) -> None:
        """Refuse a run whose full-rank epochs leave none for low-rank training."""
        need, epochs, frt = self.min_epochs(), ctx.config.epochs, self.options.frt_epochs
        if epochs < need:
            raise ConfigError(
                f"--method facto trains full rank for --frt-epochs {frt}, so --epochs {epochs} "
                f"never reaches low-rank training; use --epochs {need}"
            )

    def adapt(self, config: Any, input_shape: tuple[int, ...]) -> tuple[Any, list[str]]:
        """Raise ``epochs`` to :meth:`min_epochs` when the run has fewer (for ``compare``)."""
        need = self.min_epochs()
        if config.epochs >= need:
            return config, []
        frt = self.options.frt_epochs
        note = f"epochs {config.epochs} -> {need}: {frt} full-rank epochs + 1 low-rank"
        return apply_overrides(config, {"epochs": need}), [note]

    def step_memory(self, ctx: RunContext, *, fake: bool = False) -> MemoryReport:
        """One step of the low-rank model, what trains after the first ``frt_epochs``
        (``report.stage`` is ``"low-rank"``)."""
        report = super().step_memory(ctx, fake=fake)
        report.stage = "low-rank"
        return report

    def measure_memory(self, ctx: RunContext, trainer: Trainer) -> dict[str, Any]:
        """The meter's step of each phase that ran (``stages``: peak, saved activations,
        optimizer state); the report itself is the low-rank phase's (``stage`` names it), or
        the full-rank one's when only that ran. ``batchnorm_saved_activations`` and
        ``batchnorm_share``: what batch-norm layers keep of the reported saved bytes."""
        from smallfoot.memory import measure

        ran = {metrics.get("facto_phase") for metrics in trainer.history}
        low_rank = any(layer.low_rank for layer in factorized_layers(trainer.model))
        ran.add("low-rank" if low_rank else "full-rank")  # the phase the last epoch ended in
        batch = example_batch(ctx.train_set, ctx.config.batch_size, ctx.device)
        reports, models = {}, {}
        if "full-rank" in ran:
            # merging M D into W changes the parameters: measure a copy
            model = copy.deepcopy(trainer.model)
            set_low_rank(model, False)
            optimizer = super().make_optimizer(ctx, model)
            reports["full-rank"] = measure(model, batch, trainer.loss_fn, optimizer)
            models["full-rank"] = model
        if "low-rank" in ran:
            reports["low-rank"] = measure(trainer.model, batch, trainer.loss_fn, trainer.optimizer)
            models["low-rank"] = trainer.model
        stage = "low-rank" if "low-rank" in reports else "full-rank"
        report = reports[stage]
        kept, share = batchnorm_share(models[stage], report)
        return {
            **report.to_dict(),
            "stage": stage,
            "stages": {
                name: {
                    "peak": r.peak,
                    "saved_activations": r.saved_activations,
                    "optimizer_state": r.optimizer_state,
                }
                for name, r in reports.items()
            },
            "batchnorm_saved_activations": kept,
            "batchnorm_share": share,
        }

    def train(self, ctx: RunContext) -> TrainOutcome:
        """Default training; the per-layer conversion report goes to ``extra["conversion"]``
        and, when batch norm keeps saved bytes, a one-line note to ``extra["facto_note"]``
        (printed with the progress)."""
        outcome = super().train(ctx)
        outcome.extra["conversion"] = self.conversion.rows()
        memory = outcome.memory or {}
        if memory.get("batchnorm_saved_activations"):
            note = batchnorm_note(memory["batchnorm_share"], memory["saved_activations"])
            outcome.extra["facto_note"] = note
            if ctx.config.progress:
                print(note, flush=True)
        return outcome


def batchnorm_share(model: nn.Module, report: MemoryReport) -> tuple[int, float]:
    """``(bytes, share)``: the saved-activation bytes that ``model``'s batch-norm layers keep
    in the meter's ``report`` (its ``by_module`` breakdown) and their share of all saved bytes."""
    names = {
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
    }
    kept = sum(v["saved_activations"] for k, v in report.by_module.items() if k in names)
    return kept, kept / report.saved_activations if report.saved_activations else 0.0


def batchnorm_note(share: float, saved: int) -> str:
    """The one-line warning that batch norm keeps ``share`` of ``saved`` bytes."""
    return (
        f"facto: batch norm keeps {100 * share:.0f}% of the {saved:,} saved-activation bytes "
        "that remain (its full input, which Facto cannot compress); a model without batch "
        "norm keeps only compressed state"
    )
