"""Benchmark ``layerwise``: deep layer-wise / segment-wise learning against full backprop
(thesis chapter 6, tables 6.1-6.3), and the memory of its units at the thesis' scale.

Every training run is a :class:`~smallfoot.config.RunConfig` run as ``smallfoot train`` runs
it (:func:`smallfoot.bench.grid.run_grid`): for ``cnn4`` and a narrowed VGG-13 on
Fashion-MNIST, full backprop and layer-wise training with the method's defaults (the thesis'
protocol: AdamW 3e-3 stepped per unit, decision blocks probed for accuracy per byte),
bottom-up and random robin (one epoch per unit per round, as many rounds as epochs).
Full backprop trains with the same AdamW rate, schedule and epochs (table 6.1: the same rate
and decay for both). Beside the trained runs, :func:`smallfoot.layerwise.segment_memory`
estimates, on fake tensors, every unit's training peak for the full VGG-13 at 3x32x32, batch
128, AdamW, against full backprop: the thesis' setting, too large to train here.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import torch

from smallfoot._figures import pyplot, save_figure
from smallfoot.bench import BenchResult, Claim, register_benchmark, register_claims
from smallfoot.bench.grid import GridRow, run_grid
from smallfoot.config import RunConfig
from smallfoot.layerwise import LayerwiseOptions, block_name, segment_memory
from smallfoot.models import build_model
from smallfoot.train import TrainConfig

MODELS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    # label -> (registered model, model options, data options)
    "cnn4": ("cnn4", {}, {}),
    "vgg13/8": ("vgg13_bn", {"width": 0.125}, {"pad_to": 32}),
}
VARIANTS: dict[str, dict[str, Any] | None] = {
    # label -> layer-wise options (None: full backprop)
    "full backprop": None,
    "bottom-up": {},
    "random robin": {"order": "random-robin"},
}
THESIS_SCALE = {
    "model": "vgg13_bn",
    "label": "vgg13_bn (full width)",
    "input_shape": (3, 32, 32),
    "classes": 10,
    "batch": 128,
}
THESIS_BUDGET = 0.3
TRAIN_IMAGES = 10_000
EPOCHS = 4
FULL_SIZING = """a seeded 10,000-image training subset of Fashion-MNIST (the 10,000 test images in
full) and 4 epochs (per unit), to fit about an hour on 2 CPU cores (18 runs; the thesis'
input dropout and segments of two units, both method options, are not trained here); the
thesis trains 30-60 epochs per unit on the full sets."""


def grid_rows(quick: bool) -> list[GridRow]:
    """The training runs: Fashion-MNIST sized by :data:`FULL_SIZING`, 3 seeds (quick: digits,
    1 seed, 2 epochs)."""
    dataset, seeds, epochs = ("digits", (0,), 2) if quick else ("fashion-mnist", (0, 1, 2), EPOCHS)
    rows = []
    for label, (model, model_options, data_options) in MODELS.items():
        for variant, options in VARIANTS.items():
            base = dict(
                dataset=dataset,
                model=model,
                epochs=epochs,
                batch_size=128,
                model_options=dict(model_options),
                data_options=dict(data_options),
                train_limit=None if quick else TRAIN_IMAGES,
                progress=False,
            )
            if options is None:
                config = RunConfig(
                    **base,
                    method="baseline",
                    optimizer="adamw",
                    lr=3e-3,
                    weight_decay=1e-6,
                    schedule="multistep",
                )
            else:
                config = RunConfig(**base, method="layerwise", method_options=dict(options))
            rows.append(GridRow(f"{label} {variant}", config, seeds, {"model_label": label,
                                                                       "variant": variant}))  # fmt: skip
    return rows


def run_row(record: dict[str, Any]) -> dict[str, Any]:
    """One table row from a grid record (a run's summary): accuracies in %, memory in MiB and
    % of full backprop at the same batch and optimizer, the per-unit curve and decision blocks."""
    memory = record.get("memory") or {}
    row: dict[str, Any] = {
        "section": "trained runs",
        "model": record["model_label"],
        "variant": record["variant"],
        "seed": record["seed"],
        "test_accuracy_pct": round(100 * record["test_accuracy"], 2),
        "peak_mib": round(memory["peak"] / 2**20, 2) if memory.get("peak") else None,
        "memory_pct": round(100 * memory.get("fraction", 1.0), 1),
        "seconds": round(record["seconds"], 1),
    }
    layerwise = record.get("layerwise")
    if layerwise:
        units = layerwise["units"]
        peak = layerwise["peak_unit"]
        row.update(
            peak_unit=f"{peak} of {len(units)}",
            peak_unit_accuracy_pct=round(100 * units[peak - 1]["test_accuracy"], 2),
            accuracy_by_unit_pct=[round(100 * u["test_accuracy"], 1) for u in units],
            memory_pct_by_unit=[round(100 * u["fraction"], 1) for u in units if "fraction" in u],
            decision_blocks=[
                "model head" if u["decision"].get("head") == "model" else block_name(u["decision"])
                for u in units
            ],
            largest_unit=memory.get("stage"),
        )
    row["command"] = record["command"]
    return row


def thesis_scale_rows(quick: bool, spec: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Estimated unit peaks of the full VGG-13 at the thesis' setting (``spec``, default
    :data:`THESIS_SCALE`), AdamW, against full backprop (fake tensors): with the method's
    defaults (no budget) and, unless ``quick``, with the thesis' search for decision blocks
    within 30% (up to 4 down-convs)."""
    spec = spec or THESIS_SCALE
    torch.manual_seed(0)
    model = build_model(
        spec["model"], spec["input_shape"], spec["classes"], **spec.get("model_options", {})
    )
    config = TrainConfig(batch_size=spec["batch"])
    settings = {"defaults (no budget)": LayerwiseOptions()}
    if not quick:
        settings[f"budget {THESIS_BUDGET:.0%}, up to 4 down-convs"] = LayerwiseOptions(
            budget=THESIS_BUDGET, strict_budget=False
        )
    rows = []
    for label, options in settings.items():
        planned = segment_memory(
            model, spec["input_shape"], spec["classes"], config, options, fake=True
        )
        units = planned["units"]
        largest = max(units, key=lambda u: u["peak"])
        rows.append(
            {
                "section": "memory at the thesis' scale (estimate)",
                "model": spec.get("label", spec["model"]),
                "variant": label,
                "input": "x".join(map(str, spec["input_shape"])),
                "batch": spec["batch"],
                "optimizer": "adamw",
                "full_backprop_mib": round(planned["reference"]["peak"] / 2**20, 1),
                "peak_mib": round(largest["peak"] / 2**20, 1),
                "memory_pct": round(100 * largest["fraction"], 1),
                "largest_unit": largest["stage"],
                "memory_pct_by_unit": [round(100 * u["fraction"], 1) for u in units],
                "decision_blocks": [
                    "model head" if u["record"].get("head") == "model" else block_name(u["record"])
                    for u in units
                ],
                "estimated": True,
            }
        )
    return rows


def plot_depth(rows: list[dict[str, Any]], path: Path) -> Path:
    """Test accuracy after each unit (seed 0), one panel per model; full backprop dashed."""
    plt = pyplot()

    runs = [r for r in rows if r.get("section") == "trained runs" and r["seed"] == 0]
    labels = list(dict.fromkeys(r["model"] for r in runs))
    fig, axes = plt.subplots(1, len(labels), figsize=(5.5 * len(labels), 4), squeeze=False)
    for ax, label in zip(axes[0], labels, strict=True):
        for row in (r for r in runs if r["model"] == label):
            if "accuracy_by_unit_pct" not in row:
                ax.axhline(row["test_accuracy_pct"], color="black", ls="--", label=row["variant"])
                continue
            curve = row["accuracy_by_unit_pct"]
            ax.plot(range(1, len(curve) + 1), curve, marker="o", label=row["variant"])
        ax.set_title(f"{label} (seed 0)")
        ax.set_xlabel("unit (segment) trained")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, path, dpi=110)
    return path


