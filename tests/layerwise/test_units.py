import pytest
import torch
from torch import nn

from smallfoot.errors import ConfigError
from smallfoot.layerwise import assemble, chain, decision_block, segments, split_units
from smallfoot.models import build_model


def test_cnn4_units_keep_pooling_with_the_preceding_layer(tiny_cnn):
    units = split_units(tiny_cnn())
    names = [list(dict(unit.named_children())) for unit in units]
    assert names == [
        ["0", "1", "2", "3"],
        ["4", "5", "6", "7"],
        ["8", "9", "10"],
        ["11", "12", "13", "14", "15"],
        ["16"],
    ]
    assert isinstance(units[-1][0], nn.Linear)


def test_residual_blocks_are_one_unit_each():
    model = build_model("resnet20", (3, 32, 32), 10)
    units = split_units(model)
    assert [list(dict(u.named_children())) for u in units][:2] == [["stem"], ["stage1_block0"]]
    assert list(dict(units[-1].named_children())) == ["head"]
    assert len(units) == 1 + 9 + 1


def test_chained_units_equal_the_model_and_keep_its_state_dict(tiny_cnn):
    model = tiny_cnn().double().eval()
    units = split_units(model)
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    chained = x
    for unit in units:
        chained = unit(chained)
    torch.testing.assert_close(chain(units)(x), model(x), rtol=0, atol=0)
    torch.testing.assert_close(chained, model(x), rtol=0, atol=0)
    assert list(chain(units).state_dict()) == list(model.state_dict())


def test_assembled_model_equals_units_then_decision_block(tiny_cnn):
    model = tiny_cnn().double().eval()
    units = split_units(model)
    decision = decision_block((4, 2, 2), 3, pool=2).double().eval()
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    expected = decision(units[1](units[0](x)))
    torch.testing.assert_close(assemble(units[:2], decision)(x), expected, rtol=0, atol=0)


def test_leading_parameter_free_layers_join_the_first_unit():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    units = split_units(model)
    assert [len(u) for u in units] == [3, 1]


def test_models_that_cannot_be_split_raise_config_errors():
    with pytest.raises(ConfigError, match="nn.Sequential"):
        split_units(nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="at least one trainable unit"):
        split_units(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


@pytest.mark.parametrize(
    ("n", "size", "overlap", "expected"),
    [
        (4, 1, None, [(0, 1), (1, 2), (2, 3), (3, 4)]),
        (4, 2, None, [(0, 2), (1, 3), (2, 4)]),
        (4, 2, 0, [(0, 2), (2, 4)]),
        (5, 2, 0, [(0, 2), (2, 4), (3, 5)]),
        (5, 3, 1, [(0, 3), (2, 5)]),
        (3, 3, None, [(0, 3)]),
    ],
)
def test_segments_slide_and_cover_every_unit(n, size, overlap, expected):
    assert segments(n, size, overlap) == expected


def test_bad_segment_sizes_say_what_to_change():
    with pytest.raises(ConfigError, match="between 1 and the model's 4"):
        segments(4, 5)
    with pytest.raises(ConfigError, match="overlap 2"):
        segments(4, 2, 2)
