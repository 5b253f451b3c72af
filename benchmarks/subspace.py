"""Benchmark ``subspace``: SGD against DLDR + P-SGD / P-BFGS (Li et al., *Low dimensional landscape hypothesis is true: DNNs can be trained in tiny subspaces*).

For ``cnn4`` and ``resnet8`` on a Fashion-MNIST subset, clean and with 20% of the training
labels made wrong: SGD for E epochs; SGD for e < E epochs while sampling the trajectory;
the DLDR basis of those samples (d = 40, and its top 15); then P-SGD for the remaining
E - e epochs and P-BFGS for E/2 - e epochs (the target: SGD's final accuracy with at most
half its epochs), each at d = 15 and 40. Test accuracy per epoch and cumulative training
seconds, the meter's optimizer-state bytes of one step of each optimizer, and the
explained-variance ("PCA ratio") spectrum of the samples.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from smallfoot.bench import BenchResult, Claim, register_benchmark, register_claims
from smallfoot.data import ArrayDataset, BatchLoader, add_label_noise, load_dataset
from smallfoot.losses import SoftmaxCrossEntropy
from smallfoot.models import build_model
from smallfoot.subspace import TrajectorySampler, TrajectoryStore, dldr, parameter_layout
from smallfoot.subspace.method import make_subspace_optimizer, step_memory
from smallfoot.train import RecalibrateBatchNorm, TrainConfig, Trainer, make_optimizer

MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "cnn4": ("cnn4", {"widths": [8, 16, 32, 32]}),
    "resnet8": ("resnet8", {"width": 8}),
}


@dataclass
class Setup:
    """Sizes of one benchmark run."""

    train: int
    test: int
    epochs: int  # E, SGD's epochs
    sample_epochs: int  # e
    samples_per_epoch: int
    batch_size: int = 64
    lr: float = 0.05  # SGD (both stages 1), cosine over its own epochs
    psgd_lr: float = 0.05  # SGD's rate; 0.5 was worse and 2.0 diverged on cnn4 after 2 epochs
    dims: tuple[int, ...] = (15, 40)
    noises: tuple[float, ...] = (0.0, 0.2)
    seed: int = 0


FULL = Setup(train=1500, test=1000, epochs=6, sample_epochs=2, samples_per_epoch=21)
QUICK = Setup(
    train=256, test=256, epochs=4, sample_epochs=1, samples_per_epoch=8, batch_size=32, dims=(3, 7)
)


def train_curve(trainer: Trainer, offset_epochs: int = 0, offset_seconds: float = 0.0) -> list:
    """``trainer.fit()`` as ``[(total epoch, test accuracy %, cumulative training seconds)]``."""
    trainer.fit()
    curve, seconds = [], offset_seconds
    for metrics in trainer.history:
        seconds += metrics["seconds"]
        curve.append(
            (metrics["epoch"] + offset_epochs, round(100 * metrics["test_accuracy"], 2), seconds)
        )
    return curve


def one_model(label: str, noise: float, setup: Setup, train: ArrayDataset, test: ArrayDataset):
    """All runs of one model at one noise level: rows, curves and the explained-variance ratios."""
    name, options = MODELS[label]
    if noise:
        train = add_label_noise(train, noise, setup.seed)
    loss_fn = SoftmaxCrossEntropy()

    def config(epochs: int, schedule: str = "cosine") -> TrainConfig:
        return TrainConfig(
            epochs=epochs,
            batch_size=setup.batch_size,
            lr=setup.lr,
            momentum=0.9,
            weight_decay=5e-4,
            schedule=schedule,
            seed=setup.seed,
        )

    def fresh_model():
        torch.manual_seed(setup.seed)
        return build_model(name, train.input_shape, train.num_classes, **options)

    x, y = next(iter(BatchLoader(train, setup.batch_size, shuffle=False).epoch(0)))
    batch = (x, y)
    rows, curves = [], {}

    # SGD for E epochs
    model = fresh_model()
    sgd = Trainer(model, train, test, config(setup.epochs), loss_fn, progress=False)
    curves["SGD"] = train_curve(sgd)
    sgd_memory = step_memory(model, batch, loss_fn, make_optimizer(model.parameters(), config(1)))
    sgd_final = curves["SGD"][-1][1]
    rows.append(row(label, noise, "SGD", None, curves["SGD"], sgd_memory, sgd_final))

    # SGD for e epochs, sampling; then the basis
    model = fresh_model()
    size = sum(p.numel() for p in model.parameters())
    store = TrajectoryStore(size, setup.samples_per_epoch * setup.sample_epochs)
    sampler = TrajectorySampler(store, per_epoch=setup.samples_per_epoch)
    sampling = Trainer(
        model,
        train,
        test,
        config(setup.sample_epochs),
        loss_fn,
        callbacks=[sampler],
        progress=False,
    )
    sampling_curve = train_curve(sampling)
    start = time.perf_counter()
    basis = dldr(store, max(setup.dims), parameter_layout(model))
    dldr_seconds = time.perf_counter() - start
    sampled_state = {k: v.clone() for k, v in model.state_dict().items()}
    offset = sampling_curve[-1][2] + dldr_seconds

    for optimizer_name, epochs in (
        ("P-SGD", setup.epochs - setup.sample_epochs),
        ("P-BFGS", setup.epochs // 2 - setup.sample_epochs),
    ):
        for dim in setup.dims:
            model.load_state_dict(sampled_state)
            key = "psgd" if optimizer_name == "P-SGD" else "pbfgs"
            optimizer = make_subspace_optimizer(
                model,
                basis.truncate(dim),
                key,
                setup.psgd_lr if key == "psgd" else 1.0,
                momentum=0.9,
                weight_decay=5e-4,
            )
            stage = Trainer(
                model,
                train,
                test,
                config(epochs, "cosine" if key == "psgd" else "constant"),
                loss_fn,
                optimizer=optimizer,
                callbacks=[RecalibrateBatchNorm()],
                progress=False,
            )
            curve = sampling_curve + train_curve(stage, setup.sample_epochs, offset)
            method = f"{optimizer_name} d={dim}"
            curves[method] = curve
            memory = step_memory(model, batch, loss_fn, optimizer)
            rows.append(row(label, noise, method, basis.truncate(dim), curve, memory, sgd_final))
    return rows, curves, basis.explained_variance_ratio.tolist()


def row(label, noise, method, basis, curve, memory, sgd_final) -> dict[str, Any]:
    """One table row: accuracies, epochs to reach SGD's final accuracy, seconds, bytes."""
    from smallfoot.memory import unique_storage_bytes

    reached = next((epoch for epoch, acc, _ in curve if acc >= sgd_final), None)
    basis_bytes = unique_storage_bytes([basis.P]) if basis is not None else 0
    return {
        "section": f"label noise {int(100 * noise)}%",
        "model": label,
        "method": method,
        "epochs": curve[-1][0],
        "test_acc_pct": curve[-1][1],
        "best_acc_pct": max(acc for _, acc, _ in curve),
        "epochs_to_sgd_final": reached,
        "train_seconds": round(curve[-1][2], 1),
        "optimizer_state_bytes": memory["optimizer_state"],
        "state_without_basis_bytes": memory["optimizer_state"] - basis_bytes,
        "basis_bytes": basis_bytes,
        "explained_variance": (
            round(float(basis.explained_variance_ratio[: basis.dim].sum()), 4)
            if basis is not None
            else None
        ),
        "curve": curve,
    }


