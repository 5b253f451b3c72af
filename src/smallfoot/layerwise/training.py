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
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from smallfoot.data import ArrayDataset, BatchLoader
from smallfoot.errors import ConfigError, TrainingInterrupted
from smallfoot.layerwise.decision import decision_block, fit_decision_block
from smallfoot.layerwise.dropout import BackwardDropout, InputDropout
from smallfoot.layerwise.feeding import FeatureStore, Subnet, output_shape
from smallfoot.layerwise.units import assemble, chain, segments, split_units
from smallfoot.losses import SoftmaxCrossEntropy
from smallfoot.train.trainer import TrainConfig, Trainer, make_optimizer

Schedule = Literal["bottom-up", "random-robin", "round-robin"]


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
        default=0.3,
        metadata={
            "help": "measured peak memory of each segment's training as a fraction of full "
            "backprop; sizes the decision blocks (0: global pool + linear, no search)"
        },
    )
    max_convs: int = field(default=4, metadata={"help": "most down-convs in a decision block"})
    decision_pool: int = field(
        default=2, metadata={"help": "decision blocks average-pool to this side before the linear"}
    )
    schedule: Schedule = field(
        default="bottom-up", metadata={"help": "bottom-up, random-robin or round-robin"}
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
        if self.feed == "checkpoint" and self.schedule != "bottom-up":
            raise ConfigError(
                "feature checkpoints hold the outputs of finished units, so --feed checkpoint "
                "needs --schedule bottom-up; use --feed feednet with robin schedules"
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


def _measure(model, batch, loss_fn, optimizer) -> dict[str, Any]:
    from smallfoot.memory import measure

    return measure(model, batch, loss_fn=loss_fn, optimizer=optimizer).to_dict()


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
    metrics_path: str | Path | None = None,
    feature_dir: str | Path | None = None,
) -> LayerwiseResult:
    """Train ``model`` (an ``nn.Sequential``, modified in place) segment by segment.

    ``config`` gives the optimizer, base learning rate and weight decay (scaled per segment by
    ``lr_factor**i`` and ``wd_factor**i``), batch size, schedule (per segment), augmentation
    and seed; ``options.epochs_per_unit`` (default ``config.epochs``) the epochs per segment.
    With ``measure_memory`` (or a positive budget) every segment's training step is measured
    by ``smallfoot.memory`` against full backprop of the whole model at the same batch size.
    ``metrics_path`` receives one JSON line per epoch; ``feature_dir`` holds disk checkpoints.
    """
    options = options or LayerwiseOptions()
    options.validate()
    if options.feed == "checkpoint" and config.augment:
        raise ConfigError(
            "augmentation is applied to raw inputs and cannot be replayed from feature "
            "checkpoints; use --feed feednet or --no-augment"
        )
    loss_fn = loss_fn if loss_fn is not None else SoftmaxCrossEntropy()
    device = torch.device(config.device)
    model.to(device)
    units = split_units(model)
    body, head = units[:-1], units[-1]
    plan = segments(len(body), options.unit_size, options.overlap)
    epochs = options.epochs_per_unit or config.epochs
    num_classes = train_set.num_classes
    fit_set, val_set = split_validation(train_set, options.val_fraction, config.seed)
    need_memory = measure_memory or options.budget > 0
    reference = None
    if need_memory:
        batch = first_batch(fit_set, config.batch_size, device)
        reference = _measure(model, batch, loss_fn, make_optimizer(model.parameters(), config))

    history: list[dict[str, Any]] = []
    metrics_file = Path(metrics_path) if metrics_path is not None else None

    def make_state(index: int, data: dict[str, ArrayDataset | None], frontier: int) -> UnitState:
        start, end = plan[index]
        feed, segment = chain(body[frontier:start]), chain(body[start:end])
        unit_config = replace(
            config,
            lr=config.lr * options.lr_factor**index,
            weight_decay=config.weight_decay * options.wd_factor**index,
            epochs=epochs,
            seed=config.seed + 7919 * index,
        )

        def subnet_for(decision: nn.Module) -> Subnet:
            return Subnet(
                feed,
                segment,
                decision.to(device),
                InputDropout(options.forward_dropout, options.forward_dropout_decay),
                BackwardDropout(options.backward_dropout),
            )

        def optimizer_for(parameters) -> torch.optim.Optimizer:
            return make_optimizer(parameters, unit_config)

        out_shape = output_shape(nn.Sequential(feed, segment), data["train"].input_shape)
        batch = first_batch(data["train"], config.batch_size, device) if need_memory else None
        record: dict[str, Any] = {}
        if index == len(plan) - 1:
            decision: nn.Module = head
            record = {"convs": None, "width": None, "head": "model"}
        elif options.budget > 0:
            decision, record = fit_decision_block(
                subnet_for,
                out_shape,
                num_classes,
                batch,
                reference["peak"],
                options.budget,
                loss_fn,
                optimizer_for,
                options.max_convs,
                pool=options.decision_pool,
            )
        else:
            decision = decision_block(out_shape, num_classes, 0, None, options.decision_pool)
            record = {"convs": 0, "width": None}
        subnet = subnet_for(decision)
        memory = record.pop("memory", None)
        if memory is None and need_memory:
            memory = _measure(subnet, batch, loss_fn, optimizer_for(subnet.trainable_parameters()))
        record.pop("tried", None)
        trainer = Trainer(
            subnet,
            data["train"],
            data["test"],
            unit_config,
            loss_fn=loss_fn,
            predict_fn=predict_fn,
            optimizer=optimizer_for(subnet.trainable_parameters()),
            progress=progress,
        )
        return UnitState(index, start, end, subnet, trainer, epochs, data["val"], record, memory)

    def run_epoch(state: UnitState) -> None:
        trainer = state.trainer
        state.subnet.input_dropout.set_epoch(trainer.epoch)
        try:
            metrics = trainer.run_epoch(trainer.epoch)
        except KeyboardInterrupt:
            raise TrainingInterrupted(
                f"interrupted in epoch {trainer.epoch + 1} of unit {state.index + 1}; layer-wise "
                "runs are not resumable: start the run again (it is seeded and repeats exactly)"
            ) from None
        trainer.history.append(metrics)
        trainer.epoch += 1
        if state.val_set is not None:
            val = trainer.evaluate(state.val_set)
            metrics["val_loss"], metrics["val_accuracy"] = val["loss"], val["accuracy"]
            if val["accuracy"] > state.best_val:
                state.best_val, state.stale = val["accuracy"], 0
                if options.patience:
                    state.best_state = copy.deepcopy(
                        {
                            "segment": state.subnet.segment.state_dict(),
                            "decision": state.subnet.decision.state_dict(),
                        }
                    )
            else:
                state.stale += 1
                state.stopped = bool(options.patience) and state.stale >= options.patience
        line = {"unit": state.index + 1, **metrics}
        history.append(line)
        if progress:
            print(
                f"unit {state.index + 1}/{len(plan)} epoch {trainer.epoch}/{state.epochs}  "
                f"test acc {100 * metrics.get('test_accuracy', float('nan')):.2f}%",
                flush=True,
            )
        if metrics_file is not None:
            with metrics_file.open("a") as handle:
                handle.write(json.dumps(line) + "\n")

    def finish(state: UnitState) -> None:
        if state.best_state is not None:
            state.subnet.segment.load_state_dict(state.best_state["segment"])
            state.subnet.decision.load_state_dict(state.best_state["decision"])
            state.best_state = None
        state.test_accuracy = state.trainer.evaluate(state.trainer.test_set)["accuracy"]
        if state.val_set is not None:
            state.val_accuracy = state.trainer.evaluate(state.val_set)["accuracy"]

    def score(state: UnitState) -> float:
        return state.val_accuracy if state.val_accuracy is not None else state.test_accuracy

    states: list[UnitState] = []
    visits: list[tuple[int, list[int]]] = []
    snapshot: tuple[int, nn.Sequential] | None = None
    if options.schedule == "bottom-up":
        store = FeatureStore(options.feature_storage, feature_dir)
        data = {"train": fit_set, "val": val_set, "test": test_set}
        frontier = 0
        try:
            for index in range(len(plan)):
                state = make_state(index, data, frontier)
                states.append(state)
                while not state.done:
                    run_epoch(state)
                finish(state)
                last = index == len(plan) - 1
                if (
                    options.truncate
                    and not last
                    and (snapshot is None or score(state) > score(states[snapshot[0]]))
                ):
                    decision = state.subnet.decision
                    snapshot = (index, copy.deepcopy(assemble(body[: state.end], decision)))
                if options.feed == "checkpoint" and not last:
                    next_start = plan[index + 1][0]
                    feed = chain(body[frontier:next_start])
                    data = {
                        key: store.record(feed, dataset, key, config.eval_batch_size)
                        if dataset is not None
                        else None
                        for key, dataset in data.items()
                    }
                    frontier = next_start
        finally:
            store.close()
    else:
        data = {"train": fit_set, "val": val_set, "test": test_set}
        states = [make_state(index, data, 0) for index in range(len(plan))]
        generator = torch.Generator().manual_seed(config.seed + 15485863)
        round_index = 0
        while not all(state.done for state in states):
            order = list(range(len(states)))
            if options.schedule == "random-robin":
                order = torch.randperm(len(states), generator=generator).tolist()
            order = [i for i in order if not states[i].done]
            visits.append((round_index, order))
            for i in order:
                for _ in range(options.robin_epochs):
                    if states[i].done:
                        break
                    run_epoch(states[i])
            round_index += 1
        for state in states:
            finish(state)

    peak = max(range(len(states)), key=lambda i: (score(states[i]), -i))
    if options.truncate and peak != len(states) - 1:
        final = (
            snapshot[1]
            if snapshot is not None and snapshot[0] == peak
            else assemble(body[: states[peak].end], states[peak].subnet.decision)
        )
    else:
        final = chain(units)
    records = [unit_record(state, body, reference) for state in states]
    memory = None
    if need_memory:
        largest = max(states, key=lambda s: s.memory["peak"])
        memory = {
            **largest.memory,
            "stage": f"unit {largest.index + 1} of {len(states)}",
            "reference_peak": reference["peak"],
            "fraction": largest.memory["peak"] / reference["peak"],
        }
    return LayerwiseResult(final, records, peak + 1, memory, reference, history, visits, states)


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
