"""Tiny learnable image data and models shared by the layer-wise tests."""

import pytest
import torch

from smallfoot.data import ArrayDataset
from smallfoot.models import build_model


def blobs(n: int, seed: int) -> ArrayDataset:
    """``n`` 1x8x8 images of 3 classes: a bright quadrant (0: top-left, 1: top-right, 2: bottom)."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = 0.5 * torch.randn(n, 1, 8, 8, generator=generator)
    x[y == 0, :, :4, :4] += 1.5
    x[y == 1, :, :4, 4:] += 1.5
    x[y == 2, :, 4:, :] += 1.5
    return ArrayDataset(x, y, 3, "blobs")


@pytest.fixture
def data():
    return blobs(96, 0), blobs(48, 1)


@pytest.fixture
def tiny_cnn():
    def build(batch_norm: bool = True, seed: int = 0):
        torch.manual_seed(seed)
        return build_model("cnn4", (1, 8, 8), 3, widths=(4, 4, 8, 8), batch_norm=batch_norm)

    return build


@pytest.fixture
def tiny_mlp():
    def build(seed: int = 0):
        torch.manual_seed(seed)
        return build_model("mlp", (1, 8, 8), 3, widths=(8, 8, 8))

    return build
