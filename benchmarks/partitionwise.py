"""``smallfoot bench partitionwise``: deep partition-wise learning (thesis 6.8) against DDP with
2 ranks and single-process full backprop, same model, data and epochs, on 2 processes.

Single-process and partition-wise rows run through :func:`smallfoot.bench.grid.run_grid`
(``smallfoot train`` exactly); the DDP rows through :func:`smallfoot.distributed.launch`,
what ``smallfoot train --nproc 2`` runs (the grid has no process count), and their command is
that line. A DDP rank's peak memory is the meter's report of one full-backprop step at the
rank's batch (half the global batch).
"""

from __future__ import annotations

import dataclasses
import shutil
import statistics
from pathlib import Path
from typing import Any

from smallfoot.bench import BenchResult, Claim, grid, register_benchmark, register_claims
from smallfoot.bench.grid import RUNS_ROOT, GridRow, finished_run, run_grid
from smallfoot.config import RunConfig, train_command
from smallfoot.train.rundir import MetricsLog


def _base(quick: bool) -> RunConfig:
    if quick:
        return RunConfig(
            dataset="fashion-mnist",
            model="cnn4",
            epochs=1,
            batch_size=128,
            train_limit=2048,
            test_limit=1000,
            device="cpu",
            measure_memory=True,
        )
    # sized to about half an hour on 2 CPU cores (12 runs); all 60,000 images would take 3x
    return RunConfig(
        dataset="fashion-mnist",
        model="resnet20",
        epochs=3,
        batch_size=128,
        train_limit=20_000,
        device="cpu",
        measure_memory=True,
    )


def _partitionwise(base: RunConfig, **options: Any) -> RunConfig:
    return dataclasses.replace(
        base, method="partitionwise", method_options={"partitions": 2, **options}
    )


