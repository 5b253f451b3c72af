"""Benchmark ``reversible``: ResNet-18 against its reversible and invertible counterparts.

1. Memory at ResNet-18 scale (meter ``estimate``, 3x32x32, batch 32, the parameter-matched
   default widths): saved activations, peak, per-pixel cost ``M'_z`` (eq. 7) for 2/4/8 blocks
   per stage, with the ``checkpoint`` peer on the baseline.
2. The paper's running example: one training step on a batch of 512 images of 32x32.
3. Training on Fashion-MNIST padded to 32x32 with every model at (about) the baseline's
   parameter count: test accuracy, seconds per epoch and its ratio to the baseline (medians
   over seeds).
4. Noisy vs ideal (the paper's figures 11 and 13): irevnet18, layerwise18 and hybrid18 each
   trained with reconstructed and with stored activations from the same seeds, over depth and
   Leaky ReLU slope.

Every training run goes through ``smallfoot train`` (:func:`smallfoot.bench.grid.run_grid`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from smallfoot.alternatives import checkpointed
from smallfoot.bench import BenchResult, Claim, register_benchmark, register_claims
from smallfoot.bench.grid import GridRow, median_by, run_grid
from smallfoot.config import RunConfig, train_command
from smallfoot.data import load_dataset
from smallfoot.memory import estimate
from smallfoot.models import build_model, parameter_count

BASELINE = "resnet18"
CHECKPOINT = "resnet18+checkpoint"
REVERSIBLE = ["revnet18", "irevnet18", "layerwise18", "hybrid18"]
CONFIGS = [BASELINE, CHECKPOINT, *REVERSIBLE]
WIDTH_STEP = {"revnet18": 2, "irevnet18": 2, "layerwise18": 2, "hybrid18": 4}


def _mib(nbytes: float) -> float:
    return round(nbytes / 2**20, 2)


def build(name: str, input_shape, num_classes: int, **options) -> nn.Module:
    """Model ``name`` of :data:`CONFIGS` (``resnet18+checkpoint``: the baseline checkpointed in
    sqrt(layers) segments)."""
    if name == CHECKPOINT:
        return checkpointed(build_model(BASELINE, input_shape, num_classes, **options))
    return build_model(name, input_shape, num_classes, **options)


def matched_width(name: str, input_shape, num_classes: int, target: int) -> int:
    """The width of reversible model ``name`` whose parameter count is closest to ``target``."""
    step = WIDTH_STEP[name]
    best, best_gap, width = step, None, step
    while True:
        count = parameter_count(build_model(name, input_shape, num_classes, width=width))
        gap = abs(count - target)
        if best_gap is None or gap < best_gap:
            best, best_gap = width, gap
        if count > target:
            return best
        width += step


def _memory_row(report, base_saved: float | None) -> dict[str, Any]:
    row = {
        "parameters_mib": _mib(report.parameters),
        "saved_activations_mib": _mib(report.saved_activations),
        "peak_mib": _mib(report.peak),
        "peak_phase": report.peak_phase,
        "saved_bytes_per_pixel": round(report.per_pixel["saved_activations"], 1),
    }
    if base_saved:
        row["saved_vs_baseline"] = round(report.saved_activations / base_saved, 3)
    return row


def memory_rows(depths=(2, 4, 8), batch: int = 32) -> list[dict[str, Any]]:
    """Meter estimate of one SGD step at 3x32x32 for every config and depth."""
    torch.manual_seed(0)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    rows = []
    for blocks in depths:
        base_saved = None
        for name in CONFIGS:
            model = build(name, (3, 32, 32), 10, blocks_per_stage=blocks)
            report = estimate(model, (x, y))
            base_saved = base_saved or report.saved_activations
            rows.append(
                {
                    "section": f"memory by depth (estimate, 3x32x32, batch {batch}, "
                    "parameter-matched default widths)",
                    "model": name,
                    "blocks_per_stage": blocks,
                    "parameters": parameter_count(model),
                    **_memory_row(report, base_saved if name != BASELINE else None),
                }
            )
    return rows


def running_example_rows(batch: int = 512) -> list[dict[str, Any]]:
    """The paper's running example: one training step on ``batch`` images of 3x32x32."""
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    rows, base_saved = [], None
    for name in CONFIGS:
        report = estimate(build(name, (3, 32, 32), 10), (x, y))
        base_saved = base_saved or report.saved_activations
        rows.append(
            {
                "section": f"running example (estimate, batch {batch} of 3x32x32, SGD)",
                "model": name,
                "saved_activations_gib": round(report.saved_activations / 2**30, 3),
                "peak_gib": round(report.peak / 2**30, 3),
                "saved_bytes_per_pixel": round(report.per_pixel["saved_activations"], 1),
                "saved_vs_baseline": round(report.saved_activations / base_saved, 3),
            }
        )
    return rows


