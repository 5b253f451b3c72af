import pytest
import torch
from torch import nn

from smallfoot.errors import BudgetError, ConfigError, ShapeError
from smallfoot.layerwise import (
    LayerwiseOptions,
    Subnet,
    candidate_configs,
    chain,
    decision_block,
    fit_decision_block,
    split_units,
    train_layerwise,
)
from smallfoot.memory import measure
from smallfoot.train.trainer import TrainConfig, make_optimizer


def test_decision_block_shapes():
    block = decision_block((8, 16, 16), 5, convs=2, width=12, pool=2)
    convs = [m for m in block if isinstance(m, nn.Conv2d)]
    assert [c.stride for c in convs] == [(2, 2), (2, 2)]
    assert block(torch.randn(3, 8, 16, 16)).shape == (3, 5)
    assert block[-1].in_features == 12 * 2 * 2
    assert decision_block((7,), 4)(torch.randn(2, 7)).shape == (2, 4)
    assert decision_block((8, 1, 1), 4, convs=1)(torch.randn(2, 8, 1, 1)).shape == (2, 4)
    with pytest.raises(ShapeError, match="down-convolutions"):
        decision_block((7,), 4, convs=1)


def test_pool_zero_is_a_linear_layer_on_the_full_map():
    """The thesis' decision block for its 4-layer CNN: flatten + one affine layer."""
    block = decision_block((8, 6, 6), 5, pool=0)
    assert [type(m) for m in block] == [nn.Flatten, nn.Linear]
    assert block[-1].in_features == 8 * 6 * 6
    assert block(torch.randn(3, 8, 6, 6)).shape == (3, 5)
    assert decision_block((8, 6, 6), 5, convs=1, pool=0)[-1].in_features == 8 * 3 * 3
    with pytest.raises(ShapeError, match="at least 0"):
        decision_block((8, 6, 6), 5, pool=-1)
    with pytest.raises(ConfigError, match="--decision-pool"):
        LayerwiseOptions(decision_pool=-1).validate()


def test_candidates_grow_from_the_cheapest():
    assert candidate_configs((16, 8, 8), max_convs=2) == [
        (0, None),
        (1, 8),
        (1, 16),
        (1, 32),
        (2, 8),
        (2, 16),
        (2, 32),
    ]
    assert candidate_configs((10,)) == [(0, None)]


def unit_setup(tiny_cnn, index):
    model = tiny_cnn()
    units = split_units(model)
    feed, segment = chain(units[:index]), chain(units[index : index + 1])
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 3, (32,))
    config = TrainConfig(lr=0.05)
    reference = measure(model, (x, y), optimizer=make_optimizer(model.parameters(), config))
    return model, feed, segment, (x, y), reference.to_dict()["peak"], config


def test_measured_unit_memory_respects_the_budget(tiny_cnn):
    _, feed, segment, batch, reference, config = unit_setup(tiny_cnn, 1)

    def subnet_for(decision):
        return Subnet(feed, segment, decision)

    def optimizer_for(parameters):
        return make_optimizer(parameters, config)

    budget = 0.6
    block, record = fit_decision_block(
        subnet_for, (4, 2, 2), 3, batch, reference, budget, None, optimizer_for, max_convs=2
    )
    assert record["peak"] <= budget * reference
    assert record["fraction"] == pytest.approx(record["peak"] / reference)
    assert len(record["tried"]) >= 1
    subnet = subnet_for(block)
    again = measure(subnet, batch, optimizer=optimizer_for(subnet.trainable_parameters()))
    assert again.to_dict()["peak"] <= budget * reference
    # the winner is the largest measured configuration that fits
    fitting = [t["peak"] for t in record["tried"] if t["peak"] <= budget * reference]
    assert record["peak"] == max(fitting)


def test_budget_that_no_decision_block_meets_says_so(tiny_cnn):
    _, feed, segment, batch, reference, config = unit_setup(tiny_cnn, 0)
    with pytest.raises(BudgetError, match="smallest measured needs .* pass --budget "):
        fit_decision_block(
            lambda decision: Subnet(feed, segment, decision),
            (4, 4, 4),
            3,
            batch,
            reference,
            budget=0.01,
            max_convs=1,
        )
    block, record = fit_decision_block(
        lambda decision: Subnet(feed, segment, decision),
        (4, 4, 4),
        3,
        batch,
        reference,
        budget=0.01,
        max_convs=1,
        strict=False,
    )
    assert not record["within_budget"]
    assert record["peak"] == min(t["peak"] for t in record["tried"])


def test_layerwise_run_reports_the_largest_unit_against_full_backprop(tiny_cnn, data):
    config = TrainConfig(epochs=1, batch_size=32, lr=0.05, schedule="constant")
    options = LayerwiseOptions(budget=1.0, max_convs=0, val_fraction=0)
    result = train_layerwise(tiny_cnn(), *data, config, options)
    fractions = [u["fraction"] for u in result.units]
    assert all(0 < f <= 1.0 for f in fractions[:-1])
    assert result.memory["fraction"] == pytest.approx(max(fractions))
    assert result.memory["reference_peak"] == result.reference["peak"]
    assert result.memory["stage"].startswith("unit ")
    reused = train_layerwise(
        tiny_cnn(), *data, config, options, measure_memory=False, decisions=result.units
    )

    def shapes(units):
        return [(u["decision"]["convs"], u["decision"]["width"]) for u in units]

    assert shapes(reused.units) == shapes(result.units)
