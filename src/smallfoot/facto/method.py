"""``--method facto``: Facto-CNN through the method registry (CLI, runs, benchmarks)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from smallfoot.config import apply_overrides
from smallfoot.errors import ConfigError
from smallfoot.facto.convert import Conversion, convert, factorized_layers, set_low_rank
from smallfoot.facto.layers import CompactBatchNorm2d
from smallfoot.facto.schedule import FactoSchedule, drop_epochs, step_scheduler
from smallfoot.memory.meter import MemoryReport
from smallfoot.methods import (
    Method,
    RunContext,
    TrainOutcome,
    composed_options,
    example_batch,
    register_method,
)
from smallfoot.train.trainer import Trainer


@register_method
class Facto(Method):
    """Converts the model at build time, trains full rank, then low rank with merge/redraw
    (:class:`FactoSchedule`). The default ``lr_plan="paper"`` is the paper's protocol
    (section 4.1): a step schedule (rate x ``drop_factor`` at each of ``drops``, fractions
    of the epochs) with full-rank training until the first drop, so low-rank training runs
    only at <= ``drop_factor`` x the peak rate. ``lr_plan="switch"`` keeps the run's own
    ``--schedule`` (cosine by default) and switches after ``frt_epochs``."""

    name = "facto"
    user_model = "any module: its Conv2d/Linear layers are converted"
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
            metadata={"help": "fraction of conv/scaling layers converted, input side first"},
        )
        lr_plan: Literal["paper", "switch"] = field(
            default="paper",
            metadata={
                "help": "paper: step schedule (x --drop-factor at each of --drops), full rank "
                "until the first drop; switch: the run's --schedule, low rank from --frt-epochs"
            },
        )
        drops: list[float] = field(
            default_factory=lambda: [0.3, 0.6, 0.9],
            metadata={"help": "paper plan: fractions of the epochs at which the rate drops"},
        )
        drop_factor: float = field(
            default=0.1, metadata={"help": "paper plan: rate multiplier at each drop"}
        )
        frt_epochs: int | None = field(
            default=None,
            metadata={"help": "switch plan: full-rank epochs before low-rank training (1)"},
        )
        merge_every: int = field(
            default=1, metadata={"help": "merge M D into W and redraw every N low-rank epochs"}
        )
        direct_decay: bool = field(
            default=True,
            metadata={"help": "eq. 14: W := W - lambda Omega, lambda = full-rank decay per step"},
        )
        compact_bn: bool = field(
            default=True,
            metadata={
                "help": "converted batch norms keep an int8 normalised input, not the float input"
            },
        )

        def validate(self) -> None:
            """Raise ``ConfigError`` for values outside their range or options of the other plan."""
            if not 0 < self.inr <= 1:
                raise ConfigError(f"--inr must be in (0, 1], got {self.inr}")
            if self.kernel < 1:
                raise ConfigError(f"--kernel must be >= 1 (1 = no pooling), got {self.kernel}")
            if not 0 < self.apply_ratio <= 1:
                raise ConfigError(f"--apply-ratio must be in (0, 1], got {self.apply_ratio}")
            if self.merge_every < 1:
                raise ConfigError(f"--merge-every must be >= 1, got {self.merge_every}")
            if not self.drops or not all(0 < f < 1 for f in self.drops):
                raise ConfigError(
                    f"--drops must be fractions of the epochs in (0, 1), e.g. --drops 0.3,0.6,0.9; "
                    f"got {self.drops}"
                )
            if not 0 < self.drop_factor < 1:
                raise ConfigError(f"--drop-factor must be in (0, 1), got {self.drop_factor}")
            if self.lr_plan == "paper" and self.frt_epochs is not None:
                raise ConfigError(
                    "--frt-epochs applies to --lr-plan switch; the paper plan trains full rank "
                    "until the first drop: move it with --drops (e.g. --drops 0.3,0.6,0.9)"
                )
            if self.frt_epochs is not None and self.frt_epochs < 0:
                raise ConfigError(f"--frt-epochs must be >= 0, got {self.frt_epochs}")

    conversion: Conversion | None = None

    def full_rank_epochs(self, epochs: int) -> int:
        """Epochs trained full rank in a run of ``epochs``: until the first drop (paper plan,
        ``epochs`` when no drop happens) or ``frt_epochs`` (switch plan, default 1)."""
        o = self.options
        if o.lr_plan == "switch":
            return 1 if o.frt_epochs is None else o.frt_epochs
        return (drop_epochs(epochs, o.drops) or [epochs])[0]

    def build_model(self, ctx: RunContext) -> nn.Module:
        """The configured model, converted (identical function) in low-rank mode, the steady
        state that ``smallfoot memory --method facto`` measures; the schedule switches it to
        full rank for the full-rank epochs."""
        model = super().build_model(ctx)
        o = self.options
        self.conversion = convert(
            model, o.inr, o.kernel, o.apply_ratio, seed=ctx.config.seed, batchnorm=o.compact_bn
        )
        return model

    def make_optimizer(self, ctx: RunContext, model: nn.Module) -> torch.optim.Optimizer:
        """The configured optimizer over every parameter the run trains in either phase: the
        frozen W join (full-rank epochs train them; in low-rank ones they get no gradient and
        no optimizer state)."""
        set_low_rank(model, False)
        optimizer = super().make_optimizer(ctx, model)
        set_low_rank(model, True)
        return optimizer

    def make_trainer(self, ctx: RunContext, model: nn.Module) -> Trainer:
        """The default trainer; under the paper plan its rate follows :func:`step_scheduler`
        instead of the run's ``--schedule`` (the optimizer exists only inside the trainer, so
        the scheduler is replaced there: a ``LambdaLR`` scales each group's initial rate)."""
        trainer = super().make_trainer(ctx, model)
        o = self.options
        if o.lr_plan == "paper":
            trainer.scheduler = step_scheduler(
                trainer.optimizer,
                ctx.config.epochs,
                trainer.steps_per_epoch(),
                o.drops,
                o.drop_factor,
            )
        return trainer

    def callbacks(self, ctx: RunContext, model: nn.Module) -> list:
        """The composed method's callbacks (none alone) and the FRT -> LRT schedule."""
        o = self.options
        frt = self.full_rank_epochs(ctx.config.epochs)
        schedule = FactoSchedule(frt, o.merge_every, o.direct_decay, ctx.config.seed)
        return [*super().callbacks(ctx, model), schedule]

    def min_epochs(self) -> int:
        """The fewest ``--epochs`` that reach low-rank training (switch plan: ``frt_epochs + 1``;
        paper plan: the fewest whose first drop falls before the last epoch)."""
        epochs = 1
        while self.full_rank_epochs(epochs) >= epochs:
            epochs += 1
        return epochs

    def check_run(self, ctx: RunContext) -> None:
        """Refuse what the composed method refuses, and a run whose full-rank epochs leave
        none for low-rank training."""
        super().check_run(ctx)
        need, epochs = self.min_epochs(), ctx.config.epochs
        if epochs >= need:
            return
        o = self.options
        if o.lr_plan == "switch":
            why = f"trains full rank for --frt-epochs {self.full_rank_epochs(epochs)}"
        else:
            first = ",".join(f"{f:g}" for f in o.drops)
            why = f"trains full rank until the first learning-rate drop (--drops {first})"
        raise ConfigError(
            f"--method {self.name} {why}, so --epochs {epochs} never reaches low-rank "
            f"training; use --epochs {need}"
        )

    def adapt(self, config: Any, input_shape: tuple[int, ...]) -> tuple[Any, list[str]]:
        """The composed method's adaptations, then ``epochs`` raised to :meth:`min_epochs`
        when the run has fewer (for ``compare``)."""
        config, notes = super().adapt(config, input_shape)
        need = self.min_epochs()
        if config.epochs >= need:
            return config, notes
        frt = self.full_rank_epochs(need)
        note = f"epochs {config.epochs} -> {need}: {frt} full-rank epochs + {need - frt} low-rank"
        return apply_overrides(config, {"epochs": need}), [*notes, note]

    @classmethod
    def compose(cls, other: type[Method]) -> type[Method] | None:
        """``facto+M``: the model method M builds (its twin, its checkpointed segments),
        converted to Facto-CNN layers and trained with Facto's schedule by the default
        trainer; M's checks, adaptations and callbacks are kept. Refused for methods with
        their own loop, trainer or optimizer; a method that wraps others (accumulate) is left
        to compose itself."""
        if other is cls or other.compose.__func__ is not Method.compose.__func__:
            return None
        if (
            other.staged
            or other.changes_optimizer
            or other.make_trainer is not Method.make_trainer
            or other.train is not Method.train
        ):
            raise ConfigError(
                f"--method facto+{other.name}: {other.name} trains with its own loop, trainer "
                "or optimizer, and Facto converts a model the default trainer trains; use one "
                "of them"
            )
        return type(
            f"Facto{other.__name__}",
            (cls, other),
            {
                "name": f"facto+{other.name}",
                "description": f"{other.name}'s model with Facto-CNN layers",
                "Options": composed_options(cls, other),
                "custom_backward": True,
                "streams": other.streams,
                "user_model": other.user_model,
                "__doc__": f"{other.__name__}'s model converted to Facto-CNN layers.",
            },
        )

    def step_memory(self, ctx: RunContext, *, fake: bool = False) -> MemoryReport:
        """One step of the low-rank model, what trains after the first ``frt_epochs``
        (``report.stage`` is ``"low-rank"``)."""
        report = super().step_memory(ctx, fake=fake)
        report.stage = "low-rank"
        return report

    def full_rank_step(self, ctx: RunContext) -> tuple[nn.Module, Any, torch.optim.Optimizer]:
        """``(module, loss_fn, optimizer)`` of a step of the full-rank epochs (before the
        first rate drop): the converted model in full-rank mode (its ReLU and pooling layers
        still keep 1-bit masks) with the optimizer of the method Facto converts."""
        net, loss_fn, _ = self.metered_step(ctx)
        return net, loss_fn, self._to_full_rank(ctx, net)

    def _to_full_rank(self, ctx: RunContext, model: nn.Module) -> torch.optim.Optimizer:
        """Switch ``model`` to full-rank mode (``M D`` merged into ``W``) and return the
        optimizer of its full-rank epochs: that of the method Facto converts."""
        set_low_rank(model, False)
        return super().make_optimizer(ctx, model)

    def full_rank_step_memory(self, ctx: RunContext, *, fake: bool = False) -> MemoryReport:
        """One step of the full-rank epochs (:meth:`full_rank_step`; ``report.stage`` is
        ``"full-rank"``), estimated on fake tensors when ``fake``."""
        report = self.step_memory_of(ctx, self.full_rank_step, fake=fake)
        report.stage = "full-rank"
        return report

    def measure_memory(self, ctx: RunContext, trainer: Trainer) -> dict[str, Any]:
        """The meter's step of each phase that ran (``stages``: peak, saved activations,
        optimizer state); the report itself is the low-rank phase's (``stage`` names it), or
        the full-rank one's when only that ran. ``batchnorm_saved_activations`` and
        ``batchnorm_share``: what batch-norm layers keep of the reported saved bytes;
        ``batchnorm_full_inputs``: the part kept by layers not compacted (their float input)."""
        from smallfoot.memory import measure

        ran = {metrics.get("facto_phase") for metrics in trainer.history}
        low_rank = any(layer.low_rank for layer in factorized_layers(trainer.model))
        ran.add("low-rank" if low_rank else "full-rank")  # the phase the last epoch ended in
        batch = example_batch(ctx.train_set, ctx.config.batch_size, ctx.device)
        reports, models = {}, {}
        if "full-rank" in ran:
            # merging M D into W changes the parameters: measure a copy
            model = copy.deepcopy(trainer.model)
            optimizer = self._to_full_rank(ctx, model)
            reports["full-rank"] = measure(model, batch, trainer.loss_fn, optimizer)
            models["full-rank"] = model
        if "low-rank" in ran:
            reports["low-rank"] = measure(trainer.model, batch, trainer.loss_fn, trainer.optimizer)
            models["low-rank"] = trainer.model
        stage = "low-rank" if "low-rank" in reports else "full-rank"
        report = reports[stage]
        kept, share, full = batchnorm_share(models[stage], report)
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
            "batchnorm_full_inputs": full,
        }

    def train(self, ctx: RunContext) -> TrainOutcome:
        """Default training; the per-layer conversion report goes to ``extra["conversion"]``,
        what ran (phases, epochs, learning rates) to ``extra["facto_schedule"]`` (``plan``,
        ``phases`` and a one-line ``text``, printed with the progress) and, when batch norm
        keeps saved bytes, a one-line note to ``extra["facto_note"]``."""
        outcome = super().train(ctx)
        outcome.extra["conversion"] = self.conversion.rows()
        plan = self.options.lr_plan
        label = "paper plan" if plan == "paper" else f"switch plan, {ctx.config.schedule} schedule"
        outcome.extra["facto_schedule"] = {"plan": plan, **schedule_record(outcome.history, label)}
        if ctx.config.progress:
            print(outcome.extra["facto_schedule"]["text"], flush=True)
        memory = outcome.memory or {}
        if memory.get("batchnorm_saved_activations"):
            note = batchnorm_note(
                memory["batchnorm_share"],
                memory["saved_activations"],
                memory["batchnorm_full_inputs"],
            )
            outcome.extra["facto_note"] = note
            if ctx.config.progress:
                print(note, flush=True)
        return outcome


