"""Benchmark ``meter``: is the meter right, and what do the peers (checkpoint, offload) save?

1. ``estimate`` against ``measure`` on every baseline model (each category, time taken), and
   the peak against PyTorch's MemTracker.
2. Saved activations, peak and time per training step of ``baseline``, ``checkpoint`` and
   ``offload`` on ``cnn4``, ``vgg11_bn`` and ``resnet20`` at 32x32.
3. Paper scale: VGG-16 (with batch norm) at 224x224, batch 64, estimated (the configuration of the closing note).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch

from smallfoot.bench import BenchResult, Claim, register_benchmark, register_claims
from smallfoot.memory import CATEGORIES, plot_timeline
from smallfoot.memory.crosscheck import memtracker_peak
from smallfoot.runner.step import method_step_memory

BASELINES = [
    "mlp",
    "cnn4",
    "vgg11_bn",
    "vgg13_bn",
    "vgg16_bn",
    "resnet8",
    "resnet20",
    "resnet56",
    "resnet18",
]
PEER_MODELS = ["cnn4", "vgg11_bn", "resnet20"]
PEERS = ["baseline", "checkpoint", "offload"]
COMPARED = [c for c in CATEGORIES if c != "inputs"] + ["peak"]


def _mib(nbytes: int) -> float:
    return round(nbytes / 2**20, 3)


def estimate_vs_measure(models: list[str], shape, batch: int) -> list[dict[str, Any]]:
    """One row per baseline model: measured and estimated figures, their largest relative
    difference over the categories, both timings, and MemTracker's peak."""
    from smallfoot.methods import get_method

    rows = []
    for name in models:
        start = time.perf_counter()
        real = method_step_memory(name, shape, batch, seed=0)
        measured_s = time.perf_counter() - start
        start = time.perf_counter()
        fake = method_step_memory(name, shape, batch, seed=0, fake=True)
        estimated_s = time.perf_counter() - start
        worst = max(
            abs(getattr(fake, c) - getattr(real, c)) / max(getattr(real, c), 1) for c in COMPARED
        )
        # MemTracker on the same model, loss and optimizer (rebuilt with the same seed)
        model, loss_fn, opt, batch_data = _built(get_method("baseline"), name, shape, batch)
        theirs = memtracker_peak(model, batch_data, loss_fn=loss_fn, optimizer=opt)
        rows.append(
            {
                "section": "estimate vs measure",
                "model": name,
                "batch": batch,
                "input": "x".join(map(str, shape)),
                "parameters_mib": _mib(real.parameters),
                "saved_activations_mib": _mib(real.saved_activations),
                "peak_mib": _mib(real.peak),
                "peak_phase": real.peak_phase,
                "max_relative_difference": worst,
                "within_2pct": worst <= 0.02,
                "memtracker_peak_mib": _mib(theirs["total"]),
                "ours_minus_inputs_mib": _mib(real.peak - real.inputs),
                "measure_s": round(measured_s, 2),
                "estimate_s": round(estimated_s, 2),
                "measured": real.to_dict(),
                "estimated": fake.to_dict(),
            }
        )
        print(f"meter bench: {name}: max rel diff {worst:.2e}", flush=True)
    return rows


def _built(runner, name: str, shape, batch: int, optimizer: str = "sgd"):
    """Model, loss, optimizer and a random batch as ``method_step_memory`` builds them."""
    from smallfoot.config import RunConfig
    from smallfoot.data import ArrayDataset
    from smallfoot.methods import RunContext

    config = RunConfig(model=name, method=runner.name, batch_size=batch, optimizer=optimizer)
    sample = ArrayDataset(torch.zeros(1, *shape), torch.zeros(1, dtype=torch.long), 10, "x")
    ctx = RunContext(config, runner.options, sample, sample)
    loss_fn, _ = runner.make_loss(ctx)
    torch.manual_seed(0)
    model = runner.build_model(ctx)
    opt = runner.make_optimizer(ctx, model)
    x, y = torch.randn(batch, *shape), torch.randint(10, (batch,))
    return model, loss_fn, opt, (x, y)


def seconds_per_step(runner, name: str, shape, batch: int, repeats: int) -> float:
    """Median wall time of one plain training step (after one warm-up step)."""
    model, loss_fn, opt, (x, y) = _built(runner, name, shape, batch)
    model.train()
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def peers(
    models: list[str], shape, batch: int, repeats: int, out_dir: Path
) -> tuple[list[dict[str, Any]], list]:
    """Baseline, checkpoint and offload on the peer models; timelines of cnn4."""
    from smallfoot.methods import get_method

    rows, figures = [], []
    for name in models:
        base: dict[str, Any] = {}
        for method in PEERS:
            report = method_step_memory(name, shape, batch, method=method, seed=0)
            step_s = seconds_per_step(get_method(method), name, shape, batch, repeats)
            row = {
                "section": "peers",
                "model": name,
                "method": method,
                "batch": batch,
                "saved_activations_mib": _mib(report.saved_activations),
                "peak_mib": _mib(report.peak),
                "peak_phase": report.peak_phase,
                "seconds_per_step": round(step_s, 4),
            }
            if method == "baseline":
                base = {"saved": report.saved_activations, "peak": report.peak, "s": step_s}
            row["saved_vs_baseline"] = round(report.saved_activations / base["saved"], 3)
            row["peak_vs_baseline"] = round(report.peak / base["peak"], 3)
            row["time_vs_baseline"] = round(step_s / base["s"], 2)
            rows.append(row)
            if name == "cnn4" and method in ("baseline", "checkpoint"):
                figures.append(
                    plot_timeline(
                        report,
                        out_dir / f"timeline_{name}_{method}.png",
                        title=f"{name} / {method}: one SGD step, batch {batch}, "
                        f"{'x'.join(map(str, shape))} (measured)",
                    )
                )
            print(f"meter bench: {name} {method}: {row}", flush=True)
    return rows, figures


