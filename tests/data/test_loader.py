import pytest
import torch

from smallfoot.data import (
    ArrayDataset,
    Augment,
    BatchLoader,
    LazyInputs,
    add_label_noise,
    load_dataset,
)
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


class NoisyInputs(LazyInputs):
    """A tensor read lazily, with a random transform drawn from torch's RNG per item (as a
    user's dataset might draw one in ``__getitem__``)."""

    def __init__(self, x):
        self.x, self.item_shape = x, tuple(x.shape[1:])

    def __len__(self):
        return len(self.x)

    def read(self, indices):
        return torch.stack([self.x[i] + torch.rand(()) for i in indices])


def lazy_dataset():
    data = dataset()
    return ArrayDataset(NoisyInputs(data.x), data.y, data.num_classes, "noisy")


def test_workers_give_the_same_batches_augmentation_and_random_numbers():
    augment = Augment(crop_padding=1, flip=True)
    inline = BatchLoader(lazy_dataset(), 16, seed=2, augment=augment)
    workers = BatchLoader(lazy_dataset(), 16, seed=2, augment=augment, workers=2)
    for epoch in (0, 1, 0):  # the persistent workers serve a repeated epoch the same way
        torch.manual_seed(0)
        expected = list(inline.epoch(epoch))
        after_inline = torch.rand(1)  # reading did not move the global RNG
        torch.manual_seed(0)
        got = list(workers.epoch(epoch))
        assert torch.equal(torch.rand(1), after_inline)
        assert len(got) == len(expected) == 4
        for (x, y), (ex, ey) in zip(got, expected, strict=True):
            assert torch.equal(x, ex) and torch.equal(y, ey)
    workers.close()
    assert workers._data_loader is None


def test_workers_serve_a_new_epoch_after_an_abandoned_one():
    loader = BatchLoader(lazy_dataset(), 8, seed=0, workers=1)
    next(iter(loader.epoch(0)))  # a training loop interrupted after one batch
    expected = [y for _, y in BatchLoader(lazy_dataset(), 8, seed=0).epoch(1)]
    got = [y for _, y in loader.epoch(1)]
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    loader.close()


def test_in_memory_tensors_are_read_in_the_calling_process():
    assert BatchLoader(dataset(), 8, workers=2).workers == 0
    assert BatchLoader(lazy_dataset(), 8, workers=2).workers == 2


@pytest.mark.parametrize("workers", [-1, 1.5, True])
def test_workers_must_be_a_non_negative_integer(workers):
    with pytest.raises(ConfigError, match="--workers must be an integer >= 0"):
        BatchLoader(dataset(), 8, workers=workers)


def test_micro_batches_split_the_epoch_batches_and_are_read_one_at_a_time(counting_inputs):
    data = dataset()
    counted = counting_inputs(data.x)
    lazy = ArrayDataset(counted, data.y, data.num_classes, "counted")
    augment = Augment(crop_padding=1, flip=True)
    loader = BatchLoader(lazy, 16, seed=3, augment=augment)
    whole = list(BatchLoader(data, 16, seed=3, augment=augment).epoch(1))
    batches = loader.micro_batches(1, 3)
    for x, y in whole:
        samples, parts = next(batches)
        assert samples == len(y)
        reads = len(counted.reads)
        first = next(parts)
        assert len(counted.reads) == reads + 1  # only the first part has been read
        got = [first, *parts]
        assert [len(p[1]) for p in got] == [len(t) for t in y.tensor_split(3) if len(t)]
        # the same samples, augmented as in the whole batch (one draw per batch, sliced)
        assert torch.equal(torch.cat([p[0] for p in got]), x)
        assert torch.equal(torch.cat([p[1] for p in got]), y)
    assert next(batches, None) is None
    assert max(counted.reads) == 6  # ceil(16 / 3): never a whole batch


def test_epoch_batches_are_the_planned_indices_augmented_per_batch():
    data = dataset()
    augment = Augment(crop_padding=1, flip=True)
    loader = BatchLoader(data, 16, seed=0, augment=augment)
    indices, generator = loader.plan(2)
    for (x, y), index in zip(loader.epoch(2), indices, strict=True):
        assert torch.equal(y, data.y[index])
        assert torch.equal(x, augment(data.x[index], generator))