@register_benchmark(
    "subspace",
    "SGD vs DLDR + P-SGD / P-BFGS at d = 15 and 40 (cnn4, resnet8; Fashion-MNIST, clean and 20% label noise)",
)
def subspace_benchmark(quick: bool, out_dir: Path) -> BenchResult:
    """Run every model x noise level; plot accuracy vs epochs and vs time, and the PCA ratios."""
    setup = QUICK if quick else FULL
    torch.manual_seed(setup.seed)
    train = load_dataset("fashion-mnist", "train", limit=setup.train, seed=setup.seed)
    test = load_dataset("fashion-mnist", "test", limit=setup.test, seed=setup.seed)
    rows, curves, ratios = [], {}, {}
    for noise in setup.noises:
        for label in MODELS:
            model_rows, model_curves, ratio = one_model(label, noise, setup, train, test)
            rows += model_rows
            curves[(label, noise)] = model_curves
            ratios[(label, noise)] = ratio
    figures = [
        plot_curves(curves, 0, "epoch", out_dir / "accuracy_vs_epochs.png"),
        plot_curves(
            curves, 2, "training seconds (shared, loaded machine)", out_dir / "accuracy_vs_time.png"
        ),
        plot_ratios(ratios, out_dir / "pca_ratio.png"),
    ]
    notes = notes_for(rows, setup)
    for r in rows:
        r["curve"] = [[e, a, round(s, 1)] for e, a, s in r["curve"]]
    return BenchResult(rows=rows, figures=figures, notes=notes)


