"""Benchmark ``manifold``: bottleneck heads with and without the distance-preserving regulariser
at mini-batches of 5, 7 and 9 (Sartipi & Bernal, tables 1-3 and 5, figures 3-5).

Every training run goes through the method registry as ``smallfoot train`` runs it, and each
row keeps its command: ``--method manifold`` on ``cnn4`` features (16-32-64-64 channels),
the bottleneck cascade 256 -> ... -> W for W in {8, 16, 32} at batch 5, 7 and 9, with the
regulariser (the method's defaults) and without (``--regularize false``), 3 seeds; and the
vanilla wide head (``--model cnn4_wide``, two 1024-wide layers with dropout) at the same
batches and rate. The method's rate is ``--lr`` scaled to the batch (``lr * batch / 128``),
the wide rows get that rate explicitly. Then, below the run level, the memory profile by
phase of the wide and bottleneck nets (figure 3) and the t-SNE/LDA analysis of the trained
W=16, batch-5 nets of the first seed (figures 4-5). With ``SMALLFOOT_CIFAR10_ROOT`` set to a
CIFAR-10 directory, the same grid also runs on CIFAR-10 with VGG-16 features (quarter width).
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from smallfoot.bench import BenchResult, Claim, register_benchmark, register_claims
from smallfoot.bench.grid import GridRow, run_grid
from smallfoot.config import RunConfig
from smallfoot.data import ArrayDataset, load_dataset
from smallfoot.manifold.analysis import embed_layers, plot_embeddings, plot_lda, two_class_subset
from smallfoot.manifold.method import make_regulariser
from smallfoot.manifold.profile import plot_profiles, profile_phases
from smallfoot.models.bottleneck import attach_head

HEAD_WIDTH = 256
WIDE_HIDDEN = 1024
LR, REFERENCE_BATCH = 0.05, 128
"""The run's ``--lr`` and the batch it is meant for (the method's defaults): batch b trains at
``LR * b / REFERENCE_BATCH``."""

SETUPS: dict[str, dict[str, Any]] = {
    "fashion-mnist": {
        "dataset": "fashion-mnist",
        "base": "cnn4",
        "base_options": {"widths": [16, 32, 64, 64]},
        "classes": (0, 6),  # T-shirt/top vs shirt: the pair most often confused
        "class_names": ("T-shirt/top", "shirt"),
    },
    "cifar10": {
        "dataset": "cifar10",
        "base": "vgg16",
        "base_options": {"width": 0.25},
        "classes": (3, 5),  # cat vs dog, as figure 4
        "class_names": ("cat", "dog"),
    },
}


@dataclass(frozen=True)
class Setup:
    """Sizes of one benchmark run (``train``/``test``: image limits, None for the full sets)."""

    train: int | None
    test: int | None
    epochs: int
    seeds: tuple[int, ...]
    widths: tuple[int, ...] = (8, 16, 32)
    batches: tuple[int, ...] = (5, 7, 9)


# sized from a timing on the loaded machine (about 40 ms a step): 63 runs (21 cells x 3 seeds)
# at batches of 5-9; idle, a 5,000-image run takes 4-10 s: the whole training set, 1-2 hours
FULL = Setup(train=5000, test=None, epochs=1, seeds=(0, 1, 2))
QUICK = Setup(train=200, test=200, epochs=1, seeds=(0,))


def cell_config(
    name: str, setup: Setup, batch: int, width: int | None, regularise: bool, root: str | None
) -> RunConfig:
    """One run: the bottleneck net (narrowest ``width``) with or without the regulariser, or
    the wide head (``width`` None) at the bottleneck's batch-scaled rate."""
    spec = SETUPS[name]
    common = dict(
        dataset=spec["dataset"],
        data_root=root,
        epochs=setup.epochs,
        batch_size=batch,
        train_limit=setup.train,
        test_limit=setup.test,
    )
    if width is None:
        return RunConfig(
            **common,
            model=f"{spec['base']}_wide",
            model_options={**spec["base_options"], "hidden": WIDE_HIDDEN},
            lr=round(LR * batch / REFERENCE_BATCH, 10),
        )
    return RunConfig(
        **common,
        model=spec["base"],
        model_options=dict(spec["base_options"]),
        method="manifold",
        method_options={
            "bottleneck_width": width,
            "head_width": HEAD_WIDTH,
            "regularize": regularise,
        },
        lr=LR,
    )


