"""Deep layer-wise and segment-wise learning (thesis algorithms 3 and 4, sections 6.2-6.7).

:func:`train_layerwise` splits a Sequential model into units, trains sliding-window segments of
them one at a time, each with a temporary decision block on top, fed by the frozen prefix (a
feednet) or by checkpointed features, and returns the assembled model with one record per
segment. Schedules: ``bottom-up`` (each segment fully trained before the next) and
``random-robin`` / ``round-robin`` (rounds over all segments, a few epochs per visit, with one
training state per segment kept between visits).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from smallfoot._io import atomic_torch_save
from smallfoot.data import ArrayDataset, BatchLoader
from smallfoot.errors import BudgetError, ConfigError, TrainingInterrupted
from smallfoot.layerwise.decision import (
    candidate_configs,
    decision_block,
    fit_decision_block,
    model_head,
    probe_accuracy,
)
from smallfoot.layerwise.dropout import BackwardDropout, InputDropout
from smallfoot.layerwise.feeding import FeatureStore, Subnet, output_shape
from smallfoot.layerwise.units import assemble, chain, segments, split_units
from smallfoot.losses import SoftmaxCrossEntropy
from smallfoot.train.rundir import MetricsLog, resume_hint
from smallfoot.train.trainer import TrainConfig, Trainer, make_optimizer

Order = Literal["bottom-up", "random-robin", "round-robin"]


@dataclass
class LayerwiseOptions:
    """Knobs of layer-wise training (thesis table 6.3); also the ``layerwise`` method's flags."""

    unit_size: int = field(
        default=1, metadata={"help": "units (layers or residual blocks) trained together"}
    )
    overlap: int | None = field(
        default=None,
        metadata={"help": "units shared by consecutive segments (default: unit size - 1)"},
    )
    budget: float = field(
        default=0.0,
        metadata={
            "help": "measured peak memory of each segment's training as a fraction of full "
            "backprop (e.g. 0.3); sizes the decision blocks (0: no budget, no search)"
        },
    )
    strict_budget: bool = field(
        default=True,
        metadata={
            "help": "fail when no decision block meets the budget (off: use the cheapest and "
            "report its measured fraction)"
        },
    )
    decision: Literal["auto", "flatten", "pool", "head"] = field(
        default="auto",
        metadata={
            "help": "decision block: flatten (one linear layer on the full map, the thesis' "
            "block for its 4-layer CNN), pool (average pool to --decision-pool, then linear), "
            "head (the model's own FC head, the thesis' block for VGG) or auto (each measured, "
            "probed for --probe-steps steps, best accuracy per byte kept)"
        },
    )
    max_convs: int = field(
        default=4,
        metadata={"help": "most down-convs in a decision block (searched with a --budget)"},
    )
    decision_pool: int = field(
        default=2,
        metadata={
            "help": "side the pool decision block average-pools to before its linear layer "
            "(0: no pooling, the same as --decision flatten)"
        },
    )
    probe_steps: int = field(
        default=20,
        metadata={"help": "training steps of each decision-block candidate's probe (auto)"},
    )
    order: Order = field(
        default="bottom-up",
        metadata={"help": "order of unit training: bottom-up, random-robin or round-robin"},
    )
    robin_epochs: int = field(
        default=1, metadata={"help": "epochs per segment per round (random/round robin)"}
    )
    epochs_per_unit: int | None = field(
        default=None, metadata={"help": "epochs per segment (default: --epochs)"}
    )
    forward_dropout: float = field(
        default=0.0, metadata={"help": "input dropout of the trained segment at its first epoch"}
    )
    forward_dropout_decay: float = field(
        default=0.95, metadata={"help": "forward dropout factor per epoch"}
    )
    backward_dropout: float = field(
        default=0.0,
        metadata={"help": "dropout of the gradient from the decision block into the segment"},
    )
    unit_optimizer: Literal["adamw", "run"] = field(
        default="adamw",
        metadata={
            "help": "optimizer of each unit: adamw at --unit-lr with --unit-weight-decay and "
            "--unit-schedule (thesis table 6.3), or run (--optimizer, --lr, --weight-decay, "
            "--schedule)"
        },
    )
    unit_lr: float = field(
        default=3e-3, metadata={"help": "AdamW learning rate of the first unit (adamw)"}
    )
    unit_weight_decay: float = field(
        default=1e-6, metadata={"help": "AdamW weight decay of the first unit (adamw)"}
    )
    unit_schedule: Literal["multistep", "constant", "cosine"] = field(
        default="multistep",
        metadata={
            "help": "learning-rate schedule over each unit's epochs (adamw); multistep: x "
            "--gamma at --milestones (0.1 at 50% and 75%)"
        },
    )
    lr_factor: float = field(
        default=0.8, metadata={"help": "learning rate of segment i: lr * lr_factor**i"}
    )
    wd_factor: float = field(
        default=1.15, metadata={"help": "weight decay of segment i: weight_decay * wd_factor**i"}
    )
    feed: Literal["feednet", "checkpoint"] = field(
        default="feednet",
        metadata={"help": "feednet (frozen prefix) or checkpoint (recorded features)"},
    )
    feature_storage: Literal["ram", "disk"] = field(
        default="ram", metadata={"help": "where checkpointed features live (disk: memmap)"}
    )
    val_fraction: float = field(
        default=0.1,
        metadata={"help": "training samples held out for early stopping and the peak unit"},
    )
    patience: int = field(
        default=0,
        metadata={"help": "stop a segment after this many epochs without validation gain (0: off)"},
    )
    truncate: bool = field(
        default=False, metadata={"help": "cut the final model at the peak unit (online pruning)"}
    )

    def validate(self) -> None:
        """Raise ``ConfigError`` for values that cannot work together."""
        if self.unit_size < 1:
            raise ConfigError(f"--unit-size must be at least 1, got {self.unit_size}")
        if self.budget < 0:
            raise ConfigError(f"--budget is a fraction of full backprop's peak, got {self.budget}")
        if self.decision_pool < 0:
            raise ConfigError(
                f"--decision-pool must be at least 0 (0: no pooling), got {self.decision_pool}"
            )
        if self.probe_steps < 1:
            raise ConfigError(f"--probe-steps must be at least 1, got {self.probe_steps}")
        if not self.unit_lr > 0:
            raise ConfigError(f"--unit-lr must be positive, got {self.unit_lr}")
        if self.unit_weight_decay < 0:
            raise ConfigError(
                f"--unit-weight-decay must be non-negative, got {self.unit_weight_decay}"
            )
        if self.robin_epochs < 1:
            raise ConfigError(f"--robin-epochs must be at least 1, got {self.robin_epochs}")
        if self.epochs_per_unit is not None and self.epochs_per_unit < 1:
            raise ConfigError(f"--epochs-per-unit must be at least 1, got {self.epochs_per_unit}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"--val-fraction must lie in [0, 1), got {self.val_fraction}")
        if self.patience and not self.val_fraction:
            raise ConfigError(
                "early stopping (--patience) needs a validation split (--val-fraction)"
            )
        if self.feed == "checkpoint" and self.order != "bottom-up":
            raise ConfigError(
                "feature checkpoints hold the outputs of finished units, so --feed checkpoint "
                "needs --order bottom-up; use --feed feednet with robin orders"
            )


@dataclass
class UnitState:
    """The training state of one segment: its subnet, trainer (optimizer, schedule, epoch) and scores."""

    index: int
    start: int
    end: int
    subnet: Subnet
    trainer: Trainer
    epochs: int
    val_set: ArrayDataset | None
    decision: dict[str, Any]
    memory: dict[str, Any] | None
    best_val: float = -1.0
    best_state: dict[str, torch.Tensor] | None = None
    stale: int = 0
    stopped: bool = False
    test_accuracy: float | None = None
    val_accuracy: float | None = None
    finished: bool = False

    @property
    def done(self) -> bool:
        """Whether the segment has used its epochs or stopped early."""
        return self.stopped or self.trainer.epoch >= self.epochs


@dataclass
class LayerwiseResult:
    """What :func:`train_layerwise` returns.

    Attributes:
        model: the assembled ``nn.Sequential`` (trained units + the last or peak decision block).
        units: one record per segment (layers, epochs, accuracies, decision block, memory).
        peak_unit: 1-based segment with the best validation (else test) accuracy.
        memory: the meter's report of the segment with the largest training peak, with
            ``stage``, ``reference_peak`` (full backprop, same batch) and ``fraction``.
        reference: the meter's report of full-backprop training of the whole model.
        history: per-epoch metrics, each with its ``unit``.
        visits: ``(round, [segment indices in visiting order])`` of the robin schedules.
        states: the training state of every segment (subnet, trainer, scores).
    """

    model: nn.Sequential
    units: list[dict[str, Any]]
    peak_unit: int
    memory: dict[str, Any] | None
    reference: dict[str, Any] | None
    history: list[dict[str, Any]]
    visits: list[tuple[int, list[int]]] = field(default_factory=list)
    states: list[UnitState] = field(default_factory=list)


def split_validation(
    dataset: ArrayDataset, fraction: float, seed: int
) -> tuple[ArrayDataset, ArrayDataset | None]:
    """``(train, validation)``: a seeded random ``fraction`` of ``dataset`` held out (copies)."""
    if fraction <= 0:
        return dataset, None
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed + 104729))
    held = max(1, round(fraction * len(dataset)))
    return dataset.subset(order[held:]), dataset.subset(order[:held])


