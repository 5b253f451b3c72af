"""Benchmark ``manifold``: bottleneck heads with and without the distance-preserving regulariser
at mini-batches of 5, 7 and 9 (Sartipi & Bernal, tables 1-3 and 5, figures 3-5).

Fashion-MNIST subset, ``cnn4`` features (16-32-64-64 channels). Heads: the bottleneck cascade
256 -> ... -> W for W in {8, 16, 32}, trained with cross-entropy alone or with the regulariser,
and the vanilla wide head (two 1024-wide layers with dropout, the VGG classifier at 1/4 width).
Every run: same seed, same data order, SGD lr 0.01 (the paper's rate), momentum 0.9, cosine.
Rows: test accuracy, generalisation gap (train accuracy - test accuracy, both measured after
training in eval mode), the meter's parameter bytes, model bytes (parameters + buffers) and
peak bytes of one training step (regulariser included). Then the memory profile by phase of
the wide and bottleneck nets at batch 7 (figure 3), and the t-SNE/LDA analysis of the W=16,
batch-5 nets with and without the regulariser (figures 4-5). With ``SMALLFOOT_CIFAR10_ROOT``
set to a CIFAR-10 directory, the same grid also runs on CIFAR-10 with VGG-16 features.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from smallfoot.bench import BenchResult, Claim, register_benchmark, register_claims
from smallfoot.data import ArrayDataset, load_dataset
from smallfoot.errors import TrainingError
from smallfoot.manifold.analysis import embed_layers, plot_embeddings, plot_lda, two_class_subset
from smallfoot.manifold.method import ManifoldTrainer, make_regulariser
from smallfoot.manifold.profile import plot_profiles, profile_phases
from smallfoot.models.bottleneck import attach_head
from smallfoot.train import TrainConfig, Trainer

HEAD_WIDTH = 256
WIDE_HIDDEN = 1024
ALPHA, ALPHA_RATIO, LAMBDA = 1e-2, 0.1, 1e-4
"""The regulariser's weights (the paper gives none): alpha for the second half of the bottleneck,
alpha * ALPHA_RATIO for the first half, lambda on the squared parameter norm. Picked on a
validation split (training images 2000-2999, W=16, batch 5): alpha=0.1 diverged (NaN loss at
step 12), alpha=0.01 trained."""

SETUPS: dict[str, dict[str, Any]] = {
    "fashion-mnist": {
        "dataset": "fashion-mnist",
        "base": "cnn4",
        "base_options": {"widths": [16, 32, 64, 64]},
        "data_options": {},
        "classes": (0, 6),  # T-shirt/top vs shirt: the pair most often confused
        "class_names": ("T-shirt/top", "shirt"),
    },
    "cifar10": {
        "dataset": "cifar10",
        "base": "vgg16_bn",
        "base_options": {"width": 0.25},
        "data_options": {},
        "classes": (3, 5),  # cat vs dog, as figure 4
        "class_names": ("cat", "dog"),
    },
}


def build(setup: dict[str, Any], input_shape, num_classes: int, head: str, width: int | None):
    """The net of one cell: ``setup``'s features with a bottleneck (narrowest ``width``) or wide head."""
    torch.manual_seed(0)
    if head == "wide":
        return attach_head(
            setup["base"],
            input_shape,
            num_classes,
            head="wide",
            hidden=WIDE_HIDDEN,
            **setup["base_options"],
        )
    return attach_head(
        setup["base"],
        input_shape,
        num_classes,
        head="bottleneck",
        bottleneck_width=width,
        head_width=HEAD_WIDTH,
        **setup["base_options"],
    )


def accuracy(trainer: Trainer, dataset: ArrayDataset) -> float:
    """Eval-mode accuracy (fraction) of the trainer's model on ``dataset``."""
    return trainer.evaluate(dataset)["accuracy"]


def label(head: str, width: int | None, batch_size: int, regularised: bool) -> dict[str, Any]:
    """The identifying columns of a row."""
    name = "bottleneck + regulariser" if regularised else "bottleneck"
    return {
        "head": "wide (vanilla)" if head == "wide" else name,
        "W": width if width is not None else "-",
        "batch": batch_size,
    }