def head_name(width: int | None, regularise: bool) -> str:
    """The ``head`` column of a row."""
    if width is None:
        return "wide (vanilla)"
    return "bottleneck + regulariser" if regularise else "bottleneck"


def grid(name: str, setup: Setup, root: str | None = None) -> list[GridRow]:
    """Per batch: the wide head, then each W without and with the regulariser."""
    rows = []
    for batch in setup.batches:
        cells = [(None, False)] + [(w, reg) for w in setup.widths for reg in (False, True)]
        for width, regularise in cells:
            head = head_name(width, regularise)
            rows.append(
                GridRow(
                    f"{name} {head} W{width or '-'} batch {batch}",
                    cell_config(name, setup, batch, width, regularise, root),
                    setup.seeds,
                    {"section": name, "head": head, "W": width or "-", "batch": batch}
                    | (
                        {}
                        if width
                        else {"lr": cell_config(name, setup, batch, None, False, root).lr}
                    ),
                )
            )
    return rows


def row(record: dict[str, Any]) -> dict[str, Any]:
    """One table row of a grid record: accuracies (%), gap, rate, memory, seconds, command."""
    memory = record.get("memory") or {}
    test, train = 100 * record["test_accuracy"], 100 * record["train_accuracy"]
    return {
        "section": record["section"],
        "head": record["head"],
        "W": record["W"],
        "batch": record["batch"],
        "seed": record["seed"],
        "epochs": record["epochs"],
        "test acc %": round(test, 2),
        "train acc %": round(train, 2),
        "gap %": round(train - test, 2),
        "lr used": record.get("lr_used", record.get("lr")),
        "param bytes": memory.get("parameters"),
        "peak bytes": memory.get("peak"),
        "seconds": round(record["seconds"], 1),
        "command": record["command"],
    }