SEEDS = (0, 1, 2)
EPOCHS = 1
TRAIN_LIMIT = 10_000
"""The training runs' size: 1 epoch on a seeded 10,000-image subset of Fashion-MNIST. Timed
idle, a 2,000-image epoch (with 500 test images) takes 3.2 s for resnet18 at width 8 and 8.1 s
for the hybrid; the 34 configurations (30 distinct runs) x 3 seeds take about an hour."""
DEPTHS = (1, 2, 4)
"""blocks per stage of the noisy-vs-ideal depth sweep (at the default slope 0.5)"""
SLOPES = (0.5, 0.2, 0.1)
"""Leaky ReLU slopes of the slope sweep (layerwise and hybrid, at 2 blocks per stage)"""
NOISY_VARIANTS = ("irevnet", "layerwise", "hybrid")
COMPARED = {
    "resnet18": ("baseline", {}),
    "resnet18+checkpoint": ("checkpoint", {}),
    "revnet18": ("reversible", {"variant": "revnet"}),
    "irevnet18": ("reversible", {"variant": "irevnet"}),
    "layerwise18": ("reversible", {"variant": "layerwise"}),
    "hybrid18": ("reversible", {"variant": "hybrid"}),
    "hybrid18 stored": ("reversible", {"variant": "hybrid", "activations": "stored"}),
    "hybrid18 ccb": ("reversible", {"variant": "hybrid", "pooling": "ccb"}),
}
"""label -> (method, method options) of the parameter-matched comparison; every reversible
variant takes the width whose parameter count is closest to the baseline's"""
TRAINING = "training"
NOISY = "noisy vs ideal"


def base_config(quick: bool, epochs: int, width: int, train_limit: int | None) -> RunConfig:
    """The runs' shared settings: Fashion-MNIST padded to 32x32, a seeded ``train_limit``-image
    training subset (None: all 60,000) and all 10,000 test images; quick: the digits padded
    to 16x16, 1 epoch. ``--model resnet18 --model-opt width=WIDTH`` is the baseline and sets
    every reversible model's parameter count."""
    return RunConfig(
        dataset="digits" if quick else "fashion-mnist",
        data_options={"pad_to": 16 if quick else 32},
        model=BASELINE,
        model_options={"width": width},
        epochs=1 if quick else epochs,
        batch_size=64,
        lr=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="cosine",
        device="cpu",
        measure_memory=False,
        train_limit=None if quick else train_limit,
    )


def _run_rows(rows: list[GridRow], name: str, quick: bool, classes: int) -> list[dict[str, Any]]:
    """:func:`run_grid` one (row, seed) at a time; a run stopped by a training error (a
    non-finite loss or gradients) is recorded as ``diverged``, at chance accuracy
    ``1 / classes``.
    A row whose command already ran for another row (the comparison's invertible models are
    points of the noisy-vs-ideal grid) takes that run's record under its own label."""
    records, done = [], {}
    for row in rows:
        for seed in row.seeds:
            single = replace(row, seeds=(seed,))
            command = train_command(replace(row.config, seed=seed))
            if command in done:
                first, first_extra = done[command]
                own = {k: v for k, v in first.items() if k not in first_extra}
                records.append(
                    {**own, "label": row.label, **row.extra, "same_run_as": first["label"]}
                )
                continue
            (record,) = run_grid([single], name, quick=quick)
            if "error" in record:
                record.update(diverged=True, test_accuracy=1 / classes, seconds=None,
                              epochs=row.config.epochs)  # fmt: skip
            done[command] = (record, row.extra)
            records.append(record)
    return records