def first_batch(
    dataset: ArrayDataset, batch_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first unshuffled batch of ``dataset`` (copies), as the meter measures it."""
    loader = BatchLoader(dataset, min(batch_size, len(dataset)), shuffle=False)
    x, y = next(iter(loader.epoch(0)))
    return x.to(device), y.to(device)


class LayerwiseTrainer:
    """Runs one layer-wise training: builds a :class:`UnitState` per segment, follows the
    schedule, checkpoints after every epoch (bottom-up) or round (robins), and assembles the
    result. :func:`train_layerwise` is the one-call entry point.
    """

    def __init__(
        self,
        model: nn.Module,
        train_set: ArrayDataset,
        test_set: ArrayDataset,
        config: TrainConfig,
        options: LayerwiseOptions | None = None,
        loss_fn=None,
        predict_fn=None,
        progress: bool = False,
        measure_memory: bool = True,
        run_dir: str | Path | None = None,
        decisions: list[dict[str, Any]] | None = None,
    ):
        self.options = options or LayerwiseOptions()
        self.options.validate()
        if self.options.feed == "checkpoint" and config.augment:
            raise ConfigError(
                "augmentation is applied to raw inputs and cannot be replayed from feature "
                "checkpoints; use --feed feednet or --no-augment"
            )
        self.config, self.progress = config, progress
        self.loss_fn = loss_fn if loss_fn is not None else SoftmaxCrossEntropy()
        self.predict_fn = predict_fn
        self.device = torch.device(config.device)
        self.model = model.to(self.device)
        self.units = split_units(model)
        self.body, self.head = self.units[:-1], self.units[-1]
        self.plan = segments(len(self.body), self.options.unit_size, self.options.overlap)
        self.epochs = self.options.epochs_per_unit or config.epochs
        self.num_classes = train_set.num_classes
        self.fit_set, self.val_set = split_validation(
            train_set, self.options.val_fraction, config.seed
        )
        self.test_set = test_set
        if decisions is not None and len(decisions) != len(self.plan):
            raise ConfigError(
                f"{len(decisions)} decision blocks given for {len(self.plan)} segments; reuse "
                "the records of a run with the same model, --unit-size and --overlap"
            )
        self.decisions = decisions
        self.need_memory = (
            measure_memory or self.options.budget > 0 or self.options.decision == "auto"
        )
        # the model's own FC head and the side of the map it is fed (None for MLPs)
        self.head_spec = model_head(self.units, train_set.input_shape)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.reference: dict[str, Any] | None = None
        self.planned: list[dict[str, Any] | None] = [None] * len(self.plan)
        self.states: list[UnitState] = []
        self.history: list[dict[str, Any]] = []
        self.visits: list[tuple[int, list[int]]] = []
        self.round = 0
        self.generator = torch.Generator().manual_seed(config.seed + 15485863)
        self.snapshot: tuple[int, nn.Sequential] | None = None
        self._saved: dict[str, Any] | None = None
        self._snapshot_weights: tuple[int, dict[str, torch.Tensor]] | None = None

    # -- one segment ---------------------------------------------------------------------------
    def base_config(self) -> TrainConfig:
        """The optimizer settings of the first unit: the run's, or AdamW at ``unit_lr`` with
        ``unit_weight_decay`` and ``unit_schedule`` (``unit_optimizer="adamw"``)."""
        options = self.options
        if options.unit_optimizer == "run":
            return self.config
        return replace(
            self.config,
            optimizer="adamw",
            lr=options.unit_lr,
            weight_decay=options.unit_weight_decay,
            schedule=options.unit_schedule,
        )

    def unit_config(self, index: int) -> TrainConfig:
        """The trainer config of segment ``index``: scaled lr and weight decay, its own seed."""
        base = self.base_config()
        return replace(
            base,
            lr=base.lr * self.options.lr_factor**index,
            weight_decay=base.weight_decay * self.options.wd_factor**index,
            epochs=self.epochs,
            seed=self.config.seed + 7919 * index,
        )

    def build_decision(
        self,
        index: int,
        record: dict[str, Any],
        input_shape: tuple[int, ...],
        feed: nn.Module,
        segment: nn.Module,
    ) -> nn.Module:
        """Segment ``index``'s decision block as ``record`` describes it (the last segment:
        the model's own head); ``input_shape`` is one sample fed to ``feed``."""
        if index == len(self.plan) - 1:
            return self.head
        out_shape = output_shape(nn.Sequential(feed, segment), input_shape)
        head = self.head_spec[0] if record.get("head") and self.head_spec else None
        return decision_block(
            out_shape,
            self.num_classes,
            record["convs"] or 0,
            record["width"],
            record.get("pool", self.options.decision_pool),
            head,
        ).to(self.device)

    def candidates(self, out_shape: tuple[int, ...]) -> list[dict[str, Any]]:
        """The decision-block choices searched for a unit with output ``out_shape``: the kind
        ``options.decision`` names (auto: flatten, pool and the model's head), then, with a
        budget, 1..``max_convs`` down-convs of half, equal and double the unit's channels
        (pooled, or flattened for ``flatten``)."""
        options = self.options
        pool = options.decision_pool
        flatten = {"convs": 0, "width": None, "pool": 0, "head": False}
        pooled = {"convs": 0, "width": None, "pool": pool, "head": False}
        head = None
        if self.head_spec is not None:
            head = {"convs": 0, "width": None, "pool": self.head_spec[1], "head": True}
        if len(out_shape) != 3:
            return [flatten]
        kinds = {
            "flatten": [flatten],
            "pool": [pooled],
            "head": [head or flatten],
            "auto": [flatten] + ([pooled] if pool else []) + ([head] if head else []),
        }[options.decision]
        if options.budget > 0:
            end = 0 if options.decision == "flatten" else pool
            kinds += [
                {"convs": convs, "width": width, "pool": end, "head": False}
                for convs, width in candidate_configs(out_shape, options.max_convs)[1:]
            ]
        return kinds

    def subnet_builder(self, index: int, frontier: int):
        """``(subnet_for(decision) -> Subnet, optimizer_for(parameters))`` of segment ``index``
        fed from unit ``frontier`` on."""
        options = self.options
        start, end = self.plan[index]
        feed, segment = chain(self.body[frontier:start]), chain(self.body[start:end])
        unit_config = self.unit_config(index)

        def subnet_for(decision: nn.Module) -> Subnet:
            return Subnet(
                feed,
                segment,
                decision.to(self.device),
                InputDropout(options.forward_dropout, options.forward_dropout_decay),
                BackwardDropout(options.backward_dropout),
            )

        def optimizer_for(parameters) -> torch.optim.Optimizer:
            return make_optimizer(parameters, unit_config)

        return subnet_for, optimizer_for

    def prober(self, index: int, frontier: int, data: tuple[ArrayDataset, ArrayDataset]):
        """``probe(subnet) -> accuracy`` of segment ``index``'s decision-block candidates:
        :func:`probe_accuracy` for ``probe_steps`` steps on ``data[0]``, scored on ``data[1]``,
        with the segment's optimizer; raw inputs go through the units below ``frontier``."""
        prefix = chain(self.body[:frontier]).eval()
        _, optimizer_for = self.subnet_builder(index, frontier)
        unit_config = self.unit_config(index)

        def probe(subnet: nn.Module) -> float:
            return probe_accuracy(
                subnet,
                data[0],
                data[1],
                self.loss_fn,
                optimizer_for,
                self.options.probe_steps,
                self.config.batch_size,
                unit_config.seed,
                self.predict_fn,
                prefix,
            )

        return probe

    def plan_segments(
        self,
        batch: tuple[torch.Tensor, torch.Tensor],
        meter=None,
        indices=None,
        probe_data: tuple[ArrayDataset, ArrayDataset] | None = None,
    ) -> list[dict[str, Any] | None]:
        """Choose every segment's decision block and measure its training step on ``batch``
        (raw inputs), before any training, as training will run it.

        ``meter`` is ``smallfoot.memory.measure`` (default) or ``estimate``; ``indices`` limits
        the planning to those segments (the others get None). Each entry holds ``record``
        (``convs``, ``width``, ``pool``, ``head``, with several candidates their ``tried``
        list), ``memory`` (the meter's report as a dict, None without memory measurement) and
        ``report`` (the :class:`MemoryReport`). Several candidates (``decision="auto"`` or a
        budget) are chosen by :func:`fit_decision_block`: by probe accuracy per byte when
        ``probe_data`` (``(train, evaluation)`` raw datasets) is given, else the largest peak
        within the budget (an upper bound of the probe's choice). With a positive budget
        that some segment cannot meet, raises :class:`BudgetError` (``strict_budget``) naming
        the budget that every segment meets.
        """
        from smallfoot.memory import measure

        meter = meter or measure
        options = self.options
        x, y = batch
        if self.need_memory and self.reference is None:
            optimizer = make_optimizer(self.model, self.base_config())
            self.reference = meter(self.model, (x, y), self.loss_fn, optimizer).to_dict()
        indices = range(len(self.plan)) if indices is None else indices
        planned: list[dict[str, Any] | None] = [None] * len(self.plan)
        for index in indices:
            start, end = self.plan[index]
            # checkpointed features replace the finished units' forward pass
            frontier = start if options.feed == "checkpoint" else 0
            unit_x = x
            if frontier:
                with torch.no_grad():
                    prefix = chain(self.body[:frontier])
                    was_training = prefix.training
                    unit_x = prefix.eval()(x)
                    prefix.train(was_training)
            subnet_for, optimizer_for = self.subnet_builder(index, frontier)
            feed, segment = chain(self.body[frontier:start]), chain(self.body[start:end])
            last = index == len(self.plan) - 1
            report = None
            if last:
                record: dict[str, Any] = {"convs": None, "width": None, "head": "model"}
            elif self.decisions is not None:
                given = self.decisions[index]["decision"]
                record = {
                    "convs": given["convs"],
                    "width": given["width"],
                    "pool": given.get("pool", options.decision_pool),
                    "head": bool(given.get("head")),
                }
            else:
                out_shape = output_shape(nn.Sequential(feed, segment), tuple(unit_x.shape[1:]))
                candidates = self.candidates(out_shape)
                if len(candidates) == 1 and options.budget <= 0:
                    record = dict(candidates[0])
                else:
                    probe = None
                    if probe_data is not None:
                        probe = self.prober(index, frontier, probe_data)
                    _, record = fit_decision_block(
                        subnet_for,
                        out_shape,
                        self.num_classes,
                        (unit_x, y),
                        self.reference["peak"],
                        options.budget if options.budget > 0 else math.inf,
                        self.loss_fn,
                        optimizer_for,
                        strict=False,
                        meter=meter,
                        candidates=candidates,
                        head=self.head_spec[0] if self.head_spec else None,
                        probe=probe,
                    )
                    record.pop("memory")
                    report = record.pop("report")
            if report is None and self.need_memory:
                decision = self.build_decision(
                    index, record, tuple(unit_x.shape[1:]), feed, segment
                )
                subnet = subnet_for(decision)
                optimizer = optimizer_for(subnet.trainable_parameters())
                report = meter(subnet, (unit_x, y), self.loss_fn, optimizer)
            memory = report.to_dict() if report is not None else None
            planned[index] = {"record": record, "memory": memory, "report": report}
        over = [p for p in planned if p is not None and p["record"].get("within_budget") is False]
        if over and options.strict_budget:
            worst = max(over, key=lambda p: p["record"]["fraction"])
            unit = planned.index(worst) + 1
            needed = math.ceil(100 * worst["record"]["fraction"] + 1e-6) / 100
            raise BudgetError(
                f"no decision block fits a budget of {options.budget:.0%} of full backprop for "
                f"{len(over)} of {len(self.plan)} units: training unit {unit} alone needs "
                f"{worst['record']['fraction']:.1%}; pass --budget {needed:g}, or "
                "--strict-budget false to train with the cheapest block anyway, or --budget 0 "
                "for no budget"
            )
        return planned

    def make_state(
        self, index: int, data: dict[str, ArrayDataset | None], frontier: int
    ) -> UnitState:
        """Segment ``index``'s subnet (fed from unit ``frontier`` on), decision block, trainer."""
        start, end = self.plan[index]
        feed, segment = chain(self.body[frontier:start]), chain(self.body[start:end])
        unit_config = self.unit_config(index)
        subnet_for, optimizer_for = self.subnet_builder(index, frontier)
        saved = self._saved["units"][index] if self._saved is not None else None
        planned = saved if saved is not None else self.planned[index]
        record = dict(planned["record"])
        torch.manual_seed(unit_config.seed)  # decision blocks start alike on resume
        decision = self.build_decision(index, record, data["train"].input_shape, feed, segment)
        subnet = subnet_for(decision)
        memory = planned["memory"]
        trainer = Trainer(
            subnet,
            data["train"],
            data["test"],
            unit_config,
            loss_fn=self.loss_fn,
            predict_fn=self.predict_fn,
            optimizer=optimizer_for(subnet.trainable_parameters()),
            progress=self.progress,
        )
        state = UnitState(
            index, start, end, subnet, trainer, self.epochs, data["val"], record, memory
        )
        if saved is not None:
            self._restore_unit(state, saved)
        return state

    def run_epoch(self, state: UnitState) -> None:
        """Train ``state``'s segment one epoch; validate, track early stopping, log the metrics."""
        trainer = state.trainer
        state.subnet.input_dropout.set_epoch(trainer.epoch)
        try:
            metrics = trainer.run_epoch(trainer.epoch)
        except KeyboardInterrupt:
            raise TrainingInterrupted(
                f"interrupted in epoch {trainer.epoch + 1} of unit {state.index + 1}"
                + resume_hint(self.run_dir)
            ) from None
        trainer.history.append(metrics)
        trainer.epoch += 1
        if state.val_set is not None:
            val = trainer.evaluate(state.val_set)
            metrics["val_loss"], metrics["val_accuracy"] = val["loss"], val["accuracy"]
            if val["accuracy"] > state.best_val:
                state.best_val, state.stale = val["accuracy"], 0
                if self.options.patience:
                    state.best_state = copy.deepcopy(
                        {
                            "segment": state.subnet.segment.state_dict(),
                            "decision": state.subnet.decision.state_dict(),
                        }
                    )
            else:
                state.stale += 1
                state.stopped = bool(self.options.patience) and state.stale >= self.options.patience
        line = {"unit": state.index + 1, **metrics}
        self.history.append(line)
        if self.progress:
            print(
                f"unit {state.index + 1}/{len(self.plan)} epoch {trainer.epoch}/{state.epochs}  "
                f"test acc {100 * metrics.get('test_accuracy', float('nan')):.2f}%",
                flush=True,
            )
        MetricsLog(self.run_dir).append(line)

    def finish(self, state: UnitState) -> None:
        """Restore the best (early-stopped) weights and score the segment on test and validation."""
        if state.best_state is not None:
            state.subnet.segment.load_state_dict(state.best_state["segment"])
            state.subnet.decision.load_state_dict(state.best_state["decision"])
            state.best_state = None
        state.trainer.close_loader()
        state.test_accuracy = state.trainer.evaluate(state.trainer.test_set)["accuracy"]
        if state.val_set is not None:
            state.val_accuracy = state.trainer.evaluate(state.val_set)["accuracy"]
        state.finished = True

    @staticmethod
    def score(state: UnitState) -> float:
        """Validation accuracy, or test accuracy without a validation split (selects the peak)."""
        return state.val_accuracy if state.val_accuracy is not None else state.test_accuracy

    # -- schedules -------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> LayerwiseResult:
        """Train (or continue from ``run_dir/checkpoint.pt``) and return the result."""
        if resume:
            self._load_checkpoint()
        todo = [
            i
            for i in range(len(self.plan))
            if self._saved is None or self._saved["units"][i] is None
        ]
        if todo:
            batch = first_batch(self.fit_set, self.config.batch_size, self.device)
            probe_data = (self.fit_set, self.val_set if self.val_set is not None else self.fit_set)
            self.planned = self.plan_segments(batch, indices=todo, probe_data=probe_data)
        if self.options.order == "bottom-up":
            self._bottom_up()
        else:
            self._robin()
        return self.result()

    def _bottom_up(self) -> None:
        store = FeatureStore(
            self.options.feature_storage, self.run_dir / "features" if self.run_dir else None
        )
        data = {"train": self.fit_set, "val": self.val_set, "test": self.test_set}
        frontier = 0
        try:
            for index in range(len(self.plan)):
                state = self.make_state(index, data, frontier)
                self.states.append(state)
                restored = state.finished
                if self._snapshot_weights is not None and self._snapshot_weights[0] == index:
                    prefix = assemble(self.body[: state.end], state.subnet.decision)
                    self.snapshot = (index, copy.deepcopy(prefix))
                    self.snapshot[1].load_state_dict(self._snapshot_weights[1])
                while not state.done:
                    self.run_epoch(state)
                    self.save_checkpoint()
                last = index == len(self.plan) - 1
                if not restored:
                    self.finish(state)
                    self._update_snapshot(state, last)
                    self.save_checkpoint()
                if self.options.feed == "checkpoint" and not last:
                    next_start = self.plan[index + 1][0]
                    feed = chain(self.body[frontier:next_start])
                    data = {
                        key: store.record(feed, dataset, key, self.config.eval_batch_size)
                        if dataset is not None
                        else None
                        for key, dataset in data.items()
                    }
                    frontier = next_start
        finally:
            store.close()

    def _update_snapshot(self, state: UnitState, last: bool) -> None:
        # later overlapping segments change this segment's units: keep a copy of the best one
        if not self.options.truncate or last:
            return
        if self.snapshot is None or self.score(state) > self.score(self.states[self.snapshot[0]]):
            prefix = assemble(self.body[: state.end], state.subnet.decision)
            self.snapshot = (state.index, copy.deepcopy(prefix))

    def _robin(self) -> None:
        data = {"train": self.fit_set, "val": self.val_set, "test": self.test_set}
        self.states = [self.make_state(index, data, 0) for index in range(len(self.plan))]
        self.save_checkpoint()
        while not all(state.done for state in self.states):
            order = list(range(len(self.states)))
            if self.options.order == "random-robin":
                order = torch.randperm(len(self.states), generator=self.generator).tolist()
            order = [i for i in order if not self.states[i].done]
            self.visits.append((self.round, order))
            for i in order:
                for _ in range(self.options.robin_epochs):
                    if self.states[i].done:
                        break
                    self.run_epoch(self.states[i])
            self.round += 1
            self.save_checkpoint()
        for state in self.states:
            self.finish(state)

    # -- result --------------------------------------------------------------------------------
    def result(self) -> LayerwiseResult:
        """The assembled model (cut at the peak unit with ``truncate``) and the records."""
        states = self.states
        peak = max(range(len(states)), key=lambda i: (self.score(states[i]), -i))
        if self.options.truncate and peak != len(states) - 1:
            if self.snapshot is not None and self.snapshot[0] == peak:
                final = self.snapshot[1]
            else:
                final = assemble(self.body[: states[peak].end], states[peak].subnet.decision)
        else:
            final = chain(self.units)
        records = [unit_record(state, self.body, self.reference) for state in states]
        memory = None
        if self.need_memory:
            largest = max(states, key=lambda s: s.memory["peak"])
            memory = {
                **largest.memory,
                "stage": f"unit {largest.index + 1} of {len(states)}",
                "reference_peak": self.reference["peak"],
                "fraction": largest.memory["peak"] / self.reference["peak"],
            }
        return LayerwiseResult(
            final, records, peak + 1, memory, self.reference, self.history, self.visits, states
        )

    # -- checkpoint ------------------------------------------------------------------------------
    def checkpoint_path(self) -> Path | None:
        """``run_dir/checkpoint.pt``, or None without a run directory."""
        return self.run_dir / "checkpoint.pt" if self.run_dir is not None else None

    def save_checkpoint(self) -> None:
        """Write every segment's state, the model, the log and the schedule position atomically."""
        path = self.checkpoint_path()
        if path is None:
            return
        state = {
            "model": self.model.state_dict(),
            "reference": self.reference,
            "units": [self._unit_state(s) for s in self.states],
            "history": self.history,
            "visits": self.visits,
            "round": self.round,
            "generator": self.generator.get_state(),
            "snapshot": (
                (self.snapshot[0], self.snapshot[1].state_dict()) if self.snapshot else None
            ),
        }
        atomic_torch_save(state, path)

    @staticmethod
    def _unit_state(state: UnitState) -> dict[str, Any]:
        trainer = state.trainer
        return {
            "record": state.decision,
            "memory": state.memory,
            "decision": state.subnet.decision.state_dict(),
            "optimizer": trainer.optimizer.state_dict(),
            "scheduler": trainer.scheduler.state_dict(),
            "epoch": trainer.epoch,
            "global_step": trainer.global_step,
            "trainer_history": trainer.history,
            "scores": {
                key: getattr(state, key)
                for key in (
                    "best_val",
                    "best_state",
                    "stale",
                    "stopped",
                    "test_accuracy",
                    "val_accuracy",
                    "finished",
                )
            },
        }

    def _restore_unit(self, state: UnitState, saved: dict[str, Any]) -> None:
        trainer = state.trainer
        state.subnet.decision.load_state_dict(saved["decision"])
        trainer.optimizer.load_state_dict(saved["optimizer"])
        trainer.scheduler.load_state_dict(saved["scheduler"])
        trainer.epoch, trainer.global_step = saved["epoch"], saved["global_step"]
        trainer.history = saved["trainer_history"]
        for key, value in saved["scores"].items():
            setattr(state, key, value)

    def _load_checkpoint(self) -> None:
        path = self.checkpoint_path()
        if path is None or not path.exists():
            raise ConfigError(f"no layer-wise checkpoint at {path}; nothing to resume")
        saved = torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(saved["model"])
        self.reference, self.history = saved["reference"], saved["history"]
        self.visits, self.round = saved["visits"], saved["round"]
        self.generator.set_state(saved["generator"])
        self._saved = saved
        if self.options.order == "bottom-up":
            # units after the last saved one are built fresh
            saved["units"] += [None] * (len(self.plan) - len(saved["units"]))
        self._snapshot_weights = saved["snapshot"]
        MetricsLog(self.run_dir).rewrite(self.history)


def segment_memory(
    model: nn.Module,
    input_shape: tuple[int, ...],
    num_classes: int,
    config: TrainConfig,
    options: LayerwiseOptions | None = None,
    loss_fn=None,
    fake: bool = True,
) -> dict[str, Any]:
    """The meter's report of every segment's training step and of full backprop, before any
    training: ``{"reference": dict, "units": [dict, ...], "reports": [MemoryReport, ...]}``
    (bytes; each unit's dict has ``fraction`` of the reference peak and its decision
    ``record``; ``reports`` are the meter's reports themselves, ``stage`` naming the unit).

    Planned as :func:`train_layerwise` plans them (same decision blocks, budget search
    included, feed, optimizer of ``options.unit_optimizer``, loss) on a random batch of
    ``config.batch_size`` inputs of ``input_shape``, estimated on fake tensors (``fake``) or
    measured. Without data to probe, ``decision="auto"`` takes the largest candidate within
    the budget: a bound of what a trained run picks. ``model`` (an ``nn.Sequential``) is only
    read.
    """
    from smallfoot.memory import estimate, measure

    options = replace(options or LayerwiseOptions(), val_fraction=0.0, patience=0)
    sample = ArrayDataset(
        torch.zeros(1, *input_shape), torch.zeros(1, dtype=torch.long), num_classes, "synthetic"
    )
    trainer = LayerwiseTrainer(model, sample, sample, config, options, loss_fn)
    x = torch.randn(config.batch_size, *input_shape)
    y = torch.randint(num_classes, (config.batch_size,))
    planned = trainer.plan_segments((x, y), meter=estimate if fake else measure)
    reference = trainer.reference
    units = []
    for index, plan in enumerate(planned):
        report = plan["report"]
        report.stage = f"unit {index + 1} of {len(planned)}"
        unit = report.to_dict()
        unit.update(fraction=report.peak / reference["peak"], record=plan["record"])
        units.append(unit)
    return {"reference": reference, "units": units, "reports": [p["report"] for p in planned]}


def train_layerwise(
    model: nn.Module,
    train_set: ArrayDataset,
    test_set: ArrayDataset,
    config: TrainConfig,
    options: LayerwiseOptions | None = None,
    loss_fn=None,
    predict_fn=None,
    progress: bool = False,
    measure_memory: bool = True,
    run_dir: str | Path | None = None,
    resume: bool = False,
    decisions: list[dict[str, Any]] | None = None,
) -> LayerwiseResult:
    """Train ``model`` (an ``nn.Sequential``, modified in place) segment by segment.

    ``config`` gives the optimizer, base learning rate and weight decay (scaled per segment by
    ``lr_factor**i`` and ``wd_factor**i``), batch size, schedule (per segment), augmentation
    and seed; ``options.epochs_per_unit`` (default ``config.epochs``) the epochs per segment.
    With ``measure_memory`` (or a positive budget) every segment's training step is measured
    by ``smallfoot.memory`` against full backprop of the whole model at the same batch size.
    With a ``run_dir``: one JSON line per epoch in ``metrics.jsonl``, ``checkpoint.pt`` after
    every epoch (bottom-up) or round (robins), disk feature checkpoints under ``features/``;
    ``resume=True`` continues from that checkpoint. ``decisions`` (the ``units`` records of an
    earlier result with the same segments) reuses its decision blocks instead of searching.
    """
    trainer = LayerwiseTrainer(
        model,
        train_set,
        test_set,
        config,
        options,
        loss_fn,
        predict_fn,
        progress,
        measure_memory,
        run_dir,
        decisions,
    )
    return trainer.fit(resume=resume)


def unit_record(
    state: UnitState, body: list[nn.Sequential], reference: dict[str, Any] | None
) -> dict[str, Any]:
    """A JSON-ready summary of one trained segment."""
    layers = [name for unit in body[state.start : state.end] for name, _ in unit.named_children()]
    record: dict[str, Any] = {
        "unit": state.index + 1,
        "units": [state.start + 1, state.end],
        "layers": layers,
        "epochs": state.trainer.epoch,
        "stopped_early": state.stopped,
        "test_accuracy": state.test_accuracy,
        "val_accuracy": state.val_accuracy,
        "decision": state.decision,
    }
    if state.memory is not None and reference is not None:
        record["peak"] = state.memory["peak"]
        record["fraction"] = state.memory["peak"] / reference["peak"]
    return record
