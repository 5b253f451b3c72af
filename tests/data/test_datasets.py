from pathlib import Path

import numpy as np
import pytest
import torch

from smallfoot.data import load_dataset
from smallfoot.data.idx import write_idx
from smallfoot.errors import ConfigError, DatasetError, UnknownNameError


def fake_mnist(root: Path, n_train=30, n_test=10):
    rng = np.random.default_rng(1)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(
            root / f"{prefix}-images-idx3-ubyte.gz",
            rng.integers(0, 255, (n, 28, 28), dtype=np.uint8),
        )
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n).astype(np.uint8))


def test_mnist_from_root_normalised_with_train_statistics(tmp_path):
    fake_mnist(tmp_path)
    train = load_dataset("mnist", "train", tmp_path)
    test = load_dataset("mnist", "test", tmp_path)
    assert train.x.shape == (30, 1, 28, 28) and test.x.shape == (10, 1, 28, 28)
    assert abs(float(train.x.mean())) < 1e-5 and abs(float(train.x.std()) - 1) < 1e-2
    assert train.y.dtype == torch.int64


def test_pad_and_limit(tmp_path):
    fake_mnist(tmp_path)
    padded = load_dataset("mnist", "train", tmp_path, pad_to=32, normalize=False, limit=7, seed=3)
    assert padded.x.shape == (7, 1, 32, 32)
    assert float(padded.x[:, :, :2].abs().sum()) == 0.0  # zero border
    again = load_dataset("mnist", "train", tmp_path, pad_to=32, normalize=False, limit=7, seed=3)
    assert torch.equal(padded.y, again.y)
    with pytest.raises(ConfigError, match="pad_to=20 is smaller"):
        load_dataset("mnist", "train", tmp_path, pad_to=20)


def test_mnist_missing_files_explain(tmp_path):
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte"):
        load_dataset("mnist", "train", tmp_path)
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", "train", tmp_path)


def test_digits_split_is_fixed_and_disjoint():
    train, test = (
        load_dataset("digits", "train", normalize=False),
        load_dataset("digits", "test", normalize=False),
    )
    assert len(train) + len(test) == 1797 and train.input_shape == (1, 8, 8)
    assert float(train.x.max()) == 1.0
    rows = {tuple(r.flatten().tolist()) for r in train.x[:50]}
    assert torch.equal(load_dataset("digits", "train", normalize=False).y, train.y)
    assert len(rows) > 40


def test_synthetic_any_shape_seeded():
    a = load_dataset("synthetic", "train", shape=(2, 5, 5), num_classes=3, size=40, seed=4)
    b = load_dataset("synthetic", "train", shape=(2, 5, 5), num_classes=3, size=40, seed=4)
    assert a.x.shape == (40, 2, 5, 5) and int(a.y.max()) <= 2
    assert torch.equal(a.x, b.x)
    tabular = load_dataset("synthetic", "test", shape=(7,), num_classes=2, size=9)
    assert tabular.x.shape == (9, 7)


def test_unknown_dataset_and_split():
    with pytest.raises(UnknownNameError, match="fashion-mnist"):
        load_dataset("imagenet")
    with pytest.raises(ConfigError, match="no split 'valid'"):
        load_dataset("digits", "valid")


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").exists(),
    reason="Debian dataset-fashion-mnist not installed",
)
def test_fashion_mnist_from_debian_package():
    test = load_dataset("fashion-mnist", "test", limit=100)
    assert test.x.shape == (100, 1, 28, 28) and test.classes[0] == "T-shirt/top"
