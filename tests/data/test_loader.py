import pytest
import torch

from smallfoot.data import Augment, BatchLoader, add_label_noise, load_dataset
from smallfoot.errors import ConfigError


def dataset():
    return load_dataset("synthetic", "train", shape=(1, 6, 6), num_classes=4, size=50)


def test_epoch_order_depends_on_seed_and_epoch_only():
    loader = BatchLoader(dataset(), 16, seed=1)
    first = [y for _, y in loader.epoch(3)]
    again = [y for _, y in BatchLoader(dataset(), 16, seed=1).epoch(3)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(torch.cat(first), torch.cat([y for _, y in loader.epoch(4)]))
    assert sum(len(y) for y in first) == 50 and len(loader) == 4


def test_batches_are_copies_not_views():
    ds = dataset()
    x, _ = next(iter(BatchLoader(ds, 8, shuffle=False)))
    assert x.untyped_storage().data_ptr() != ds.x.untyped_storage().data_ptr()
    assert x.untyped_storage().nbytes() == x.numel() * 4


def test_augment_crop_keeps_shape_and_pixels():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    out = Augment(crop_padding=1, flip=True)(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    values = set(x.flatten().tolist()) | {0.0}
    assert set(out.flatten().tolist()) <= values


def test_augment_rejects_tabular():
    with pytest.raises(ConfigError, match="image batches"):
        Augment(crop_padding=2)(torch.zeros(3, 5), torch.Generator())


def test_label_noise_changes_exact_fraction():
    ds = dataset()
    noisy = add_label_noise(ds, 0.2, seed=0)
    assert int((noisy.y != ds.y).sum()) == 10
    assert torch.equal(ds.y, dataset().y)  # original untouched
    with pytest.raises(ConfigError):
        add_label_noise(ds, 1.5)


def test_batch_size_must_be_positive():
    with pytest.raises(ConfigError, match="batch size"):
        BatchLoader(dataset(), 0)