def cell_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (dataset, W, batch): median test accuracy over seeds without and with the
    regulariser, and the gain (with - without)."""
    medians = _cell_medians(rows)
    out = []
    for (section, width, batch), heads in medians.items():
        if {"bottleneck", "bottleneck + regulariser"} <= heads.keys():
            plain, regularised = heads["bottleneck"], heads["bottleneck + regulariser"]
            out.append({
                "section": f"{section}: medians over seeds",
                "W": width, "batch": batch,
                "without regulariser %": plain, "with regulariser %": regularised,
                "gain (points)": round(regularised - plain, 2),
                "wide head %": medians.get((section, "-", batch), {}).get("wide (vanilla)"),
            })  # fmt: skip
    return out


def _cell_medians(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, float]]:
    values: dict[tuple, dict[str, list[float]]] = {}
    for r in rows:
        if "seed" in r and isinstance(r.get("test acc %"), (int, float)):
            cell = (r["section"], r["W"], r["batch"])
            values.setdefault(cell, {}).setdefault(r["head"], []).append(r["test acc %"])
    return {
        cell: {head: round(statistics.median(v), 2) for head, v in heads.items()}
        for cell, heads in values.items()
    }


@register_benchmark(
    "manifold",
    "bottleneck heads +/- distance-preserving regulariser, W 8/16/32 x batch 5/7/9, vs the wide head",
)
def bench_manifold(quick: bool, out_dir: Path) -> BenchResult:
    """Tables 1-3/5 and figures 3-5 of the manifold paper on Fashion-MNIST (CIFAR-10 when
    ``SMALLFOOT_CIFAR10_ROOT`` is set)."""
    setup = QUICK if quick else FULL
    cifar_root = os.environ.get("SMALLFOOT_CIFAR10_ROOT")
    names = ["fashion-mnist"] + (["cifar10"] if cifar_root else [])
    rows: list[dict[str, Any]] = []
    figures: list[Path] = []
    for name in names:
        root = cifar_root if name == "cifar10" else None
        records = run_grid(
            grid(name, setup, root),
            "manifold",
            quick=quick,
            on_run=lambda r: print(
                f"manifold: {r['label']} seed {r['seed']}: {100 * r['test_accuracy']:.2f}%",
                flush=True,
            ),
        )
        run_rows = [row(r) for r in records]
        rows += cell_rows(run_rows) + run_rows
        spec = SETUPS[name]
        train = load_dataset(spec["dataset"], "train", root=root, limit=64)
        test = load_dataset(spec["dataset"], "test", root=root, limit=setup.test)
        kept = {
            ("with regulariser" if r["head"].endswith("regulariser") else "without regulariser"): r
            for r in records
            if r["W"] == 16 and r["batch"] == 5 and r["seed"] == setup.seeds[0]
        }
        profile_rows, profile_plot = profile_figure(name, train, out_dir)
        lda_rows, lda_plots = analysis_figures(name, test, kept, out_dir, quick)
        rows += profile_rows + lda_rows
        figures += [profile_plot, *lda_plots]
    data = (
        f"Fashion-MNIST, {'all 60,000' if setup.train is None else f'a seeded {setup.train:,}'} "
        f"training / {'all 10,000' if setup.test is None else f'{setup.test:,}'} test images"
    )
    notes = (
        f"{'QUICK run: ' if quick else ''}{data}; seeds {list(setup.seeds)}; {setup.epochs} "
        f"epochs, SGD --lr {LR} scaled to the batch (x batch / {REFERENCE_BATCH}: 0.00195 at "
        "batch 5), momentum 0.9, weight decay 5e-4, cosine. Features: cnn4 16-32-64-64. "
        f"Bottleneck K={HEAD_WIDTH} halving to W; the regulariser at the method's defaults "
        "(alpha 0.001 second half, 0.0001 first half, lambda 1e-4, per-pair mean). Wide head: "
        f"two {WIDE_HIDDEN}-wide layers, dropout 0.5, same rate. train acc = mean over the "
        "last epoch in training mode; gap = train acc - test acc. Memory from the run's "
        "summary (smallfoot.memory, one step at the row's batch, regulariser included). "
        "Each row's command repeats it."
        + ("" if cifar_root else " CIFAR-10 skipped: set SMALLFOOT_CIFAR10_ROOT to run it.")
    )
    return BenchResult(rows=rows, figures=figures, notes=notes)


def profile_figure(
    name: str, train: ArrayDataset, out_dir: Path
) -> tuple[list[dict[str, Any]], Path]:
    """Figure 3: the step's memory by phase, wide vs bottleneck (W=16, regularised), batch 16
    and 7, freshly initialised; one row per net with each phase's peak and the model bytes."""
    spec = SETUPS[name]
    profiles = {}
    for batch in (16, 7):
        x, y = train.x[:batch].clone(), train.y[:batch].clone()
        for head in ("wide", "bottleneck"):
            torch.manual_seed(0)
            options = {"hidden": WIDE_HIDDEN} if head == "wide" else {"head_width": HEAD_WIDTH}
            model = attach_head(
                spec["base"], train.input_shape, train.num_classes, head=head,
                bottleneck_width=16, **options, **spec["base_options"],
            )  # fmt: skip
            regulariser = None
            if head == "bottleneck":
                regulariser = make_regulariser(model.head, None, 1e-3, 0.1, 1e-4)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            label = "vanilla (wide)" if head == "wide" else "bottleneck W=16 + reg"
            profiles[f"{label}, batch {batch}"] = profile_phases(
                model, (x, y), regulariser, optimizer
            )
    rows = [
        {
            "section": f"{name} memory by phase",
            "net": label,
            "model bytes": p.model_bytes,
            **{f"{phase} peak": peak for phase, peak in p.peaks.items()},
            "peak bytes": p.report["peak"],
        }
        for label, p in profiles.items()
    ]
    return rows, plot_profiles(profiles, out_dir / f"{name}-profile.png")