def plot_peers(rows: list[dict[str, Any]], path: Path) -> Path:
    """Grouped bars: saved activations and peak (MiB) per model and method."""
    from smallfoot._figures import figure

    models = list(dict.fromkeys(r["model"] for r in rows))
    with figure(path, ncols=2, size=(10, 4)) as (fig, axes):
        width = 0.8 / len(PEERS)
        for ax, key, label in (
            (axes[0], "saved_activations_mib", "saved activations (MiB)"),
            (axes[1], "peak_mib", "peak of the step (MiB)"),
        ):
            for j, method in enumerate(PEERS):
                values = [
                    next(r[key] for r in rows if r["model"] == m and r["method"] == method)
                    for m in models
                ]
                positions = [i + (j - 1) * width for i in range(len(models))]
                ax.bar(positions, values, width, label=method)
            ax.set_xticks(range(len(models)), models)
            ax.set_ylabel(label)
        axes[0].legend()
        fig.suptitle(
            f"one SGD training step at batch {rows[0]['batch']}, 3x32x32 (smallfoot.memory)"
        )
    return path


def paper_scale(batch: int) -> dict[str, Any]:
    """VGG-16 at 224x224 estimated (nothing allocated), with the time it took."""
    start = time.perf_counter()
    report = method_step_memory("vgg16_bn", (3, 224, 224), batch, fake=True)
    return {
        "section": "paper scale (estimate)",
        "model": "vgg16_bn",
        "batch": batch,
        "input": "3x224x224",
        "parameters_mib": _mib(report.parameters),
        "saved_activations_mib": _mib(report.saved_activations),
        "peak_mib": _mib(report.peak),
        "peak_phase": report.peak_phase,
        "saved_per_pixel_bytes": round(report.per_pixel["saved_activations"], 1),
        "estimate_s": round(time.perf_counter() - start, 2),
        "report": report.to_dict(),
    }


@register_benchmark(
    "meter", "the meter: estimate vs measure on every baseline; checkpoint/offload vs baseline"
)
def meter_benchmark(quick: bool, out_dir: Path) -> BenchResult:
    """Full: every baseline at batch 16, the peers at batch 32 with 3 timed steps; quick:
    four small models at batch 4, cnn4 and resnet20 at batch 8 with 1 timed step."""
    shape = (3, 32, 32)
    if quick:
        sweep, sweep_batch = ["mlp", "cnn4", "resnet8", "vgg11_bn"], 4
        peer_models, peer_batch, repeats = ["cnn4", "resnet20"], 8, 1
    else:
        sweep, sweep_batch = BASELINES, 16
        peer_models, peer_batch, repeats = PEER_MODELS, 32, 3
    rows = estimate_vs_measure(sweep, shape, sweep_batch)
    peer_rows, figures = peers(peer_models, shape, peer_batch, repeats, out_dir)
    rows += peer_rows
    figures.insert(0, plot_peers(peer_rows, out_dir / "peers.png"))
    rows.append(paper_scale(64))
    notes = (
        "All figures from smallfoot.memory: `measure` runs one real SGD step (momentum 0.9, "
        "cross-entropy, the second of two steps) and follows every tensor storage; "
        "`estimate` runs the same step on fake tensors. max_relative_difference is the "
        f"largest |estimate - measure| / measure over {', '.join(COMPARED)}. "
        "memtracker_peak is PyTorch's MemTracker on the same steps; it does not charge the "
        "input batch, so compare it with ours_minus_inputs (it does charge the batch when the "
        "model starts with a view of it, as the mlp's Flatten: then the two differ by the "
        "batch's bytes). Peers: `checkpoint` = non-reentrant activation checkpointing with "
        "round(sqrt(layers)) segments of the top-level Sequential; `offload` = save_on_cpu, "
        "which on this CPU-only machine saves nothing (its copies are charged as saved "
        "activations). seconds_per_step: median of timed plain training steps after one "
        "warm-up, on a shared 2-core CPU machine under load from other jobs: ratios are "
        "indicative only."
    )
    return BenchResult(rows=rows, figures=figures, notes=notes)


@register_claims("meter")
def meter_claims(rows: list[dict[str, Any]], command: str) -> list[Claim]:
    """``meter.estimate_matches_measure``: the fake-tensor estimate of one training step against
    the measured step, largest relative difference over every category and model."""
    diffs = [r["max_relative_difference"] for r in rows
             if r.get("section") == "estimate vs measure"]  # fmt: skip
    if not diffs:
        return []
    return [Claim(
        "meter.estimate_matches_measure",
        f"The memory estimate on fake tensors equals the measured training step in every "
        f"category ({len(diffs)} models; met within 2%).",
        "eq. 5-10: M = M_theta + M_z + M_g; issue 3: estimate within 2% of measure",
        max(diffs), "<=", 0.02, seeds=1, command=command,
    )]  # fmt: skip