def invertible_options(
    variant: str, width: int, depth: int = 2, slope: float = 0.5, activations: str = "reconstructed"
) -> dict[str, Any]:
    """``--method reversible`` options of one invertible model: ``variant`` at ``width``,
    ``depth`` blocks per stage, Leaky ReLU ``slope`` (irevnet has ReLU: no slope)."""
    options = {"variant": variant, "width": width, "blocks_per_stage": depth,
               "activations": activations}  # fmt: skip
    if variant != "irevnet":
        options["negative_slope"] = slope
    return options


def comparison_grid(base: RunConfig, input_shape, classes: int, seeds) -> list[GridRow]:
    """Every model of :data:`COMPARED` at the baseline's parameter count; the invertible
    variants' widths are explicit (:func:`matched_width`), so that their runs are the same
    commands as the noisy-vs-ideal grid's points at 2 blocks per stage, slope 0.5."""
    target = parameter_count(build_model(BASELINE, input_shape, classes, **base.model_options))
    rows = []
    for label, (method, options) in COMPARED.items():
        variant = options.get("variant")
        if variant in NOISY_VARIANTS and set(options) <= {"variant", "activations"}:
            width = matched_width(f"{variant}18", input_shape, classes, target)
            activations = options.get("activations", "reconstructed")
            options = invertible_options(variant, width, activations=activations)
        config = replace(base, method=method, method_options=options)
        rows.append(GridRow(label, config, tuple(seeds), extra={"section": TRAINING}))
    return rows


def noisy_grid(base: RunConfig, input_shape, classes: int, seeds, depths, slopes):
    """Each invertible variant trained with reconstructed and with stored activations, over
    depth (blocks per stage, slope 0.5) and Leaky ReLU slope (2 blocks per stage; irevnet
    has ReLU, so depth only). The width is fixed per variant: the one matching the baseline's
    parameter count at 2 blocks per stage, so deeper means more layers, not a narrower net."""
    target = parameter_count(build_model(BASELINE, input_shape, classes, **base.model_options))
    rows = []
    for variant in NOISY_VARIANTS:
        name = f"{variant}18"
        width = matched_width(name, input_shape, classes, target)
        points = [(depth, 0.5) for depth in depths]
        if variant != "irevnet":
            points += [(2, slope) for slope in slopes if (2, slope) not in points]
        for depth, slope in points:
            for activations in ("reconstructed", "stored"):
                options = invertible_options(variant, width, depth, slope, activations)
                extra = {"section": NOISY, "variant": variant, "blocks_per_stage": depth,
                         "negative_slope": slope if variant != "irevnet" else None,
                         "activations": activations}  # fmt: skip
                shape_label = f"depth {depth}" + (f" slope {slope}" if variant != "irevnet" else "")
                label = f"{name} {shape_label} {activations}"
                config = replace(base, method="reversible", method_options=options)
                rows.append(GridRow(label, config, tuple(seeds), extra=extra))
    return rows


def _epoch_seconds(record: dict[str, Any]) -> float | None:
    seconds = record.get("seconds")
    return None if seconds is None else seconds / record["epochs"]