def run_cell(
    setup: dict[str, Any],
    train: ArrayDataset,
    test: ArrayDataset,
    head: str,
    width: int | None,
    batch_size: int,
    regularised: bool,
    epochs: int,
    alpha: float = ALPHA,
) -> tuple[dict[str, Any], torch.nn.Module]:
    """Train one cell (regulariser weight ``alpha``); returns its row and the trained model."""
    model = build(setup, train.input_shape, train.num_classes, head, width)
    config = TrainConfig(
        epochs=epochs, batch_size=batch_size, lr=0.01, momentum=0.9, weight_decay=5e-4, seed=0
    )
    regulariser = (
        make_regulariser(model.head, None, alpha, ALPHA_RATIO, LAMBDA) if regularised else None
    )
    if head == "wide":
        trainer = Trainer(model, train, None, config, progress=False)
    else:
        trainer = ManifoldTrainer(
            model, train, None, config, progress=False, regulariser=regulariser
        )
    start = time.perf_counter()
    try:
        trainer.fit()
    except TrainingError as exc:
        # a diverged cell is a result too: keep it in the table instead of stopping the grid
        print(f"manifold: {head} W={width} batch={batch_size} reg={regularised}: {exc}")
        return {**label(head, width, batch_size, regularised), "test acc %": "diverged"}, model
    seconds = time.perf_counter() - start
    train_acc, test_acc = accuracy(trainer, train), accuracy(trainer, test)
    x = train.x[:batch_size].clone()
    y = train.y[:batch_size].clone()
    profile = profile_phases(model, (x, y), regulariser, trainer.optimizer)
    report = profile.report
    row = {
        **label(head, width, batch_size, regularised),
        "test acc %": round(100 * test_acc, 2),
        "gap %": round(100 * (train_acc - test_acc), 2),
        "train acc %": round(100 * train_acc, 2),
        "param bytes": report["parameters"],
        "model bytes": profile.model_bytes,
        "peak bytes": report["peak"],
        "peak phase": max(profile.peaks, key=profile.peaks.get),
        "seconds": round(seconds, 1),
    }
    return row, model


@register_benchmark(
    "manifold",
    "bottleneck heads +/- distance-preserving regulariser at batch 5/7/9 vs the wide head",
)
def bench_manifold(quick: bool, out_dir: Path) -> BenchResult:
    """Tables 1-3/5 and figures 3-5 of the manifold paper on Fashion-MNIST (CIFAR-10 when
    ``SMALLFOOT_CIFAR10_ROOT`` is set)."""
    torch.set_num_threads(1)
    widths = (8, 16, 32)
    batches = (5, 7, 9)
    train_limit, test_limit, epochs = (400, 400, 1) if quick else (2000, 2000, 2)
    setups = ["fashion-mnist"]
    cifar_root = os.environ.get("SMALLFOOT_CIFAR10_ROOT")
    if cifar_root:
        setups.append("cifar10")
    rows: list[dict[str, Any]] = []
    figures: list[Path] = []
    for name in setups:
        setup = SETUPS[name]
        root = cifar_root if name == "cifar10" else None
        train = load_dataset(
            setup["dataset"], "train", root=root, limit=train_limit, **setup["data_options"]
        )
        test = load_dataset(
            setup["dataset"], "test", root=root, limit=test_limit, **setup["data_options"]
        )
        kept: dict[str, torch.nn.Module] = {}
        for batch in batches:
            cells = [("wide", None, False)] + [
                ("bottleneck", w, reg) for w in widths for reg in (False, True)
            ]
            for head, width, reg in cells:
                row, model = run_cell(setup, train, test, head, width, batch, reg, epochs)
                rows.append({"section": name, **row})
                print(f"manifold {name}: {row}", flush=True)
                if head == "bottleneck" and width == 16 and batch == 5:
                    kept["with regulariser" if reg else "without regulariser"] = model
        # Ablation: eq. 4 sums over the N(N-1) ordered pairs, so a fixed alpha regularises a
        # batch of 9 (72 pairs) 3.6x harder than a batch of 5 (20 pairs). Rescale alpha to
        # keep the batch-5 strength at batch 9.
        scaled = ALPHA * (5 * 4) / (9 * 8)
        for width in widths:
            row, _ = run_cell(setup, train, test, "bottleneck", width, 9, True, epochs, scaled)
            row = {"section": f"{name} ablation: alpha x 20/72 at batch 9", "alpha": scaled, **row}
            rows.append(row)
            print(f"manifold {name}: {row}", flush=True)
        for extra_rows, figure in (
            profile_figure(name, setup, train, out_dir),
            analysis_figures(name, setup, test, kept, out_dir, quick),
        ):
            rows += extra_rows
            figures += figure
    notes = (
        f"{'QUICK run: ' if quick else ''}Fashion-MNIST, first {train_limit} training and "
        f"{test_limit} test images after the loader's seeded shuffle; {epochs} epochs, SGD lr "
        f"0.01, momentum 0.9, weight decay 5e-4, cosine schedule, seed 0. Features: cnn4 "
        f"16-32-64-64. Bottleneck K={HEAD_WIDTH} halving to W; regulariser alpha={ALPHA} (second "
        f"half), {ALPHA * ALPHA_RATIO:g} (first half), lambda={LAMBDA}. Wide head: two "
        f"{WIDE_HIDDEN}-wide layers, dropout 0.5. gap = train acc - test acc (eval mode, after "
        "training). Memory from smallfoot.memory.measure of one SGD step at the row's batch "
        "size (regulariser included); model bytes = parameters + buffers. Timings on a shared, "
        "loaded 2-core CPU machine."
        + ("" if cifar_root else " CIFAR-10 skipped: set SMALLFOOT_CIFAR10_ROOT to run it.")
    )
    return BenchResult(rows=rows, figures=figures, notes=notes)