def ddp_rows(config: RunConfig, seeds: tuple[int, ...], quick: bool) -> list[dict[str, Any]]:
    """DDP with 2 ranks (``smallfoot train --nproc 2``), one record per seed, with the
    meter's peak of one rank's step (``rank_peak``, bytes)."""
    from smallfoot.data import load_dataset
    from smallfoot.distributed import launch
    from smallfoot.methods import RunContext, get_method

    parent = Path(RUNS_ROOT) / ("partitionwise-quick" if quick else "partitionwise")
    method = get_method("baseline")
    probe = load_dataset(config.dataset, "test", limit=1, seed=0)
    rank_config = dataclasses.replace(config, batch_size=config.batch_size // 2)
    ctx = RunContext(rank_config, method.options, probe, probe)
    rank_peak = method.step_memory(ctx).peak
    records = []
    for seed in seeds:
        run = dataclasses.replace(
            config, seed=seed, out_dir=str(parent), run_name=f"ddp-s{seed}", progress=False
        )
        summary = finished_run(run, parent / run.run_name) if grid.REUSE_FINISHED else None
        if summary is None:
            shutil.rmtree(parent / run.run_name, ignore_errors=True)
            summary = launch(run, 2)
        else:
            grid.REUSED_RUNS += 1
        records.append(
            {
                "label": "ddp",
                "seed": seed,
                "command": train_command(run) + " --nproc 2",
                **summary,
                "rank_peak": rank_peak,
            }
        )
    return records


def _row(record: dict[str, Any]) -> dict[str, Any]:
    """The table row of one run: accuracy, images/s of training, peak per process, idle."""
    images = record["train_samples"] * record["epochs"]
    row = {
        "label": record["label"],
        "seed": record["seed"],
        "test_accuracy_pct": 100 * record["test_accuracy"],
        "seconds": record["seconds"],
        "command": record["command"],
    }
    parts = (record.get("partitionwise") or {}).get("partitions")
    if parts:
        # training time: the slowest partition's loop (start-up and assembly excluded)
        train_seconds = max(p["seconds"] for p in parts)
        row["peak_per_process"] = max(p["peak"] for p in parts)
        row["idle_fraction"] = [round(p["idle_fraction"], 3) for p in parts]
        row["filtered"] = sum(p["images_filtered"] for p in parts)
    else:
        # the training epochs alone (loading and steps), as the partitions' loops: the
        # epochs' "seconds" in metrics.jsonl leave out evaluation and checkpoints
        metrics = MetricsLog(record["run_dir"]).read()
        train_seconds = sum(m["seconds"] for m in metrics)
        if record["label"] == "ddp":
            row["peak_per_process"] = record["rank_peak"]
        else:
            row["peak_per_process"] = (record.get("memory") or {}).get("peak")
    row["train_seconds"] = train_seconds
    row["images_per_second"] = images / train_seconds
    return row


@register_benchmark(
    "partitionwise",
    "deep partition-wise learning on 2 processes vs DDP 2 ranks vs single process (thesis 6.8)",
)
def partitionwise_benchmark(quick: bool, out_dir: Path) -> BenchResult:
    """Fashion-MNIST (a seeded 20,000-image training subset, all 10,000 test images); resnet20
    (cnn4 on 2,048 images with ``quick``); 3 seeds (1 quick)."""
    base = _base(quick)
    seeds = (0,) if quick else (0, 1, 2)
    rows = [
        GridRow("single", base, seeds),
        GridRow("partitionwise", _partitionwise(base), seeds),
        GridRow(
            "partitionwise+loss-filter",
            _partitionwise(base, filter="loss", filter_fraction=0.25, filter_from=1),
            seeds,
        ),
    ]
    records = run_grid(rows, "partitionwise", quick=quick)
    records += ddp_rows(base, seeds, quick)
    table = [_row(r) for r in records]
    notes = (
        f"{base.dataset} ({base.train_limit or 'all'} training images, "
        f"{base.test_limit or 'all'} test), {base.model}, {base.epochs} epoch(s), batch "
        f"{base.batch_size} (DDP: {base.batch_size // 2} per rank), seeds {list(seeds)}, CPU "
        "(gloo), one thread per process on a shared 2-core machine. images_per_second: "
        "training images x epochs / training seconds: partition-wise, the slowest partition's "
        "loop (start-up, assembly and evaluation excluded); DDP and single, the sum of the "
        "training epochs' seconds (metrics.jsonl; evaluation and checkpoints excluded). peak_per_process: the meter's peak of one training step (partition-wise: "
        "the largest partition's; DDP: one rank at half the batch). Loss filtering drops the "
        "lowest-loss 25% of every batch partition 1 forwards."
    )
    return BenchResult(rows=table, notes=notes)


def _median(rows: list[dict[str, Any]], label: str, key: str) -> float | None:
    values = [r[key] for r in rows if r.get("label") == label and r.get(key) is not None]
    return statistics.median(values) if values else None


@register_claims("partitionwise")
def partitionwise_claims(rows: list[dict[str, Any]], command: str) -> list[Claim]:
    """Issue 20's targets, from the medians over seeds of each row."""
    claims = []
    seeds = len({r["seed"] for r in rows if r.get("label") == "partitionwise"}) or 1
    pw_acc = _median(rows, "partitionwise", "test_accuracy_pct")
    single_acc = _median(rows, "single", "test_accuracy_pct")
    if pw_acc is not None and single_acc is not None:
        claims.append(Claim(
            "partitionwise.accuracy",
            "Two partitions trained in separate processes reach full backprop's test accuracy "
            "within 0.5 points (Fashion-MNIST, same epochs).",
            "section 6.8.4: ImageNet 81.81% / 81.59% with two partitions vs 81.78%",
            pw_acc - single_acc, ">=", -0.5, seeds=seeds, command=command, unit="points",
        ))  # fmt: skip
    pw_speed = _median(rows, "partitionwise", "images_per_second")
    ddp_speed = _median(rows, "ddp", "images_per_second")
    if pw_speed is not None and ddp_speed is not None:
        claims.append(Claim(
            "partitionwise.throughput_vs_ddp",
            "Partition-wise training on 2 processes is at least as fast as DDP on the same 2 "
            "processes (training images per second).",
            "table 6.6: DPL speeds training up by 4-279% over DDP (GPUs, NVMe interconnect)",
            pw_speed / ddp_speed, ">=", 1.0, seeds=seeds, command=command, unit="x DDP",
        ))  # fmt: skip
    pw_peak = _median(rows, "partitionwise", "peak_per_process")
    ddp_peak = _median(rows, "ddp", "peak_per_process")
    if pw_peak is not None and ddp_peak:
        claims.append(Claim(
            "partitionwise.memory",
            "Each partition's process peaks at no more than 60% of a DDP rank's memory "
            "(the meter's peak of one training step).",
            "section 6.8: partitions allow larger batches than full backprop in the same memory",
            pw_peak / ddp_peak, "<=", 0.6, seeds=seeds, command=command, unit="x DDP rank",
        ))  # fmt: skip
    filtered = _median(rows, "partitionwise+loss-filter", "train_seconds")
    plain = _median(rows, "partitionwise", "train_seconds")
    if filtered is not None and plain:
        claims.append(Claim(
            "partitionwise.filtering_time",
            "Loss filtering of 25% of what reaches partition 2 shortens partition-wise "
            "training (training seconds, filtered / unfiltered).",
            "figure 6.5: online filtering cuts the upper partitions' time per epoch",
            filtered / plain, "<", 1.0, seeds=seeds, command=command, unit="x",
        ))  # fmt: skip
    return claims
