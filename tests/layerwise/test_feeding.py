import pytest
import torch

from smallfoot.data import BatchLoader
from smallfoot.errors import ConfigError
from smallfoot.layerwise import (
    FeatureStore,
    LayerwiseOptions,
    Subnet,
    chain,
    decision_block,
    split_units,
    train_layerwise,
)
from smallfoot.train.trainer import TrainConfig


def test_feed_stays_frozen_in_eval_mode_without_gradients(tiny_cnn, data):
    units = split_units(tiny_cnn())
    feed = chain(units[:1])
    bn = feed[1]
    before = (bn.running_mean.clone(), bn.num_batches_tracked.clone())
    subnet = Subnet(feed, units[1], decision_block((4, 2, 2), 3)).train()
    assert not feed.training and subnet.segment.training
    x, y = data[0].x[:16], data[0].y[:16]
    torch.nn.functional.cross_entropy(subnet(x), y).backward()
    assert all(p.grad is None for p in feed.parameters())
    assert all(p.grad is not None for p in subnet.trainable_parameters())
    torch.testing.assert_close(bn.running_mean, before[0], rtol=0, atol=0)
    assert int(bn.num_batches_tracked) == int(before[1])


@pytest.mark.parametrize("storage", ["ram", "disk"])
def test_feature_checkpoint_replay_equals_the_feednet_batch_for_batch(
    tiny_cnn, data, storage, tmp_path
):
    feed = chain(split_units(tiny_cnn())[:2]).eval()
    store = FeatureStore(storage, tmp_path / "features")
    features = store.record(feed, data[0], batch_size=10)
    if storage == "disk":
        assert len(list((tmp_path / "features").iterdir())) == 1
    for epoch in (0, 1):
        raw = BatchLoader(data[0], 16, seed=5).epoch(epoch)
        replay = BatchLoader(features, 16, seed=5).epoch(epoch)
        for (x, y), (z, y_replay) in zip(raw, replay, strict=True):
            with torch.no_grad():
                torch.testing.assert_close(z, feed(x))
            assert torch.equal(y, y_replay)
    store.record(feed, data[0])
    store.close()
    if storage == "disk":
        assert list((tmp_path / "features").iterdir()) == []


def test_checkpoint_feed_trains_like_the_feednet(tiny_cnn, data):
    """Same batches, same inputs to every unit: both feeds give the same model."""
    config = TrainConfig(epochs=1, batch_size=16, lr=0.05, schedule="constant")
    models = []
    for feed in ("feednet", "checkpoint"):
        options = LayerwiseOptions(budget=0, feed=feed, val_fraction=0, decision="flatten")
        models.append(
            train_layerwise(tiny_cnn(), *data, config, options, measure_memory=False).model
        )
    for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_checkpoint_feed_refuses_augmentation_and_robin_schedules(tiny_cnn, data):
    with pytest.raises(ConfigError, match="augmentation"):
        train_layerwise(
            tiny_cnn(),
            *data,
            TrainConfig(augment=True),
            LayerwiseOptions(feed="checkpoint", budget=0),
            measure_memory=False,
        )
    with pytest.raises(ConfigError, match="bottom-up"):
        LayerwiseOptions(feed="checkpoint", order="random-robin").validate()
