"""Representation analysis of a bottleneck net (Sartipi & Bernal, figures 4-5): t-SNE of the
activations at the end of the features and at each bottleneck layer for two classes, and the
accuracy of linear discriminant analysis (LDA) on each 2-D embedding."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from smallfoot._figures import pyplot, save_figure
from smallfoot.data import ArrayDataset
from smallfoot.errors import ConfigError
from smallfoot.models.bottleneck import BottleneckHead, FeatureNet


@dataclass
class LayerEmbedding:
    """The t-SNE embedding of one layer: ``points`` ``(N, 2)``, ``labels`` ``(N,)`` (0 or 1 for the
    two classes), the LDA accuracy (fraction) on those points and the layer's width."""

    layer: str
    width: int
    points: np.ndarray
    labels: np.ndarray
    lda_accuracy: float


def two_class_subset(
    dataset: ArrayDataset, classes: tuple[int, int], per_class: int, seed: int = 0
) -> tuple[torch.Tensor, np.ndarray]:
    """Up to ``per_class`` samples of each of the two ``classes`` (seeded choice): inputs and labels
    relabelled 0 (first class) / 1 (second class)."""
    if len(classes) != 2 or classes[0] == classes[1]:
        raise ConfigError(f"give two different classes, got {classes}")
    for c in classes:
        if not 0 <= c < dataset.num_classes:
            raise ConfigError(f"class {c} is not in 0..{dataset.num_classes - 1}")
    generator = torch.Generator().manual_seed(seed)
    picks = []
    for c in classes:
        index = torch.nonzero(dataset.y == c).flatten()
        if len(index) == 0:
            raise ConfigError(f"class {c} has no sample in {dataset.name}")
        picks.append(index[torch.randperm(len(index), generator=generator)[:per_class]])
    index = torch.cat(picks)
    labels = (dataset.y[index] == classes[1]).long().numpy()
    return dataset.x[index], labels


@torch.no_grad()
def layer_activations(
    model: FeatureNet, x: torch.Tensor, batch_size: int = 256
) -> list[np.ndarray]:
    """Activations ``[z, x^(0), ..., x^(L-1)]`` of ``model`` (eval mode) for inputs ``x``:
    the flat conv features then each bottleneck layer, as ``(N, width)`` arrays."""
    if not (isinstance(model, FeatureNet) and isinstance(model.head, BottleneckHead)):
        raise ConfigError("the analysis needs a FeatureNet with a BottleneckHead")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    chunks = []
    for start in range(0, len(x), batch_size):
        _, acts = model.head.forward_activations(
            model.features(x[start : start + batch_size].to(device))
        )
        chunks.append([a.cpu() for a in acts])
    model.train(was_training)
    return [torch.cat(parts).numpy() for parts in zip(*chunks, strict=True)]


def lda_accuracy(points: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy (fraction) of LDA fitted on ``points`` ``(N, 2)`` and evaluated on the same points,
    as figure 5 measures the separability of an embedding."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    return float(LinearDiscriminantAnalysis().fit(points, labels).score(points, labels))


def embed_layers(
    model: FeatureNet,
    x: torch.Tensor,
    labels: np.ndarray,
    seed: int = 0,
    perplexity: float = 30.0,
    max_iter: int = 1000,
) -> list[LayerEmbedding]:
    """t-SNE (scikit-learn, 2-D, ``max_iter`` >= 250 iterations) of each layer's activations for
    inputs ``x`` with two-class ``labels``, and the LDA accuracy on each embedding.
    Layer names: ``features`` (the conv output), then ``fc1`` .. ``fcL`` (the bottleneck)."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    out = []
    for i, acts in enumerate(layer_activations(model, x)):
        # One OpenMP thread: a few hundred points gain nothing from more, and on a shared
        # machine oversubscribed threads made each fit 20x slower.
        with threadpool_limits(limits=1):
            points = TSNE(
                n_components=2,
                perplexity=min(perplexity, (len(acts) - 1) / 3),
                init="pca",
                random_state=seed,
                max_iter=max_iter,
            ).fit_transform(acts.astype(np.float64))
        name = "features" if i == 0 else f"fc{i}"
        out.append(
            LayerEmbedding(name, acts.shape[1], points, labels, lda_accuracy(points, labels))
        )
    return out


def plot_embeddings(
    runs: dict[str, list[LayerEmbedding]], class_names: tuple[str, str], path: str | Path
) -> Path:
    """Figure 4: one row per run (e.g. without/with the regulariser), one column per layer, the
    two classes in two colours; each panel titled with its LDA accuracy. Writes a PNG."""
    plt = pyplot()

    columns = max(len(layers) for layers in runs.values())
    fig, axes = plt.subplots(
        len(runs), columns, figsize=(2.6 * columns, 2.6 * len(runs)), squeeze=False
    )
    for row, (run, layers) in enumerate(runs.items()):
        for col in range(columns):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col >= len(layers):
                ax.axis("off")
                continue
            emb = layers[col]
            for label, colour in ((0, "tab:blue"), (1, "tab:orange")):
                pts = emb.points[emb.labels == label]
                ax.scatter(pts[:, 0], pts[:, 1], s=4, c=colour, label=class_names[label])
            ax.set_title(
                f"{emb.layer} ({emb.width})\nLDA {100 * emb.lda_accuracy:.1f}%", fontsize=8
            )
            if col == 0:
                ax.set_ylabel(run, fontsize=8)
    axes[0][0].legend(fontsize=6, loc="best")
    path = Path(path)
    save_figure(fig, path, dpi=110)
    return path


def plot_lda(runs: dict[str, list[LayerEmbedding]], path: str | Path) -> Path:
    """Figure 5: LDA accuracy (%) on the 2-D t-SNE embedding per layer, one line per run."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for run, layers in runs.items():
        ax.plot(
            [e.layer for e in layers], [100 * e.lda_accuracy for e in layers], marker="o", label=run
        )
    ax.set_ylabel("LDA accuracy on t-SNE (%)")
    ax.set_xlabel("layer")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = Path(path)
    save_figure(fig, path, dpi=110)
    return path
