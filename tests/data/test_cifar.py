import pickle

import numpy as np
import pytest

from smallfoot.data import load_dataset
from smallfoot.errors import DatasetError


def write_cifar10(root, n=4, corrupt=None):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {
            b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8),
            b"labels": list(rng.integers(0, 10, n)),
        }
        if corrupt == "key" and name == "data_batch_3":
            del batch[b"labels"]
        if corrupt == "shape" and name == "test_batch":
            batch[b"data"] = batch[b"data"][:, :100]
        if corrupt == "count" and name == "data_batch_1":
            batch[b"labels"] = batch[b"labels"][:-1]
        (folder / name).write_bytes(pickle.dumps(batch))
    return folder


def test_cifar10_loads(tmp_path):
    write_cifar10(tmp_path)
    train = load_dataset("cifar10", "train", tmp_path, normalize=False)
    test = load_dataset("cifar10", "test", tmp_path)
    assert train.x.shape == (20, 3, 32, 32) and test.x.shape == (4, 3, 32, 32)
    assert float(train.x.min()) >= 0.0 and float(train.x.max()) <= 1.0
    assert train.num_classes == 10


@pytest.mark.parametrize(
    "corrupt, message",
    [
        ("key", "missing key 'labels'"),
        ("shape", "expected \\(N, 3072\\)"),
        ("count", "4 images but 3 labels"),
    ],
)
def test_cifar10_corrupt(tmp_path, corrupt, message):
    write_cifar10(tmp_path, corrupt=corrupt)
    with pytest.raises(DatasetError, match=message):
        load_dataset("cifar10", "train" if corrupt != "shape" else "test", tmp_path)


def test_cifar_not_a_pickle(tmp_path):
    folder = write_cifar10(tmp_path)
    (folder / "test_batch").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="test_batch: not a readable CIFAR pickle"):
        load_dataset("cifar10", "test", tmp_path)


def test_missing_cifar_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetError, match="cifar-10-python.tar.gz.*--data-root"):
        load_dataset("cifar10", "train", tmp_path)
    with pytest.raises(DatasetError, match="needs --data-root"):
        load_dataset("cifar100", "train")
