"""A user's ``IterableDataset`` streamed (``in_memory=false``): trained through the Trainer's
epochs, resumable, its random numbers kept apart from training's, refused where a method or
option needs random access."""

import pytest
import torch

from smallfoot.config import RunConfig
from smallfoot.data import StreamDataset, StreamLoader, load_dataset
from smallfoot.errors import ConfigError, DatasetError, TrainingInterrupted
from smallfoot.runner import run_training
from smallfoot.train import Trainer

STREAMS = """
import torch

class Blobs(torch.utils.data.IterableDataset):
    # a seeded stream: set_epoch reshuffles it, each DataLoader worker yields its own share,
    # and it may draw noise from torch's RNG (as random transforms do)
    iterations = 0  # how many times any stream was iterated

    def __init__(self, x, y, noise=0.0, draw=False, shard=True, eager=False):
        self.x, self.y, self.noise, self.draw, self.shard = x, y, noise, draw, shard
        self.eager, self.epoch = eager, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        Blobs.iterations += 1
        if self.eager:  # an ordinary __iter__ that draws at once, as a shuffle buffer may
            torch.randperm(len(self.x))
            return iter(list(self._items()))
        return self._items()

    def _items(self):
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(self.epoch))
        info = torch.utils.data.get_worker_info()
        if self.shard and info is not None:
            order = order[info.id :: info.num_workers]
        for i in order.tolist():
            x = self.x[i]
            if self.noise or self.draw:
                x = x + self.noise * torch.randn(x.shape)
            yield x, int(self.y[i])

class SizedBlobs(Blobs):
    def __len__(self):
        return len(self.x)

def _data(n=64):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 3
    x = torch.randn(n, 1, 6, 6, generator=g) + y.view(-1, 1, 1, 1)
    return x, y

def blobs(noise=0.0, draw=False, shard=True, sized=False, eager=False, known=False):
    x, y = _data()
    kind = SizedBlobs if sized else Blobs
    train = kind(x[:48], y[:48], noise, draw, shard, eager)
    test = kind(x[48:], y[48:], 0.0, False, shard)
    if known:  # the class count as an attribute, as torchvision-style datasets have
        train.num_classes = test.num_classes = 3
    return train, test
"""