@register_benchmark(
    "layerwise",
    "layer-wise / segment-wise learning vs full backprop: accuracy by depth, peak memory, "
    "unit memory at the thesis' VGG-13 scale",
)
def layerwise_benchmark(quick: bool, out_dir: Path) -> BenchResult:
    """Full Fashion-MNIST (quick: digits); see the module docstring."""
    records = run_grid(grid_rows(quick), "layerwise", quick=quick)
    rows = [run_row(r) for r in records] + thesis_scale_rows(quick)
    epochs = records[0]["epochs"] if records else None
    notes = (
        f"{'digits' if quick else 'Fashion-MNIST'} (the VGG's inputs padded to 32x32), "
        f"{epochs} epochs of full backprop and {epochs} epochs per unit (random robin: "
        f"{epochs} rounds of one epoch per unit), batch 128. Full backprop: AdamW 3e-3, weight "
        "decay 1e-6, x0.1 at 50% and 75% of training; layer-wise: the method's defaults (the "
        "same AdamW rate and decay at unit 0, x0.8 and x1.15 per unit, the same steps over each "
        "unit's epochs; decision blocks chosen per unit by probe accuracy per byte among "
        "flatten, pool and the model's head; the peak unit chosen on a 10% validation split). "
        "Each row's command is the exact `smallfoot train` line. memory_pct: the largest "
        "unit's measured training peak over full backprop's at the same batch and optimizer. "
        "The thesis-scale rows are estimates (smallfoot.layerwise.segment_memory on fake "
        "tensors) for the full-width VGG-13 at 3x32x32, batch 128, AdamW; without data to "
        "probe, the default picks the largest candidate (an upper bound). Gap: median over "
        "seeds of full backprop's test accuracy minus the median of the layer-wise peak unit's "
        "(chosen on validation). Timings: CPU, a shared 2-core machine."
        + ("" if quick else " Not the thesis' scale: " + " ".join(FULL_SIZING.split()))
    )
    figures = [plot_depth(rows, out_dir / "accuracy_by_depth.png")]
    return BenchResult(rows=rows, figures=figures, notes=notes)