def notes_for(rows: list[dict[str, Any]], setup: Setup) -> str:
    """Setup and the two targets, checked on the rows."""
    lines = [
        f"Fashion-MNIST, {setup.train} training / {setup.test} test images; batch {setup.batch_size}; "
        f"SGD lr {setup.lr} (momentum 0.9, weight decay 5e-4, cosine) for E = {setup.epochs} epochs; "
        f"sampling: SGD for e = {setup.sample_epochs} epochs (its own cosine schedule), "
        f"{setup.samples_per_epoch} samples per epoch; P-SGD lr {setup.psgd_lr} (cosine) for E - e "
        f"epochs; P-BFGS (trial step 1, Armijo) for E/2 - e epochs. Seconds are training time "
        "only, on a shared machine loaded by other jobs: compare them within one run only.",
    ]
    for section in dict.fromkeys(r["section"] for r in rows):
        for model in dict.fromkeys(r["model"] for r in rows):
            group = [r for r in rows if r["section"] == section and r["model"] == model]
            sgd = next(r for r in group if r["method"] == "SGD")
            for r in group:
                if r["method"].startswith("P-BFGS") and section.endswith(" 0%"):
                    met = (
                        r["epochs_to_sgd_final"] is not None
                        and r["epochs_to_sgd_final"] <= setup.epochs // 2
                    )
                    lines.append(
                        f"Target (P-BFGS reaches SGD's final {sgd['test_acc_pct']}% within "
                        f"{setup.epochs // 2} epochs), {model} {r['method']}: "
                        f"{'met' if met else 'NOT met'} (best {r['best_acc_pct']}%)."
                    )
                if r["method"].startswith("P-SGD") and not section.endswith(" 0%"):
                    met = r["test_acc_pct"] >= sgd["test_acc_pct"]
                    lines.append(
                        f"Target (P-SGD >= SGD under {section}), {model} {r['method']}: "
                        f"{'met' if met else 'NOT met'} ({r['test_acc_pct']}% vs {sgd['test_acc_pct']}%)."
                    )
    return "\n".join(lines)


