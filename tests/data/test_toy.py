"""The thesis' toy problems: shapes, ranges, labels, determinism, limits."""

import math

import pytest
import torch

from smallfoot.data import list_datasets, load_dataset
from smallfoot.errors import ConfigError


@pytest.mark.parametrize("name", ["sine", "two-spirals", "checkerboard"])
def test_registered_generated_and_repeatable(name):
    assert name in [info.name for info in list_datasets()]
    train = load_dataset(name, "train")
    assert len(train) == 5000 and train.x.dtype == torch.float32
    assert train.x.abs().max() <= 1.0
    again = load_dataset(name, "train")
    assert torch.equal(train.x, again.x) and torch.equal(train.y, again.y)
    test = load_dataset(name, "test")
    assert not torch.equal(train.x, test.x)  # a different draw
    assert len(load_dataset(name, "train", limit=100, seed=3)) == 100


def test_sine_is_two_periods_of_regression_targets():
    ds = load_dataset("sine", "train", size=1000)
    assert ds.num_classes == 0 and ds.y.shape == (1000, 1) and ds.y.is_floating_point()
    torch.testing.assert_close(ds.y, torch.sin(2 * math.pi * ds.x))


def test_two_spirals_classes_are_point_reflections():
    ds = load_dataset("two-spirals", "train", size=400)
    assert ds.num_classes == 2 and ds.y.bincount().tolist() == [200, 200]
    radius = ds.x.norm(dim=1)
    t = radius * 2 * math.pi * 780 / 360  # the spiral parameter of each point
    sign = torch.where(ds.y == 0, 1.0, -1.0)[:, None]
    expected = sign * torch.stack([radius * torch.cos(t), radius * torch.sin(t)], 1)
    torch.testing.assert_close(ds.x, expected, atol=1e-5, rtol=0)


def test_two_spirals_turns_is_an_option():
    ds = load_dataset("two-spirals", "train", size=400, turns=1.0)
    radius = ds.x.norm(dim=1)
    sign = torch.where(ds.y == 0, 1.0, -1.0)[:, None]
    t = radius * 2 * math.pi  # one revolution from the centre to radius 1
    expected = sign * torch.stack([radius * torch.cos(t), radius * torch.sin(t)], 1)
    torch.testing.assert_close(ds.x, expected, atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="turns"):
        load_dataset("two-spirals", "train", turns=0)


def test_checkerboard_labels_are_square_colours():
    ds = load_dataset("checkerboard", "train")
    cells = ((ds.x + 1) * 4).floor().long()
    assert torch.equal(ds.y, (cells[:, 0] + cells[:, 1]) % 2)
    assert 0.45 < ds.y.float().mean() < 0.55
    assert len(torch.unique(cells[:, 0] * 8 + cells[:, 1])) == 64


def test_bad_sizes_raise():
    with pytest.raises(ConfigError, match="size"):
        load_dataset("sine", "train", size=1)
    with pytest.raises(ConfigError, match="squares"):
        load_dataset("checkerboard", "train", squares=0)
