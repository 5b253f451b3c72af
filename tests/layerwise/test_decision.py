import functools
import math

import pytest
import torch
from torch import nn

from smallfoot.errors import BudgetError, ConfigError, ShapeError
from smallfoot.layerwise import (
    LayerwiseOptions,
    Subnet,
    block_name,
    candidate_configs,
    chain,
    decision_block,
    fit_decision_block,
    model_head,
    probe_accuracy,
    split_units,
    train_layerwise,
)
from smallfoot.losses import SoftmaxCrossEntropy
from smallfoot.memory import measure
from smallfoot.models import build_model
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
    options = LayerwiseOptions(budget=1.0, max_convs=0, val_fraction=0, decision="pool")
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


def test_model_head_is_the_trailing_fully_connected_units():
    vgg = build_model("vgg11_bn", (3, 64, 64), 5, width=0.0625)
    head, side = model_head(split_units(vgg), (3, 64, 64))
    assert side == 7  # the ImageNet head pools to 7x7 before its first linear layer
    assert [type(m) for m in head if not isinstance(m, (nn.ReLU, nn.Dropout))] == [nn.Linear] * 3
    cnn = build_model("cnn4", (1, 28, 28), 10)
    head, side = model_head(split_units(cnn), (1, 28, 28))
    assert [type(m) for m in head] == [nn.Linear] and side == 3
    assert model_head(split_units(build_model("mlp", (1, 8, 8), 3)), (1, 8, 8)) is None


def test_head_decision_block_is_a_fresh_copy_sized_to_the_unit():
    vgg = build_model("vgg11_bn", (3, 64, 64), 5, width=0.0625)
    head, side = model_head(split_units(vgg), (3, 64, 64))
    block = decision_block((8, 16, 16), 5, pool=side, head=head)
    linears = [m for m in block if isinstance(m, nn.Linear)]
    assert linears[0].in_features == 8 * 7 * 7
    assert [m.out_features for m in linears] == [
        m.out_features for m in head if isinstance(m, nn.Linear)
    ]
    assert block(torch.randn(2, 8, 16, 16)).shape == (2, 5)
    shared = {id(p) for p in head.parameters()}
    assert not any(id(p) in shared for p in block.parameters())
    assert block_name({"pool": side, "head": True}) == "pool7+head"
    assert block_name({"pool": 0}) == "flatten"
    assert block_name({"convs": 2, "width": 16, "pool": 2}) == "2conv16+pool2"


def test_probe_leaves_the_model_as_it_was_and_learns(tiny_cnn, data):
    model = tiny_cnn()
    units = split_units(model)
    subnet = Subnet(chain(units[:1]), chain(units[1:2]), decision_block((4, 2, 2), 3, pool=0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    accuracy = probe_accuracy(
        subnet,
        *data,
        SoftmaxCrossEntropy(),
        lambda params: torch.optim.AdamW(params, lr=3e-2),
        steps=30,
        batch_size=16,
    )
    assert accuracy > 0.6  # three classes: chance is 1/3
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def test_probe_picks_the_best_accuracy_per_byte(tiny_cnn):
    _, feed, segment, batch, reference, config = unit_setup(tiny_cnn, 1)
    candidates = [
        {"convs": 0, "width": None, "pool": 0, "head": False},
        {"convs": 0, "width": None, "pool": 1, "head": False},
        {"convs": 1, "width": 8, "pool": 1, "head": False},
    ]
    scores = {0: 0.9, 1: 0.5, 8: 0.95}  # flatten, global pool, one down-conv

    def probe(subnet):
        convs = [m for m in subnet.decision if isinstance(m, nn.Conv2d)]
        if convs:
            return scores[convs[0].out_channels]
        return scores[0 if isinstance(subnet.decision[0], nn.Flatten) else 1]

    fit = functools.partial(
        fit_decision_block,
        lambda decision: Subnet(feed, segment, decision),
        (4, 2, 2),
        3,
        batch,
        reference,
        budget=math.inf,
        candidates=candidates,
    )
    _, record = fit(probe=probe)
    ratios = [t["probe_accuracy"] / t["peak"] for t in record["tried"]]
    best = record["tried"][ratios.index(max(ratios))]
    assert {k: record[k] for k in ("convs", "pool")} == {k: best[k] for k in ("convs", "pool")}
    assert record["probe_accuracy"] == best["probe_accuracy"]
    # without a probe the largest measured block within the budget wins (the thesis fills it)
    _, largest = fit()
    assert largest["peak"] == max(t["peak"] for t in largest["tried"])


def test_auto_decision_probes_each_unit_and_records_the_choice(tiny_cnn, data):
    config = TrainConfig(epochs=1, batch_size=16)
    options = LayerwiseOptions(decision="auto", probe_steps=5, val_fraction=0.25)
    result = train_layerwise(tiny_cnn(), *data, config, options)
    for unit in result.units[:-1]:
        tried = unit["decision"]["tried"]
        assert {block_name(t) for t in tried} == {"flatten", "pool2", "pool1+head"}
        ratios = [t["probe_accuracy"] / t["peak"] for t in tried]
        assert (
            unit["decision"]["probe_accuracy"] == tried[ratios.index(max(ratios))]["probe_accuracy"]
        )
    assert result.units[-1]["decision"]["head"] == "model"