def plot_curves(curves, index: int, xlabel: str, path: Path) -> Path:
    """Test accuracy against epochs (``index`` 0) or training seconds (2), one panel per model x noise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(curves)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.8), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for method, curve in curves[key].items():
            style = "-" if method == "SGD" else ("--" if method.startswith("P-SGD") else ":")
            ax.plot(
                [c[index] for c in curve],
                [c[1] for c in curve],
                style,
                marker="o",
                ms=3,
                label=method,
            )
        ax.set_title(f"{key[0]}, label noise {int(100 * key[1])}%")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_ratios(ratios, path: Path) -> Path:
    """Explained-variance ratio of each principal direction of the sampled trajectory (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for (label, noise), ratio in ratios.items():
        ax.semilogy(
            range(1, len(ratio) + 1), ratio, marker=".", label=f"{label}, noise {int(100 * noise)}%"
        )
    ax.set_xlabel("principal direction")
    ax.set_ylabel("explained variance ratio")
    ax.set_title("PCA ratio of the sampled SGD trajectory")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _by_noise(rows: list[dict[str, Any]]) -> dict[int, dict[str, dict[str, dict[str, Any]]]]:
    """Rows as {label noise %: {model: {method: row}}}."""
    out: dict[int, dict[str, dict[str, dict[str, Any]]]] = {}
    for r in rows:
        match = re.fullmatch(r"label noise (\d+)%", str(r.get("section")))
        if match and "method" in r:
            out.setdefault(int(match[1]), {}).setdefault(r["model"], {})[r["method"]] = r
    return out


def _largest_d(methods: dict[str, dict[str, Any]], prefix: str) -> tuple[int, dict] | None:
    found = [(int(m.split("d=")[1]), r) for m, r in methods.items() if m.startswith(prefix)]
    return max(found, key=lambda item: item[0]) if found else None


@register_claims("subspace")
def subspace_claims(rows: list[dict[str, Any]], command: str) -> list[Claim]:
    """The DLDR talk's claims on the rows: P-BFGS reaches SGD's final accuracy within half of
    SGD's epochs (sampling included), P-SGD >= SGD under label noise, and P-SGD in 15
    dimensions >= SGD. Each takes the worst model; one seed."""
    noise = _by_noise(rows)
    claims = []
    clean = noise.get(0, {})
    gaps, dims = {}, set()
    for model, methods in clean.items():
        pbfgs = _largest_d(methods, "P-BFGS")
        if "SGD" in methods and pbfgs:
            sgd = methods["SGD"]
            half = sgd["epochs"] / 2
            best = max(acc for epoch, acc, _ in pbfgs[1]["curve"] if epoch <= half)
            gaps[model] = round(sgd["test_acc_pct"] - best, 2)
            dims.add(pbfgs[0])
    if gaps:
        epochs = {clean[m]["SGD"]["epochs"] for m in gaps}
        claims.append(Claim(
            "subspace.pbfgs_half_epochs",
            f"P-BFGS in {'/'.join(map(str, sorted(dims)))} dimensions reaches SGD's final test "
            f"accuracy within half of SGD's epochs, sampling epochs included, on "
            f"{', '.join(gaps)} (measured: the worst model's points short of SGD; Fashion-MNIST "
            f"subset, SGD for {'/'.join(map(str, sorted(epochs)))} epochs, not 150+).",
            "P-BFGS table: ResNet20 CIFAR-10 91.72% after 80 sampling + 20 epochs; SGD 91.55% at 150",
            max(gaps.values()), "<=", 0.0, seeds=1, command=command, unit="points",
        ))  # fmt: skip
    diffs = {}
    for model, methods in noise.get(20, {}).items():
        psgd = _largest_d(methods, "P-SGD")
        if "SGD" in methods and psgd:
            diffs[model] = round(psgd[1]["test_acc_pct"] - methods["SGD"]["test_acc_pct"], 2)
    if diffs:
        claims.append(Claim(
            "subspace.psgd_label_noise",
            f"Under 20% wrong training labels P-SGD's final test accuracy is at least SGD's on "
            f"{', '.join(diffs)} (measured: the worst model's P-SGD minus SGD, largest d; "
            f"Fashion-MNIST subset, few epochs).",
            "DLDR figure: P-SGD holds up better than SGD under label noise",
            min(diffs.values()), ">=", 0.0, seeds=1, command=command, unit="points",
        ))  # fmt: skip
    diffs = {}
    for model, methods in clean.items():
        if "SGD" in methods and "P-SGD d=15" in methods:
            diffs[model] = round(methods["P-SGD d=15"]["test_acc_pct"] - methods["SGD"]["test_acc_pct"], 2)  # fmt: skip
    if diffs:
        claims.append(Claim(
            "subspace.psgd_15_dims",
            f"P-SGD in 15 dimensions reaches at least SGD's final test accuracy on "
            f"{', '.join(diffs)} (measured: the worst model's P-SGD minus SGD; Fashion-MNIST "
            f"subset, few epochs, not CIFAR-10).",
            "DLDR table: ResNet8 on CIFAR-10 in 15 dimensions 85.18% vs 83.84% for full SGD",
            min(diffs.values()), ">=", 0.0, seeds=1, command=command, unit="points",
        ))  # fmt: skip
    return claims
