import pytest
import torch

from smallfoot.errors import ConfigError
from smallfoot.layerwise import LayerwiseOptions, split_units, train_layerwise
from smallfoot.train.trainer import TrainConfig


def run(model, data, config=None, **options):
    config = config or TrainConfig(epochs=1, batch_size=16, lr=0.05, schedule="constant")
    options.setdefault("budget", 0)
    options.setdefault("decision", "flatten")  # one candidate: no probe, no measurement
    return train_layerwise(model, *data, config, LayerwiseOptions(**options), measure_memory=False)


def test_bottom_up_trains_every_unit_and_returns_the_model_itself(tiny_cnn, data):
    model = tiny_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = run(model, data)
    assert [r["units"] for r in result.units] == [[1, 1], [2, 2], [3, 3], [4, 4]]
    assert result.units[0]["layers"] == ["0", "1", "2", "3"]
    assert all(r["epochs"] == 1 and r["test_accuracy"] is not None for r in result.units)
    assert list(result.model.state_dict()) == list(model.state_dict())
    changed = [not torch.equal(before[k], v) for k, v in model.state_dict().items()]
    assert all(changed[i] for i, k in enumerate(before) if k.endswith("weight"))
    x = data[1].x[:7]
    model.eval()
    units = split_units(model)
    expected = x
    for unit in units:
        expected = unit(expected)
    torch.testing.assert_close(result.model.eval()(x), expected, rtol=0, atol=0)
    assert 1 <= result.peak_unit <= 4


def test_per_unit_learning_rate_and_weight_decay(tiny_cnn, data):
    config = TrainConfig(epochs=1, batch_size=32, lr=0.1, weight_decay=1e-3, schedule="constant")
    result = run(tiny_cnn(), data, config, lr_factor=0.5, wd_factor=2.0, unit_optimizer="run")
    for i, state in enumerate(result.states):
        group = state.trainer.optimizer.param_groups[0]
        assert isinstance(state.trainer.optimizer, torch.optim.SGD)
        assert group["lr"] == pytest.approx(0.1 * 0.5**i)
        assert group["weight_decay"] == pytest.approx(1e-3 * 2.0**i)


def test_units_default_to_the_thesis_adamw_protocol(tiny_cnn, data):
    """Table 6.3: AdamW, base rate 3e-3 and weight decay 1e-6 scaled by 0.8^i and 1.15^i, the
    rate stepped x0.1 at 50% and 75% of each unit's epochs; the run's --lr is not used."""
    config = TrainConfig(epochs=4, batch_size=32, lr=0.1, weight_decay=1e-3)
    result = run(tiny_cnn(), data, config)
    for i, state in enumerate(result.states):
        optimizer = state.trainer.optimizer
        assert isinstance(optimizer, torch.optim.AdamW)
        assert optimizer.param_groups[0]["initial_lr"] == pytest.approx(3e-3 * 0.8**i)
        assert optimizer.param_groups[0]["weight_decay"] == pytest.approx(1e-6 * 1.15**i)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(3e-3 * 0.8**i * 0.01)


def test_segments_of_two_overlap_by_one(tiny_cnn, data):
    result = run(tiny_cnn(), data, unit_size=2)
    assert [r["units"] for r in result.units] == [[1, 2], [2, 3], [3, 4]]


@pytest.mark.parametrize("order", ["random-robin", "round-robin"])
def test_robin_visits_every_unit_every_round_and_resumes_its_optimizer(tiny_mlp, data, order):
    config = TrainConfig(epochs=3, batch_size=48, optimizer="adamw", lr=1e-3, schedule="constant")
    result = run(tiny_mlp(), data, config, order=order, val_fraction=0)
    assert [r for r, _ in result.visits] == [0, 1, 2]
    orders = [order for _, order in result.visits]
    assert all(sorted(order) == [0, 1, 2] for order in orders)
    if order == "round-robin":
        assert all(order == [0, 1, 2] for order in orders)
    else:
        assert len({tuple(order) for order in orders}) > 1
    steps_per_epoch = -(-len(data[0]) // 48)
    for state in result.states:
        assert state.trainer.epoch == 3
        steps = {int(s["step"]) for s in state.trainer.optimizer.state.values()}
        # AdamW counts every step of every visit: its state survived between rounds
        assert steps == {3 * steps_per_epoch}


def test_early_stopping_per_unit_on_the_validation_split(tiny_cnn, data):
    """With a zero learning rate (and no batch norm) validation accuracy cannot improve."""
    config = TrainConfig(epochs=5, batch_size=32, lr=0.0, weight_decay=0.0, schedule="constant")
    result = run(
        tiny_cnn(batch_norm=False),
        data,
        config,
        patience=2,
        val_fraction=0.25,
        unit_optimizer="run",
    )
    assert all(r["epochs"] == 3 and r["stopped_early"] for r in result.units)
    assert all(r["val_accuracy"] is not None for r in result.units)
    assert {len(h) for h in [[m for m in result.history if m["unit"] == i] for i in (1, 2)]} == {3}


def test_truncated_model_ends_at_the_peak_unit(tiny_cnn, data):
    config = TrainConfig(epochs=2, batch_size=16, lr=0.05, schedule="constant")
    result = run(tiny_cnn(), data, config, truncate=True, val_fraction=0.25)
    peak = result.states[result.peak_unit - 1]
    scores = [r["val_accuracy"] for r in result.units]
    assert scores[result.peak_unit - 1] == max(scores)
    if result.peak_unit < len(result.units):
        assert "decision" in dict(result.model.named_children())
    x = data[1].x[:9]
    torch.testing.assert_close(result.model.eval()(x), peak.subnet.eval()(x))


def test_bad_options_raise_config_errors():
    with pytest.raises(ConfigError, match="--patience"):
        LayerwiseOptions(patience=2, val_fraction=0).validate()
    with pytest.raises(ConfigError, match="--unit-size"):
        LayerwiseOptions(unit_size=0).validate()


def test_unit_size_larger_than_the_model_is_refused(tiny_cnn, data):
    with pytest.raises(ConfigError, match="between 1 and the model's 4"):
        run(tiny_cnn(), data, unit_size=6)