@pytest.fixture
def streams(tmp_path, monkeypatch):
    (tmp_path / "user_streams.py").write_text(STREAMS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "user_streams:blobs"


def config(tmp_path, dataset, run_name, data_options=(), **overrides):
    values = dict(
        dataset=dataset,
        model="mlp",
        epochs=3,
        batch_size=16,
        lr=0.05,
        out_dir=str(tmp_path),
        run_name=run_name,
        progress=False,
        measure_memory=False,
        model_options={"widths": [16], "dropout": 0.2},
        data_options={"in_memory": False, **dict(data_options)},
    )
    values.update(overrides)
    return RunConfig(**values)


def final_weights(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"]


def same_weights(a, b):
    wa, wb = final_weights(a), final_weights(b)
    return all(torch.equal(wa[k], wb[k]) for k in wa)


def iterations():
    import user_streams

    return user_streams.Blobs.iterations


@pytest.mark.parametrize(
    "options, passes",
    [({}, 2), ({"sized": True}, 2), ({"known": True}, 2), ({"sized": True, "known": True}, 1)],
)
def test_a_stream_is_described_by_its_first_item_and_at_most_one_counting_pass(
    streams, options, passes
):
    before = iterations()
    train = load_dataset(streams, "train", in_memory=False, **options)
    assert iterations() - before == passes  # the first item, then a pass for what is missing
    assert isinstance(train, StreamDataset)
    assert (len(train), train.input_shape, train.num_classes) == (48, (1, 6, 6), 3)
    in_memory = load_dataset(streams, "train")
    assert in_memory.x.shape == (48, 1, 6, 6) and in_memory.num_classes == 3


@pytest.mark.parametrize("sized, known", [(False, False), (True, False), (False, True)])
def test_a_limit_takes_the_first_items_of_every_epoch(streams, sized, known):
    whole = load_dataset(streams, "train", in_memory=False, sized=sized, known=known)
    first = load_dataset(streams, "train", in_memory=False, sized=sized, known=known, limit=20)
    assert len(first) == 20 and first.limited and not whole.limited
    for epoch in (0, 1):
        expected = torch.cat([y for _, y in StreamLoader(whole, 8).epoch(epoch)])[:20]
        batches = list(StreamLoader(first, 8).epoch(epoch))
        assert [len(y) for _, y in batches] == [8, 8, 4]
        assert torch.equal(torch.cat([y for _, y in batches]), expected)
    assert len(load_dataset(streams, "train", in_memory=False, limit=100)) == 48


def test_the_loader_batches_in_the_streams_order_and_sets_its_epoch(streams):
    train = load_dataset(streams, "train", in_memory=False)
    loader = StreamLoader(train, 20)
    assert len(loader) == 3
    first = [y for _, y in loader.epoch(0)]
    assert [len(y) for y in first] == [20, 20, 8]
    again = [y for _, y in loader.epoch(0)]
    later = [y for _, y in loader.epoch(1)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, later, strict=True))


def test_an_interrupted_stream_run_resumes_to_the_same_weights(
    tmp_path, monkeypatch, streams, interrupt_at
):
    options = {"noise": 0.1}
    run_training(config(tmp_path, streams, "whole", options))
    original = interrupt_at(2)
    with pytest.raises(TrainingInterrupted):
        run_training(config(tmp_path, streams, "resumed", options))
    monkeypatch.setattr(Trainer, "run_epoch", original)
    summary = run_training(RunConfig(), resume_dir=tmp_path / "resumed")
    assert summary["epochs"] == 3 and summary["train_samples"] == 48
    assert same_weights(tmp_path / "whole", tmp_path / "resumed")


def test_the_streams_random_numbers_do_not_shift_dropout(tmp_path, streams):
    # the other streams draw from torch's RNG for every item (and add nothing), one of them
    # in an ordinary __iter__ too, when the loader's iterator is made
    run_training(config(tmp_path, streams, "quiet"))
    run_training(config(tmp_path, streams, "drawing", {"draw": True}))
    run_training(config(tmp_path, streams, "eager", {"draw": True, "eager": True}))
    assert same_weights(tmp_path / "quiet", tmp_path / "drawing")
    assert same_weights(tmp_path / "quiet", tmp_path / "eager")


def test_workers_batches_are_cut_to_the_batch_size(streams):
    train = load_dataset(streams, "train", in_memory=False)
    inline = list(StreamLoader(train, 16).epoch(0))
    workers = list(StreamLoader(train, 16, workers=2).epoch(0))
    assert [len(y) for _, y in workers] == [16, 16, 16] == [len(y) for _, y in inline]
    assert sorted(torch.cat([y for _, y in workers]).tolist()) == sorted(
        torch.cat([y for _, y in inline]).tolist()
    )


def test_workers_stream_their_shares_and_resume_the_same(
    tmp_path, monkeypatch, streams, interrupt_at
):
    run_training(config(tmp_path, streams, "whole", {"noise": 0.1}, workers=2))
    original = interrupt_at(1)
    with pytest.raises(TrainingInterrupted):
        run_training(config(tmp_path, streams, "resumed", {"noise": 0.1}, workers=2))
    monkeypatch.setattr(Trainer, "run_epoch", original)
    run_training(RunConfig(), resume_dir=tmp_path / "resumed")
    assert same_weights(tmp_path / "whole", tmp_path / "resumed")


def test_workers_on_a_stream_that_does_not_shard_fail_in_one_line(tmp_path, streams):
    with pytest.raises(DatasetError, match="yielded 96 items, the stream's length is 48; with "
                       "--workers 2 each worker must yield its own share"):  # fmt: skip
        run_training(config(tmp_path, streams, "dup", {"shard": False}, workers=2))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"method": "layerwise"}, "--method layerwise reads its data its own way"),
        ({"method": "subspace"}, "--method subspace reads its data its own way"),
        ({"label_noise": 0.1}, "--label-noise needs random access"),
        ({"filter": "k=5"}, "--filter k=5 needs random access"),
    ],
)
def test_what_needs_random_access_refuses_a_stream(tmp_path, streams, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run_training(config(tmp_path, streams, "refused", **overrides))
    assert not (tmp_path / "refused").exists()


def test_methods_that_train_through_the_trainer_take_a_stream(tmp_path, streams):
    for method in ("checkpoint", "facto", "accumulate"):
        summary = run_training(
            config(tmp_path, streams, method, epochs=2, method=method, measure_memory=True)
        )
        assert summary["train_samples"] == 48 and summary["memory"]["peak"] > 0


def test_accumulate_on_a_stream_holds_the_whole_batch(tmp_path, streams):
    def inputs(method, **options):
        summary = run_training(
            config(tmp_path, streams, method, epochs=1, method=method, method_options=options,
                   measure_memory=True)
        )  # fmt: skip
        return summary["memory"]["inputs"]

    # a stream's batch is read whole before it is split into micro-batches, and the planner
    # and `smallfoot memory --dataset` know the dataset is a stream
    assert inputs("accumulate", micro_batches=4) == inputs("baseline")
    from smallfoot.runner.step import dataset_input

    assert dataset_input(streams, options={"in_memory": False}).streamed
    assert not dataset_input("digits").streamed