def schedule_record(history: list[dict[str, Any]], label: str) -> dict[str, Any]:
    """What ran, from the epochs' metrics (``facto_phase``, ``facto_lr``): ``phases``, one
    entry per run of consecutive epochs with the same phase and rate (``phase``, ``first`` and
    ``last`` epoch, 1-based, ``lr``), and ``text``, one line, e.g. ``facto (paper plan):
    full-rank epochs 1-3 at lr 0.05; low-rank epochs 4-10 at lr 0.005 (4-6), 0.0005 (7-9),
    5e-05 (10)``; ``label`` names the plan in it."""
    phases: list[dict[str, Any]] = []
    for metrics in history:
        phase, lr, epoch = metrics["facto_phase"], metrics["facto_lr"], metrics["epoch"]
        if phases and (phases[-1]["phase"], phases[-1]["lr"]) == (phase, lr):
            phases[-1]["last"] = epoch
        else:
            phases.append(
                {"phase": phase, "first": epoch, "last": epoch, "lr": float(f"{lr:.12g}")}
            )
    parts = []
    for phase in dict.fromkeys(p["phase"] for p in phases):
        runs = [p for p in phases if p["phase"] == phase]
        first, last = runs[0]["first"], runs[-1]["last"]
        span = f"{phase} epoch {first}" if first == last else f"{phase} epochs {first}-{last}"
        if len(runs) == 1:
            parts.append(f"{span} at lr {runs[0]['lr']:.3g}")
        elif len(runs) <= 3:
            rates = ", ".join(f"{p['lr']:.3g} ({_epochs(p['first'], p['last'])})" for p in runs)
            parts.append(f"{span} at lr {rates}")
        else:
            parts.append(f"{span} at lr {runs[0]['lr']:.3g} down to {runs[-1]['lr']:.3g}")
    return {"phases": phases, "text": f"facto ({label}): " + "; ".join(parts)}


def _epochs(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"


def batchnorm_share(model: nn.Module, report: MemoryReport) -> tuple[int, float, int]:
    """``(bytes, share, full)``: the saved-activation bytes that ``model``'s batch-norm layers
    keep in the meter's ``report`` (its ``by_module`` breakdown), their share of all saved
    bytes, and the bytes of those kept by layers that are not :class:`CompactBatchNorm2d`
    (their full input)."""
    norms = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
    }
    saved = {k: v["saved_activations"] for k, v in report.by_module.items() if k in norms}
    kept = sum(saved.values())
    full = sum(v for k, v in saved.items() if not isinstance(norms[k], CompactBatchNorm2d))
    share = kept / report.saved_activations if report.saved_activations else 0.0
    return kept, share, full


def batchnorm_note(share: float, saved: int, full: int) -> str:
    """The one-line note that batch norm keeps ``share`` of ``saved`` bytes, ``full`` of them
    as full inputs of layers that are not compacted."""
    return (
        f"facto: batch norm keeps {100 * share:.0f}% of the {saved:,} saved-activation bytes "
        f"that remain; {full:,} of them are full inputs of batch norms left as they are "
        "(outside the converted range, or --compact-bn false), the rest int8 normalised inputs"
    )
