"""The trajectory sampler: when it samples, what it stores, and exact resume of its store."""

import pytest
import torch
from torch import nn

from smallfoot.data import ArrayDataset
from smallfoot.errors import ConfigError
from smallfoot.subspace import TrajectorySampler, TrajectoryStore, flatten
from smallfoot.train import TrainConfig, Trainer


class Recorder(TrajectorySampler):
    """A sampler that also keeps the exact parameters after every step, to compare with."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.after_step = []

    def on_train_start(self, trainer):
        self.before_training = flatten(trainer.model.parameters())
        super().on_train_start(trainer)

    def on_batch_end(self, trainer, batch_index, loss, output):
        self.after_step.append(flatten(trainer.model.parameters()))
        super().on_batch_end(trainer, batch_index, loss, output)


def tiny_run(sampler, epochs=2):
    torch.manual_seed(0)
    x, y = torch.randn(40, 3), torch.randint(0, 2, (40,))
    data = ArrayDataset(x, y, 2, "toy")
    model = nn.Linear(3, 2)
    config = TrainConfig(epochs=epochs, batch_size=8, lr=0.1, schedule="constant")
    Trainer(model, data, None, config, callbacks=[sampler], progress=False).fit()
    return model


@pytest.mark.parametrize(
    "per_epoch, expected_steps", [(1, [4, 9]), (2, [2, 4, 7, 9]), (5, list(range(10)))]
)
def test_per_epoch_samples_evenly_and_ends_each_epoch(per_epoch, expected_steps):
    store = TrajectoryStore(8, 20)
    sampler = Recorder(store, per_epoch=per_epoch)
    tiny_run(sampler)  # 5 steps per epoch, 2 epochs
    assert len(store) == len(expected_steps)
    for i, step in enumerate(expected_steps):
        assert torch.equal(store.sample(i), sampler.after_step[step])


def test_initial_sample_stores_the_weights_before_the_first_step_once():
    store = TrajectoryStore(8, 10)
    sampler = Recorder(store, per_epoch=1, initial=True)
    tiny_run(sampler)
    assert len(store) == 3
    assert torch.equal(store.sample(0), sampler.before_training)
    assert torch.equal(store.sample(1), sampler.after_step[4])
    assert torch.equal(store.sample(2), sampler.after_step[9])
    sampler.on_train_start(type("Resumed", (), {"model": nn.Linear(3, 2), "global_step": 10}))
    assert len(store) == 3  # a resumed run does not sample its restored weights again


def test_every_steps_and_a_full_store_stops_sampling(tmp_path):
    store = TrajectoryStore(8, 3, tmp_path / "t.f32")
    sampler = Recorder(store, every_steps=3)
    tiny_run(sampler)  # steps 3, 6, 9 (global step counts after the step)
    assert len(store) == 3
    assert torch.equal(store.sample(2), sampler.after_step[8])
    store = TrajectoryStore(8, 2)
    tiny_run(TrajectorySampler(store, every_steps=1))
    assert len(store) == 2


def test_sampler_state_restores_ram_samples():
    store = TrajectoryStore(8, 10)
    tiny_run(TrajectorySampler(store, per_epoch=2))
    restored = TrajectoryStore(8, 10)
    TrajectorySampler(restored, per_epoch=2).load_state_dict(
        TrajectorySampler(store, per_epoch=2).state_dict()
    )
    assert len(restored) == 4 and torch.equal(restored.sample(3), store.sample(3))


def test_sampler_rejects_bad_settings():
    with pytest.raises(ConfigError, match="exactly one"):
        TrajectorySampler(TrajectoryStore(8, 2))
    with pytest.raises(ConfigError, match="positive"):
        TrajectorySampler(TrajectoryStore(8, 2), every_steps=0)
    with pytest.raises(ConfigError, match="holds 9"):
        tiny_run(TrajectorySampler(TrajectoryStore(9, 2), every_steps=1))