def _gaps(rows: list[dict[str, Any]], variant: str) -> tuple[dict[str, float], int]:
    """Per model: median full-backprop test accuracy minus the median peak-unit accuracy of
    ``variant`` (points), and the fewest seeds behind a median."""
    runs = [r for r in rows if r.get("section") == "trained runs"]
    gaps, seeds = {}, []
    for model in dict.fromkeys(r["model"] for r in runs):
        base = [r["test_accuracy_pct"] for r in runs if r["model"] == model
                and r["variant"] == "full backprop"]  # fmt: skip
        layer = [r["peak_unit_accuracy_pct"] for r in runs if r["model"] == model
                 and r["variant"] == variant]  # fmt: skip
        if base and layer:
            gaps[model] = round(statistics.median(base) - statistics.median(layer), 2)
            seeds.append(min(len(base), len(layer)))
    return gaps, min(seeds, default=0)


@register_claims("layerwise")
def layerwise_claims(rows: list[dict[str, Any]], command: str) -> list[Claim]:
    """``layerwise.gap`` (the worst model's bottom-up gap to full backprop),
    ``layerwise.random_robin`` (the VGG's random-robin gap) and
    ``layerwise.memory_thesis_scale`` (the largest unit's estimated peak, % of full backprop,
    for the full VGG-13 at the thesis' setting; the budget search's row when present)."""
    claims = []
    gaps, seeds = _gaps(rows, "bottom-up")
    if gaps:
        worst = max(gaps, key=gaps.get)
        claims.append(Claim(
            "layerwise.gap",
            f"Bottom-up layer-wise learning with the method's defaults reaches full backprop's "
            f"test accuracy within 1.0 point on {', '.join(gaps)} (measured: the worst model's, "
            f"{worst}, gap of the peak unit; far fewer epochs per unit than the thesis' 30-60).",
            "table 6.1: DLL 92.20% vs baseline 92.02% (CNN-4), 93.45 vs 93.41 (VGG-13), "
            "Fashion-MNIST",
            gaps[worst], "<=", 1.0, seeds=seeds, command=command, unit="points",
        ))  # fmt: skip
    robin, robin_seeds = _gaps(rows, "random robin")
    vgg = [m for m in robin if m.startswith("vgg")]
    if vgg:
        claims.append(Claim(
            "layerwise.random_robin",
            f"Random robin (one epoch per unit per round, as many rounds as epochs) matches full "
            f"backprop on the VGG ({vgg[0]}) within 1.0 point (peak unit).",
            "section 6.6.2: with random robin we could match full backprop on VGG",
            robin[vgg[0]], "<=", 1.0, seeds=robin_seeds, command=command, unit="points",
        ))  # fmt: skip
    scale = [r for r in rows if r.get("section", "").startswith("memory at the thesis")]
    if scale:
        row = next((r for r in scale if r["variant"].startswith("budget")), scale[0])
        claims.append(Claim(
            "layerwise.memory_thesis_scale",
            f"Training the largest unit of the full VGG-13 (3x32x32, batch 128, AdamW) needs at "
            f"most 40% of full backprop's peak (estimated on fake tensors, {row['variant']}; "
            f"{row['largest_unit']}).",
            "table 6.3: VGG-13 relative memory use 30.0-40.3% (CIFAR-10/100, SVHN, STL10)",
            row["memory_pct"], "<=", 40.0, seeds=1, command=command, unit="%",
        ))  # fmt: skip
    return claims
