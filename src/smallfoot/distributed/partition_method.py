"""The ``partitionwise`` method: ``smallfoot train --method partitionwise --partitions 2 ...``.

Starts one process per partition (:func:`smallfoot.distributed.partition.launch_partitions`),
then assembles the partitions into the model named by ``--model`` (``model.pt`` in the run
directory, loadable by ``--init``) and evaluates that model.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from smallfoot._io import atomic_torch_save
from smallfoot.distributed.partition import (
    PartitionOptions,
    assemble_partitions,
    build_partitions,
    launch_partitions,
    partition_config,
)
from smallfoot.errors import ConfigError
from smallfoot.memory.meter import MemoryReport
from smallfoot.methods import (
    Method,
    RunContext,
    TrainOutcome,
    load_initial_weights,
    register_method,
)
from smallfoot.train.rundir import MetricsLog
from smallfoot.train.trainer import Trainer, make_optimizer


def partition_reports(method: Method, ctx: RunContext, fake: bool = False) -> list[MemoryReport]:
    """The meter's report of one training step of every partition (its units + decision block)
    on a random batch of the partition's input shape: ``config.batch_size`` inputs, or one
    rank's share of them in a data-parallel partition."""
    from smallfoot.memory import estimate, measure

    torch.manual_seed(ctx.config.seed)
    model = method.build_model(ctx)
    options = method.options
    parts = build_partitions(model, ctx.input_shape, ctx.num_classes, options, ctx.config.seed)
    loss_fn, _ = method.make_loss(ctx)
    reports = []
    batch = math.ceil(ctx.config.batch_size / options.ranks_per_partition)
    for part in parts:
        net = part.net()
        optimizer = make_optimizer(
            net.parameters(), partition_config(ctx.train_config(), part.index, options)
        )
        x = torch.randn(batch, *part.input_shape)
        y = torch.randint(ctx.num_classes, (batch,))
        meter = estimate if fake else measure
        report = meter(net, (x, y), loss_fn=loss_fn, optimizer=optimizer)
        report.stage = f"partition {part.index + 1} of {len(parts)}"
        if options.ranks_per_partition > 1:
            report.stage += f", one of its {options.ranks_per_partition} ranks"
        reports.append(report)
    return reports


@register_method
class Partitionwise(Method):
    """Deep partition-wise learning: one process per partition, features pushed forward."""

    name = "partitionwise"
    user_model = "an nn.Sequential: its children are the units"
    description = (
        "deep partition-wise learning: partitions train in parallel processes on the features "
        "of the one below, no gradient across partitions (thesis 6.8)"
    )
    Options = PartitionOptions
    staged = True
    online_filters = False
    streams = False

    def check_run(self, ctx: RunContext) -> None:
        """Refuse a model that cannot be split as asked, or a device other than the CPU."""
        from smallfoot.runner.run import resolve_device

        if resolve_device(ctx.config.device) != "cpu":
            raise ConfigError(
                f"partition-wise runs exchange features over gloo on the CPU for now, not "
                f"{ctx.config.device!r}; use --device cpu"
            )
        self.options.check_batch(ctx.config.batch_size)
        model = self.build_model(ctx)
        build_partitions(model, ctx.input_shape, ctx.num_classes, self.options, ctx.config.seed)

    def step_memory(self, ctx: RunContext, *, fake: bool = False) -> MemoryReport:
        """The largest partition's training step (``report.stage`` names it)."""
        return max(partition_reports(self, ctx, fake), key=lambda r: r.peak)

    def train(self, ctx: RunContext) -> TrainOutcome:
        """Train the partitions in their processes, assemble, save ``model.pt`` and evaluate."""
        if ctx.run_dir is None:
            raise ConfigError("partition-wise training needs a run directory")
        reports = partition_reports(self, ctx) if ctx.config.measure_memory else None
        records = launch_partitions(ctx.config, ctx.run_dir, ctx.resume)
        return self.finish(ctx, records, reports)

    def finish(
        self,
        ctx: RunContext,
        records: list[dict[str, Any]],
        reports: list[MemoryReport] | None = None,
    ) -> TrainOutcome:
        """Assemble the trained partitions (their ``final.pt``) into one model, save it as
        ``model.pt`` (state dict + model name), evaluate it and every partition's decision
        block, and merge the partitions' ``metrics.jsonl``."""
        torch.manual_seed(ctx.config.seed)
        model = self.build_model(ctx)
        if ctx.config.init:
            load_initial_weights(model, ctx.config.init)
        parts = build_partitions(
            model, ctx.input_shape, ctx.num_classes, self.options, ctx.config.seed
        )
        assemble_partitions(model, parts, ctx.run_dir)
        atomic_torch_save(
            {"model": model.state_dict(), "model_name": self.model_name(ctx)},
            ctx.run_dir / "model.pt",
        )
        loss_fn, predict_fn = self.make_loss(ctx)
        config = ctx.train_config()

        def evaluate(net, dataset) -> dict[str, float]:
            trainer = Trainer(
                net, ctx.train_set, ctx.test_set, config, loss_fn, predict_fn=predict_fn
            )
            return trainer.evaluate(dataset)

        test, train = evaluate(model, ctx.test_set), evaluate(model, ctx.train_set)
        history = [line for record in records for line in record.pop("history")]
        history.sort(key=lambda m: (m["epoch"], m["partition"]))
        MetricsLog(ctx.run_dir).rewrite(history)
        from smallfoot.layerwise import chain

        for record, part in zip(records, parts, strict=True):
            prefix = chain([p.body for p in parts[: part.index + 1]])
            prefix.add_module("decision", part.decision)
            record["test_accuracy"] = evaluate(prefix, ctx.test_set)["accuracy"]
            if reports is not None:
                record["peak"] = reports[part.index].peak
        memory = None
        if reports is not None:
            largest = max(reports, key=lambda r: r.peak)
            memory = {**largest.to_dict(), "stage": largest.stage}
        extra: dict[str, Any] = {
            "partitionwise": {
                "schedule": self.options.schedule,
                "filter": self.options.filter,
                "ranks_per_partition": self.options.ranks_per_partition,
                "partitions": records,
            }
        }
        if ctx.config.progress:
            for r in records:
                peak = f"{r['peak'] / 2**20:.1f} MiB" if "peak" in r else "-"
                print(
                    f"partition {r['partition']}: units {r['units'][0]}-{r['units'][1]}, peak "
                    f"{peak}, busy {r['seconds_busy']:.1f} s, waiting "
                    f"{r['seconds_waiting']:.1f} s ({100 * r['idle_fraction']:.0f}% idle), "
                    f"forwarded {r['images_forwarded']}, filtered {r['images_filtered']}",
                    flush=True,
                )
        metrics = {
            "train_loss": train["loss"],
            "train_accuracy": train["accuracy"],
            "test_loss": test["loss"],
            "test_accuracy": test["accuracy"],
        }
        return TrainOutcome(model, metrics, [], memory, extra)
