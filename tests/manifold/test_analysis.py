"""t-SNE + LDA analysis of bottleneck activations (figures 4-5)."""

import numpy as np
import pytest
import torch

from smallfoot.data import load_dataset
from smallfoot.errors import ConfigError
from smallfoot.manifold.analysis import (
    embed_layers,
    layer_activations,
    lda_accuracy,
    plot_embeddings,
    plot_lda,
    two_class_subset,
)
from smallfoot.models.bottleneck import attach_head

DATA = {"shape": [1, 8, 8], "num_classes": 3, "size": 60}


def tiny_net():
    torch.manual_seed(0)
    return attach_head("cnn4", (1, 8, 8), 3, bottleneck_width=4, head_width=16, widths=[4] * 4)


def test_two_class_subset_relabels_and_limits():
    data = load_dataset("synthetic", "test", **DATA)
    x, labels = two_class_subset(data, (0, 2), per_class=5)
    assert x.shape[0] == len(labels) <= 10
    assert set(labels.tolist()) <= {0, 1}
    assert (labels == 0).sum() == min(5, int((data.y == 0).sum()))
    with pytest.raises(ConfigError, match="two different classes"):
        two_class_subset(data, (1, 1), 5)
    with pytest.raises(ConfigError, match="not in 0..2"):
        two_class_subset(data, (0, 7), 5)


def test_layer_activations_shapes_and_mode_restored():
    net = tiny_net()
    acts = layer_activations(net, torch.randn(7, 1, 8, 8), batch_size=3)
    assert [a.shape for a in acts] == [(7, 4), (7, 16), (7, 8), (7, 4)]
    assert net.training


def test_lda_accuracy_on_separable_points():
    points = np.array([[0.0, 0.0], [0.1, 0.2], [5.0, 5.0], [5.1, 4.9]])
    assert lda_accuracy(points, np.array([0, 0, 1, 1])) == 1.0


def test_embed_and_plot(tmp_path):
    data = load_dataset("synthetic", "test", **DATA)
    x, labels = two_class_subset(data, (0, 1), per_class=12)
    layers = embed_layers(tiny_net(), x, labels, perplexity=5, max_iter=250)
    assert [e.layer for e in layers] == ["features", "fc1", "fc2", "fc3"]
    assert all(e.points.shape == (len(labels), 2) for e in layers)
    assert all(0.0 <= e.lda_accuracy <= 1.0 for e in layers)
    runs = {"without": layers, "with": layers}
    assert plot_embeddings(runs, ("a", "b"), tmp_path / "tsne.png").stat().st_size > 0
    assert plot_lda(runs, tmp_path / "lda.png").stat().st_size > 0