def profile_figure(
    name: str, setup: dict[str, Any], train: ArrayDataset, out_dir: Path
) -> tuple[list[dict[str, Any]], list[Path]]:
    """Figure 3: the step's memory by phase, wide vs bottleneck (W=16, regularised), batch 16
    and 7; one row per net with the peak bytes of each phase and the model bytes (table 5)."""
    profiles = {}
    for batch in (16, 7):
        x, y = train.x[:batch].clone(), train.y[:batch].clone()
        for head in ("wide", "bottleneck"):
            model = build(setup, train.input_shape, train.num_classes, head, 16)
            reg = (
                make_regulariser(model.head, None, ALPHA, ALPHA_RATIO, LAMBDA)
                if head == "bottleneck"
                else None
            )
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            label = "vanilla (wide)" if head == "wide" else "bottleneck W=16 + reg"
            profiles[f"{label}, batch {batch}"] = profile_phases(model, (x, y), reg, optimizer)
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
    return rows, [plot_profiles(profiles, out_dir / f"{name}-profile.png")]


def analysis_figures(
    name: str,
    setup: dict[str, Any],
    test: ArrayDataset,
    models: dict[str, torch.nn.Module],
    out_dir: Path,
    quick: bool,
) -> tuple[list[dict[str, Any]], list[Path]]:
    """Figures 4-5: t-SNE per layer of two classes of the test set and LDA accuracy per layer."""
    x, labels = two_class_subset(test, setup["classes"], per_class=60 if quick else 150)
    runs = {run: embed_layers(model, x, labels) for run, model in sorted(models.items())}
    rows = [
        {
            "section": f"{name} LDA on t-SNE (W=16, batch 5, test set)",
            "run": run,
            **{f"{e.layer} ({e.width})": round(100 * e.lda_accuracy, 1) for e in layers},
        }
        for run, layers in runs.items()
    ]
    figures = [
        plot_embeddings(runs, setup["class_names"], out_dir / f"{name}-tsne.png"),
        plot_lda(runs, out_dir / f"{name}-lda.png"),
    ]
    return rows, figures


@register_claims("manifold")
def manifold_claims(rows: list[dict[str, Any]], command: str) -> list[Claim]:
    """``manifold.every_cell``: the regulariser's test-accuracy gain over the same bottleneck
    without it, in every (dataset, W, batch) cell the rows hold; measured is the smallest."""
    plain, regularised = {}, {}
    for r in rows:
        cell = (r.get("section"), r.get("W"), r.get("batch"))
        if r.get("head") == "bottleneck":
            plain[cell] = r["test acc %"]
        elif r.get("head") == "bottleneck + regulariser" and "alpha" not in r:
            regularised[cell] = r["test acc %"]
    gains = {
        cell: round(regularised[cell] - plain[cell], 2) for cell in plain if cell in regularised
    }
    if not gains:
        return []
    worst = min(gains, key=gains.get)
    improved = sum(gain > 0 for gain in gains.values())
    return [Claim(
        "manifold.every_cell",
        f"The manifold regulariser raises the bottleneck's test accuracy in every cell of the "
        f"W x batch grid ({improved} of {len(gains)} cells here; worst {worst[0]} W={worst[1]} "
        f"batch {worst[2]}; dataset subset, few epochs, one seed).",
        "tables 1 and 4: the regulariser raises test accuracy at every batch size and W (CIFAR)",
        gains[worst], ">", 0.0, seeds=1, command=command, unit="points",
    )]  # fmt: skip