def trained_net(record: dict[str, Any], dataset: ArrayDataset) -> torch.nn.Module:
    """The bottleneck net of a grid record, with the weights its run ended with."""
    spec = SETUPS[record["section"]]
    net = attach_head(
        spec["base"], dataset.input_shape, dataset.num_classes, head="bottleneck",
        bottleneck_width=record["W"], head_width=HEAD_WIDTH, **spec["base_options"],
    )  # fmt: skip
    state = torch.load(Path(record["run_dir"]) / "checkpoint.pt", weights_only=False)
    net.load_state_dict(state["model"])
    return net


def analysis_figures(
    name: str,
    test: ArrayDataset,
    records: dict[str, dict[str, Any]],
    out_dir: Path,
    quick: bool,
) -> tuple[list[dict[str, Any]], list[Path]]:
    """Figures 4-5: t-SNE per layer of two classes of the test set and LDA accuracy per layer,
    for the trained W=16, batch-5 nets with and without the regulariser (first seed)."""
    spec = SETUPS[name]
    x, labels = two_class_subset(test, spec["classes"], per_class=60 if quick else 150)
    runs = {
        run: embed_layers(trained_net(record, test), x, labels)
        for run, record in sorted(records.items())
    }
    rows = [
        {
            "section": f"{name} LDA on t-SNE (W=16, batch 5, test set)",
            "run": run,
            **{f"{e.layer} ({e.width})": round(100 * e.lda_accuracy, 1) for e in layers},
        }
        for run, layers in runs.items()
    ]
    figures = [
        plot_embeddings(runs, spec["class_names"], out_dir / f"{name}-tsne.png"),
        plot_lda(runs, out_dir / f"{name}-lda.png"),
    ]
    return rows, figures


def _images(rows: list[dict[str, Any]]) -> str:
    """The training images of the runs, from their commands (``--train-limit``; all 60,000
    without it)."""
    limits = {
        r["command"].split("--train-limit ")[1].split()[0]
        if "--train-limit" in r["command"]
        else "60,000"
        for r in rows
        if "command" in r
    }
    return "/".join(f"{int(n):,}" if n.isdigit() else n for n in sorted(limits))


@register_claims("manifold")
def manifold_claims(rows: list[dict[str, Any]], command: str) -> list[Claim]:
    """``manifold.every_cell``: the regulariser's gain in median test accuracy over the same
    bottleneck without it, in every (dataset, W, batch) cell of the run rows; measured is the
    smallest gain."""
    gains = {}
    for cell, heads in _cell_medians(rows).items():
        if {"bottleneck", "bottleneck + regulariser"} <= heads.keys():
            gains[cell] = round(heads["bottleneck + regulariser"] - heads["bottleneck"], 2)
    if not gains:
        return []
    worst = min(gains, key=gains.get)
    improved = sum(gain > 0 for gain in gains.values())
    seeds = len({r["seed"] for r in rows if "seed" in r})
    epochs = sorted({r["epochs"] for r in rows if "epochs" in r})
    return [Claim(
        "manifold.every_cell",
        f"The manifold regulariser raises the bottleneck's median test accuracy in every cell "
        f"of the W x batch grid ({improved} of {len(gains)} cells here; worst {worst[0]} "
        f"W={worst[1]} batch {worst[2]}; Fashion-MNIST with cnn4 features, not CIFAR-10 with "
        f"VGG16; {'/'.join(map(str, epochs))} epoch{'' if epochs == [1] else 's'}, not 200; "
        f"{_images(rows)} training images).",
        "tables 1 and 4: the regulariser raises test accuracy at every batch size and W (CIFAR)",
        gains[worst], ">", 0.0, seeds=seeds, command=command, unit="points",
    )]  # fmt: skip
