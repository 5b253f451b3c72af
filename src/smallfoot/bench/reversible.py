"""Benchmark ``reversible``: RevNet-18 against ResNet-18.

1. Memory (meter, ``estimate``): saved activations and peak of one training step at
   3x32x32, batch 32, width 64, with 2/4/8 blocks per stage, for ``resnet18`` and ``revnet18``.
2. Training: both models at width 8 on a Fashion-MNIST subset (padded to 32x32): test
   accuracy, seconds per epoch, and the meter's measured saved activations at the batch size.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

import smallfoot.reversible  # noqa: F401  (registers revnet18)
from smallfoot.bench import BenchResult, register_benchmark
from smallfoot.data import BatchLoader, load_dataset
from smallfoot.memory import estimate, measure
from smallfoot.models import build_model
from smallfoot.train.trainer import TrainConfig, Trainer

MODELS = ["resnet18", "revnet18"]


def _mib(nbytes: int) -> float:
    return round(nbytes / 2**20, 2)


def memory_rows(depths=(2, 4, 8), width: int = 64, batch: int = 32) -> list[dict[str, Any]]:
    """One row per (model, blocks per stage): the meter's estimate of one training step."""
    torch.manual_seed(0)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    rows = []
    for blocks in depths:
        for name in MODELS:
            model = build_model(name, (3, 32, 32), 10, width=width, blocks_per_stage=blocks)
            report = estimate(model, (x, y)).to_dict()
            rows.append(
                {
                    "section": f"memory (estimate, 3x32x32, batch {batch}, width {width})",
                    "model": name,
                    "blocks_per_stage": blocks,
                    "parameters_mib": _mib(report["parameters"]),
                    "saved_activations_mib": _mib(report["saved_activations"]),
                    "peak_mib": _mib(report["peak"]),
                }
            )
    return rows


def training_rows(quick: bool, train_limit: int, test_limit: int, epochs: int, width: int):
    """One row per model: accuracy, seconds per epoch and measured saved activations."""
    dataset = "digits" if quick else "fashion-mnist"
    limits = ({}, {}) if quick else ({"limit": train_limit}, {"limit": test_limit})
    train = load_dataset(dataset, "train", pad_to=32 if not quick else None, **limits[0])
    test = load_dataset(dataset, "test", pad_to=32 if not quick else None, **limits[1])
    config = TrainConfig(
        epochs=1 if quick else epochs,
        batch_size=64,
        lr=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="cosine",
        seed=0,
    )
    rows = []
    for name in MODELS:
        torch.manual_seed(0)
        model = build_model(name, train.input_shape, train.num_classes, width=width)
        x, y = next(iter(BatchLoader(train, config.batch_size, shuffle=False).epoch(0)))
        memory = measure(model, (x, y)).to_dict()
        trainer = Trainer(model, train, test, config, progress=False)
        start = time.perf_counter()
        trainer.fit()
        seconds = time.perf_counter() - start
        rows.append(
            {
                "section": f"training ({dataset}, {len(train)} train / {len(test)} test, "
                f"width {width}, {config.epochs} epochs, batch 64)",
                "model": name,
                "test_accuracy": round(trainer.history[-1]["test_accuracy"], 4),
                "seconds_per_epoch": round(seconds / config.epochs, 2),
                "saved_activations_mib": _mib(memory["saved_activations"]),
                "peak_mib": _mib(memory["peak"]),
            }
        )
    return rows


def plot(rows, out_dir: Path) -> Path:
    """Saved activations against blocks per stage, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name in MODELS:
        points = [
            (r["blocks_per_stage"], r["saved_activations_mib"])
            for r in rows
            if r["model"] == name and "blocks_per_stage" in r
        ]
        ax.plot(*zip(*points, strict=True), marker="o", label=name)
    ax.set_xlabel("blocks per stage")
    ax.set_ylabel("saved activations (MiB)")
    ax.set_title("Saved activations vs depth (meter estimate)")
    ax.legend()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "saved_vs_depth.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@register_benchmark("reversible", "RevNet-18 vs ResNet-18: saved activations by depth, training")
def run_reversible_bench(
    quick: bool,
    out_dir: Path,
    train_limit: int = 10000,
    test_limit: int = 2000,
    epochs: int = 4,
    width: int = 8,
) -> BenchResult:
    """Memory table by depth (estimate, ResNet-18 scale) and a short training comparison."""
    rows = memory_rows(depths=(2, 8) if quick else (2, 4, 8))
    figure = plot(rows, out_dir)
    rows += training_rows(quick, train_limit, test_limit, epochs, width)
    notes = (
        "Memory rows: smallfoot.memory.estimate of one SGD step. Training rows: wall time on a "
        "shared, loaded 2-core CPU machine (timings are indicative only); saved activations and "
        "peak measured by smallfoot.memory.measure at batch 64."
    )
    return BenchResult(rows=rows, figures=[figure], notes=notes)