def training_table(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per model of the comparison: median accuracy and seconds per epoch over the
    seeds, and the time's ratio to the baseline's."""
    runs = [r for r in records if r.get("section") == TRAINING]
    labels = list(dict.fromkeys(r["label"] for r in runs))
    seconds = median_by(
        [{**r, "epoch_seconds": _epoch_seconds(r)} for r in runs], "epoch_seconds",
        lambda r: r["label"],
    )  # fmt: skip
    accuracy = median_by(runs, "test_accuracy", lambda r: r["label"])
    table = []
    for label in labels:
        mine = [r for r in runs if r["label"] == label]
        table.append({
            "section": f"{TRAINING} (median of {len(mine)} seeds)",
            "model": label,
            "trained": mine[0].get("model", label),
            "parameters": mine[0].get("parameters"),
            "test_accuracy": round(accuracy[label], 4),
            "accuracy_by_seed": " / ".join(
                "diverged" if r.get("diverged") else f"{r['test_accuracy']:.4f}" for r in mine
            ),
            "seconds_per_epoch": round(seconds[label], 2) if label in seconds else None,
            "time_vs_baseline": round(seconds[label] / seconds[BASELINE], 2)
            if label in seconds and BASELINE in seconds else None,
        })  # fmt: skip
    return table


def _noisy_key(r: dict[str, Any]) -> tuple:
    return (r["variant"], r["blocks_per_stage"], r["negative_slope"])


def noisy_table(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (variant, depth, slope): median test accuracy over the seeds with
    reconstructed and with stored activations, and the loss (stored - reconstructed,
    points); a diverged run counts at chance accuracy."""
    runs = [r for r in records if r.get("section") == NOISY]
    accuracy = median_by(runs, "test_accuracy", lambda r: (*_noisy_key(r), r["activations"]))
    table = []
    for key in dict.fromkeys(_noisy_key(r) for r in runs):
        mine = [r for r in runs if _noisy_key(r) == key]
        rebuilt, stored = accuracy[(*key, "reconstructed")], accuracy[(*key, "stored")]
        table.append({
            "section": f"{NOISY} (median of {len({r['seed'] for r in mine})} seeds; diverged "
                       "runs at chance accuracy)",
            "variant": key[0],
            "blocks_per_stage": key[1],
            "negative_slope": key[2],
            "parameters": next((r["parameters"] for r in mine if r.get("parameters")), None),
            "accuracy_reconstructed": round(rebuilt, 4),
            "accuracy_stored": round(stored, 4),
            "loss_points": round(100 * (stored - rebuilt), 2),
            "diverged_reconstructed": sum(
                bool(r.get("diverged")) for r in mine if r["activations"] == "reconstructed"
            ),
            "diverged_stored": sum(
                bool(r.get("diverged")) for r in mine if r["activations"] == "stored"
            ),
        })  # fmt: skip
    return table


def plot(rows, out_dir: Path) -> Path:
    """Saved activations against blocks per stage, one line per config."""
    from smallfoot._figures import figure

    path = out_dir / "saved_vs_depth.png"
    with figure(path, size=(5.5, 3.8)) as (fig, ax):
        for name in CONFIGS:
            points = [
                (r["blocks_per_stage"], r["saved_activations_mib"])
                for r in rows
                if r["model"] == name and "blocks_per_stage" in r
            ]
            ax.plot(*zip(*points, strict=True), marker="o", label=name)
        ax.set_xlabel("blocks per stage")
        ax.set_ylabel("saved activations (MiB)")
        ax.set_yscale("log")
        ax.set_title("Saved activations vs depth (meter estimate, batch 32)")
        ax.legend(fontsize=8)
    return path


def target_rows(rows) -> list[dict[str, Any]]:
    """The memory targets checked against the memory-by-depth rows."""
    memory = [r for r in rows if "blocks_per_stage" in r and "saved_activations_mib" in r]
    saved = {(r["model"], r["blocks_per_stage"]): r["saved_activations_mib"] for r in memory}
    depths = sorted({r["blocks_per_stage"] for r in memory})
    out = []

    def add(target: str, value: str, met: bool):
        out.append({"section": "targets", "target": target, "measured": value, "met": met})

    for name in REVERSIBLE:
        growth = saved[(name, depths[-1])] / saved[(name, depths[0])] - 1
        add(f"{name} saved activations flat in depth (<= 5%)", f"{growth:+.1%}", growth <= 0.05)
        limit = 0.5 if name == "revnet18" else 0.2
        ratio = saved[(name, 2)] / saved[(BASELINE, 2)]
        add(f"{name} saved <= {limit:.0%} of baseline at depth 2", f"{ratio:.1%}", ratio <= limit)
    return out


@register_benchmark(
    "reversible", "ResNet-18 vs checkpointing, RevNet, i-RevNet, layer-wise and hybrid"
)
def run_reversible_bench(
    quick: bool,
    out_dir: Path,
    epochs: int = EPOCHS,
    width: int = 8,
    seeds: tuple[int, ...] = SEEDS,
    train_limit: int | None = TRAIN_LIMIT,
) -> BenchResult:
    """Memory by depth and the running example (estimates at ResNet-18 scale), a
    parameter-matched training comparison, and each invertible model trained with
    reconstructed and with stored activations over depth and slope, every run through
    ``smallfoot train`` (its command in its row): ``epochs`` on ``train_limit`` training
    images (None: all 60,000), every test image."""
    rows = memory_rows(depths=(2, 8) if quick else (2, 4, 8))
    figure = plot(rows, out_dir)
    if not quick:
        rows += running_example_rows()
    rows += target_rows(rows)
    base = base_config(quick, epochs, width, train_limit)
    seeds = (0,) if quick else tuple(seeds)
    probe = load_dataset(base.dataset, "test", limit=1, **base.data_options)
    shape, classes = probe.input_shape, probe.num_classes
    grid = comparison_grid(base, shape, classes, seeds)
    depths, slopes = ((1, 2), (0.5, 0.1)) if quick else (DEPTHS, SLOPES)
    grid += noisy_grid(base, shape, classes, seeds, depths, slopes)
    records = _run_rows(grid, "reversible", quick, classes)
    rows += [{key: r.get(key) for key in RUN_KEYS if key in r} for r in records]
    rows += training_table(rows) + noisy_table(rows)
    notes = (
        "Memory rows: smallfoot.memory.estimate of one SGD step (fake tensors) with the models' "
        "default widths, which match resnet18's 11.2M parameters within 10% (irevnet18: 10.1M). "
        f"Training and noisy-vs-ideal rows: one `smallfoot train` run per row and seed (the "
        f"command column), {_training_size(rows)}, all test images, batch 64, SGD 0.05 with "
        "cosine decay; a row with the same command as an earlier row takes that run's figures "
        "(the comparison's invertible models are points of the noisy grid); seconds_per_epoch is the "
        "run's wall time (training and evaluation) divided by its epochs, on this machine's "
        "CPU. Training: every reversible model at the width whose parameter count is closest "
        "to resnet18 at --model-opt width; 'hybrid18 stored' is the same model with stored "
        "activations (--activations stored), 'hybrid18 ccb' the hybrid pooling channel, "
        "channel, batch (--pooling ccb). Noisy vs ideal: each invertible model trained with "
        "reconstructed (--activations reconstructed) and stored (ideal) activations from the "
        "same seeds; the width is the one matched at 2 blocks per stage, kept at every depth. "
        "A run stopped by a non-finite loss or gradients counts at chance accuracy (diverged "
        "columns). "
        "The checkpoint row is the baseline checkpointed in sqrt(layers) segments."
    )
    return BenchResult(rows=rows, figures=[figure], notes=notes)


def _training_size(rows: list[dict[str, Any]]) -> str:
    """The run rows' training length and images, read from their commands: e.g. "1 epoch on
    10,000 training images"."""
    runs = [r for r in rows if r.get("command") and r.get("epochs")]
    epochs = "/".join(str(n) for n in sorted({r["epochs"] for r in runs}))
    limits = sorted({
        r["command"].split("--train-limit ")[1].split()[0] if "--train-limit" in r["command"]
        else "all" for r in runs
    })  # fmt: skip
    images = "/".join(f"{int(n):,}" if n.isdigit() else n for n in limits)
    return f"{epochs} epoch{'' if epochs == '1' else 's'} on {images} training images"


RUN_KEYS = ("section", "label", "seed", "variant", "blocks_per_stage", "negative_slope",
            "activations", "model", "parameters", "test_accuracy", "seconds", "epochs",
            "diverged", "error", "same_run_as", "command")  # fmt: skip
"""The fields of a run's record kept as a row (the claims are computed from these)."""


@register_claims("reversible")
def reversible_claims(rows: list[dict[str, Any]], command: str) -> list[Claim]:
    """``reversible.memory_flat_in_depth`` from the memory-by-depth rows;
    ``reversible.hybrid_time``, ``reversible.hybrid_noisy_equals_ideal`` and
    ``reversible.layerwise_degrades_with_depth`` from the run rows."""
    claims = []
    saved: dict[str, dict[int, float]] = {}
    for r in rows:
        if str(r.get("section")).startswith("memory by depth") and r["model"] in REVERSIBLE:
            saved.setdefault(r["model"], {})[r["blocks_per_stage"]] = r["saved_activations_mib"]
    growth = {
        model: 100 * (by_depth[max(by_depth)] / by_depth[min(by_depth)] - 1)
        for model, by_depth in saved.items()
        if len(by_depth) > 1
    }
    if growth:
        depths = sorted({d for by_depth in saved.values() for d in by_depth})
        worst = max(growth, key=growth.get)
        claims.append(Claim(
            "reversible.memory_flat_in_depth",
            f"The reversible models' saved activations do not grow with depth (measured: the "
            f"largest growth, {worst}, from {depths[0]} to {depths[-1]} blocks per stage; our "
            f"meter's estimate at 3x32x32; met within 5%).",
            "sections 3-4: activation memory independent of depth",
            round(growth[worst], 2), "<=", 5.0, seeds=1, command=command, unit="%",
        ))  # fmt: skip
    training = {r["model"]: r for r in training_table(rows)}
    hybrid = training.get("hybrid18")
    if hybrid and hybrid["time_vs_baseline"] is not None:
        claims.append(Claim(
            "reversible.hybrid_time",
            f"The hybrid design trains at most 2.2x slower per epoch than resnet18 at about "
            f"equal parameters ({hybrid['parameters']} against "
            f"{training[BASELINE]['parameters']}; wall time per epoch on this CPU, "
            f"{_training_size(rows)}).",
            "hybrid architecture: recomputing hidden activations costs two extra forward passes",
            hybrid["time_vs_baseline"], "<=", 2.2,
            seeds=len(hybrid["accuracy_by_seed"].split(" / ")), command=command, unit="x",
        ))  # fmt: skip
    noisy = noisy_table(rows)
    seeds = len({r["seed"] for r in rows if r.get("section") == NOISY})
    points = [r for r in noisy if r["variant"] == "hybrid"]
    if points:
        worst = max(points, key=lambda r: abs(r["loss_points"]))
        claims.append(Claim(
            "reversible.hybrid_noisy_equals_ideal",
            f"The hybrid design reaches the same accuracy with reconstructed as with stored "
            f"activations at every depth and slope (largest gap: {worst['blocks_per_stage']} "
            f"blocks per stage, slope {worst['negative_slope']}; same seeds, "
            f"{_training_size(rows)}; met within 0.5 points).",
            "figure 13: the accuracy loss of the layer-wise model is gone in the hybrid",
            abs(worst["loss_points"]), "<=", 0.5, seeds=seeds, command=command, unit="points",
        ))  # fmt: skip
    depth = sorted(
        (r for r in noisy if r["variant"] == "layerwise" and r["negative_slope"] == 0.5),
        key=lambda r: r["blocks_per_stage"],
    )
    if len(depth) > 1:
        shallow, deep = depth[0], depth[-1]
        claims.append(Claim(
            "reversible.layerwise_degrades_with_depth",
            f"The layer-wise design loses more accuracy to reconstructed activations as it "
            f"deepens (loss against stored activations: {shallow['loss_points']} points at "
            f"{shallow['blocks_per_stage']} blocks per stage, {deep['loss_points']} at "
            f"{deep['blocks_per_stage']}, slope 0.5, {_training_size(rows)}; met if it grows "
            f"by 1 point or more).",
            "figure 11: the noisy model's accuracy falls with depth while the ideal one's rises",
            round(deep["loss_points"] - shallow["loss_points"], 2), ">=", 1.0, seeds=seeds,
            command=command, unit="points",
        ))  # fmt: skip
    return claims
